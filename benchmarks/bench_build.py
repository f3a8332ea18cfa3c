"""build-zarr against the usual Kaggle preprocessing, samples per second per core.

Baseline (what most competition kernels did): one process, for each of the four TIFFs of a
sample, PIL opens it, resizes it to 1024² and saves a PNG. Ours: ``build_zarr`` with the
default settings (all cores, levels 1024/512/256, Blosc-zstd). Same extracted full-size
TIFFs (2048/3072 mix, deflate) for both.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from PIL import Image

from hpa_pipeline.prep.build_zarr import build_zarr, index_tiff_folder
from hpa_pipeline.contract.store import StoreSpec

from .common import BENCH_DATA, full_size_tiffs, report, timer

N_SAMPLES = 48


def kaggle_baseline(files: dict, out: Path, size: int = 1024) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for sample_id, channels in files.items():
        for filt, path in channels.items():
            with Image.open(path) as image:
                image.resize((size, size), Image.Resampling.BILINEAR).save(out / f"{sample_id}_{filt}.png")


def run() -> dict:
    data, tiff = full_size_tiffs()
    files, _ = index_tiff_folder(tiff)
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory(dir=BENCH_DATA) as tmp:
        with timer() as t_base:
            kaggle_baseline(files, Path(tmp) / "png")
        with timer() as t_ours:
            result = build_zarr(tiff, data / "train.csv", Path(tmp) / "train.zarr", StoreSpec(), workers=cores)
        assert result.exit_code == 0
        shutil.rmtree(tmp, ignore_errors=True)
    base_rate = N_SAMPLES / t_base()  # one process = one core
    ours_rate = N_SAMPLES / t_ours() / cores
    return report("build", {
        "samples": f"{N_SAMPLES} full-size (2048/3072), deflate TIFFs",
        "baseline (PIL read, resize 1024, PNG; 1 process): samples/s per core": round(base_rate, 2),
        f"ours (build-zarr, {cores} threads, 3 levels): samples/s per core": round(ours_rate, 2),
        "ours: wall s (incl. ~1.5 s start-up)": round(t_ours(), 1),
        "ratio per core": round(ours_rate / base_rate, 2),
    })


if __name__ == "__main__":
    run()
