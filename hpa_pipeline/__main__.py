"""``python -m hpa_pipeline`` is ``hpa-pipe`` (and what ``torchrun -m hpa_pipeline`` starts)."""
from .cli import main

if __name__ == "__main__":
    main()
