"""Command start-up: what a user waits for before any work starts.

Baseline: what every command paid before the package was split into halves: ``import torch``
plus the CLI module (the ``train`` options were built from a dataclass in the torch module).
Ours: ``hpa-pipe --help``, ``hpa-pipe evaluate`` on a small submission, and ``build-zarr`` /
``ingest`` on one 256² sample with one worker, whole command (an upper bound on the start-up
to the first task). Targets: --help and evaluate under 1 s, build-zarr/ingest
start-up under 2 s, on the 2-core machine. Median of 3 runs each.
"""
from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .common import BENCH_DATA, report, synth_data

HPA = [sys.executable, "-m", "hpa_pipeline"]


def wall(args: list[str], repeats: int = 3) -> float:
    """Median wall time of a command, in seconds; it must succeed."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(args, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return round(statistics.median(times), 2)


def run() -> dict:
    data = synth_data("startup", n_train=1, n_test=1, image_sizes=(256,))
    tiff = BENCH_DATA / "startup_tiff"
    if not tiff.exists():
        from hpa_pipeline.prep.extract import extract_archives

        extract_archives([data / "train_full_size.7z"], tiff)
    truth = data / "train.csv"
    with tempfile.TemporaryDirectory(dir=BENCH_DATA) as tmp:
        submission = Path(tmp) / "sub.csv"
        ids = [line.split(",")[0] for line in truth.read_text().splitlines()[1:]]
        submission.write_text("Id,Predicted\n" + "".join(f"{i},0\n" for i in ids))
        baseline = wall([sys.executable, "-c", "import torch, hpa_pipeline.cli"])
        figures = {
            "baseline: import torch + the CLI module (what every command paid before), s": baseline,
            "hpa-pipe --help, s": wall(HPA + ["--help"]),
            "hpa-pipe evaluate (2-row submission), s": wall(HPA + ["evaluate", "--submission", str(submission),
                                                                   "--labels", str(truth)]),
        }
        store = Path(tmp) / "s.zarr"
        build = HPA + ["build-zarr", "--src", str(tiff), "--csv", str(truth), "--size", "256", "--levels", "1",
                       "--chunk", "256", "--workers", "1"]
        figures["build-zarr, 1 sample 256², 1 worker, whole command, s"] = wall(
            [sys.executable, "-c", "import shutil,subprocess,sys; shutil.rmtree(sys.argv[1], ignore_errors=True); "
             "sys.exit(subprocess.run(sys.argv[2:]).returncode)", str(store), *build, "--out", str(store)])
        ingest = HPA + ["ingest", str(data / "train_full_size.7z"), "--csv", str(truth), "--size", "256",
                        "--levels", "1", "--chunk", "256", "--workers", "1"]
        figures["ingest, 1 sample 256², 1 worker, whole command, s"] = wall(
            [sys.executable, "-c", "import shutil,subprocess,sys; shutil.rmtree(sys.argv[1], ignore_errors=True); "
             "sys.exit(subprocess.run(sys.argv[2:]).returncode)", str(store), *ingest, "--out", str(store)])
    figures["ratio: baseline / --help"] = round(baseline / max(figures["hpa-pipe --help, s"], 1e-3), 1)
    return report("startup", figures)


if __name__ == "__main__":
    run()
