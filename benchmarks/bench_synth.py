"""Synthetic full-size data: our generator (parallel rendering, stored 7z) against the plain way.

Baseline: one process, LZMA2 archive (what one gets by rendering and calling py7zr with its
defaults-like coder). Ours: ``make_dataset`` with all cores and the ``copy`` coder. Both render
the same 2048/3072 images; the baseline runs on fewer samples and is reported per sample.
"""
from __future__ import annotations

import os
import tempfile

from hpa_pipeline.prep.synth import SynthSpec, make_dataset

from .common import report, timer

N_OURS = 64
N_BASELINE = 8


def run() -> dict:
    workers = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        with timer() as t_base:
            make_dataset(f"{tmp}/base", SynthSpec(n_train=N_BASELINE, n_test=0, archive_method="lzma2"), workers=1)
        with timer() as t_ours:
            make_dataset(f"{tmp}/ours", SynthSpec(n_train=N_OURS - 16, n_test=16), workers=workers)
    base_per_sample = t_base() / N_BASELINE
    ours_per_sample = t_ours() / N_OURS
    return report("synth", {
        "ours: 64 samples 2048/3072, s": round(t_ours(), 1),
        "ours: s per sample": round(ours_per_sample, 3),
        "baseline (1 process, lzma2): s per sample": round(base_per_sample, 3),
        "speed-up": round(base_per_sample / ours_per_sample, 2),
        "workers": workers,
    })


if __name__ == "__main__":
    run()
