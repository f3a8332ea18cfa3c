"""``python -m benchmarks [NAME ...]``: run every ``bench_*.py`` (or the named ones) in turn.

``gpu`` runs only when named (``make bench-gpu``): it needs a CUDA machine."""
from __future__ import annotations

import importlib
import sys
from pathlib import Path


def main(names: list[str]) -> None:
    available = sorted(p.stem[len("bench_"):] for p in Path(__file__).parent.glob("bench_*.py"))
    chosen = names or [name for name in available if name != "gpu"]  # gpu: make bench-gpu, on a GPU
    unknown = sorted(set(chosen) - set(available))
    if unknown:
        sys.exit(f"unknown benchmark(s) {unknown}; available: {available}")
    for name in chosen:
        importlib.import_module(f"benchmarks.bench_{name}").run()


if __name__ == "__main__":
    main(sys.argv[1:])
