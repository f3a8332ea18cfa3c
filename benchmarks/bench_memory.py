"""Peak memory of all processes of ``hpa-pipe ingest`` with default settings, 3072² 16-bit sources.

Runs the real command line on archives of N_SMALL and N_LARGE samples and samples the summed
RSS of the process and its children every 50 ms. Bounded memory means a plateau: once the
pipeline is full (a few samples in), the second half of a long run peaks no higher than the
first half, so 10,000 samples need what 40 do (target <= 4 GB).
"""
from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from .common import BENCH_DATA, report, synth_data

N_SMALL, N_LARGE = 8, 60


def rss_trace(args: list[str]) -> list[float]:
    """Summed RSS (bytes) of a command and all its children, every 50 ms until it exits."""
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    parent, trace = psutil.Process(proc.pid), []
    while proc.poll() is None:
        try:
            procs = [parent] + parent.children(recursive=True)
            trace.append(sum(p.memory_info().rss for p in procs if p.is_running()))
        except psutil.Error:
            pass
        time.sleep(0.05)
    if proc.returncode != 0:
        raise RuntimeError(f"{args} exited with {proc.returncode}")
    return trace


def run() -> dict:
    figures = {}
    for n in (N_SMALL, N_LARGE):
        data = synth_data(f"mem16_{n}", n_train=n, n_test=1, image_sizes=(3072,), bit_depth=16)
        with tempfile.TemporaryDirectory(dir=BENCH_DATA) as tmp:
            args = [sys.executable, "-m", "hpa_pipeline", "ingest", str(data / "train_full_size.7z"),
                    "--csv", str(data / "train.csv"), "--out", str(Path(tmp) / "train.zarr")]
            trace = rss_trace(args)
        gib = [t / 2**30 for t in trace]
        k = len(gib)
        figures[f"{n} samples: peak RSS, GiB"] = round(max(gib), 2)
        figures[f"{n} samples: peak per tenth of the run, GiB"] = [
            round(max(gib[i * k // 10:(i + 1) * k // 10] or [0]), 2) for i in range(10)]
        figures[f"{n} samples: wall s"] = round(len(gib) * 0.05, 1)
    return report("memory", figures)


if __name__ == "__main__":
    run()
