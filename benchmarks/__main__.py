"""``python -m benchmarks [NAME ...]``: run every ``bench_*.py`` (or the named ones) in turn."""
from __future__ import annotations

import importlib
import sys
from pathlib import Path


def main(names: list[str]) -> None:
    available = sorted(p.stem[len("bench_"):] for p in Path(__file__).parent.glob("bench_*.py"))
    chosen = names or available
    unknown = sorted(set(chosen) - set(available))
    if unknown:
        sys.exit(f"unknown benchmark(s) {unknown}; available: {available}")
    for name in chosen:
        importlib.import_module(f"benchmarks.bench_{name}").run()


if __name__ == "__main__":
    main(sys.argv[1:])
