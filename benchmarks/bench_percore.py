"""build-zarr on one core against the usual way, whole commands, and where a sample's time goes.

Data: twelve 2048²/3072² four-channel samples of the synthetic cell images, each TIFF written
by tifffile (not by the project's archive writer) in one of four encodings, three samples each:
none, tiled deflate, LZW, deflate in 16-row strips, 8-bit (the decoders benchmark's archive, unpacked). Baseline (what competition kernels did):
one process, for each TIFF, PIL opens it, box-resizes it to 1024 and saves a PNG. Ours:
``hpa-pipe build-zarr --size 1024 --workers 1`` as a whole command (its start-up included).
The profile times each step of ``process_sample`` in-process, per encoding.
"""
from __future__ import annotations

import csv
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

from hpa_pipeline.contract.labels import FILTERS
from hpa_pipeline.contract.store import StoreSpec, write_levels
from hpa_pipeline.prep.imaging import channel_sums, make_levels, read_image

from .common import BENCH_DATA, report, timer

ENCODINGS = {  # name: tifffile.imwrite arguments
    "none": {},
    "tiled deflate": {"compression": "zlib", "tile": (256, 256)},
    "LZW": {"compression": "lzw"},
    "deflate, 16-row strips": {"compression": "zlib", "rowsperstrip": 16},
}
PER_ENCODING = 3


def make_tiffs(folder: Path) -> tuple[list[str], dict[str, str]]:
    """The twelve samples: the synthetic cell images (as the issue's archive), each channel
    written by tifffile in its sample's encoding."""
    from hpa_pipeline.prep.synth.cells import render_sample

    rng = np.random.default_rng(7)
    ids, encoding_of = [], {}
    for e, (name, args) in enumerate(ENCODINGS.items()):
        for k in range(PER_ENCODING):
            sample_id = f"s{e}{k}"
            size = (2048, 3072)[(e + k) % 2]
            channels = render_sample(rng, (int(rng.integers(0, 28)),), size, 8)
            for filt in FILTERS:
                tifffile.imwrite(folder / f"{sample_id}_{filt}.tif", channels[filt], photometric="minisblack", **args)
            ids.append(sample_id)
            encoding_of[sample_id] = name
    return ids, encoding_of


def usual_way(folder: Path, out: Path) -> None:
    out.mkdir()
    for path in sorted(folder.glob("*.tif")):
        with Image.open(path) as image:
            image.resize((1024, 1024), Image.Resampling.BOX).save(out / f"{path.stem}.png")


def profile(folder: Path, ids: list[str], encoding_of: dict, store: Path, passes: int = 3) -> dict[str, dict[str, float]]:
    """Milliseconds per sample in each step, by encoding (in-process, one thread, as a task
    runs: OpenCV and Blosc on this thread, freed buffers kept); each step's fastest of
    ``passes`` over the samples, so that a cold file cache or a slow spell is not what is timed."""
    from hpa_pipeline.contract.labels import SampleTable
    from hpa_pipeline.contract.store import open_or_create_store
    from hpa_pipeline.prep.memory import keep_freed_buffers
    from hpa_pipeline.common.machine import one_thread_per_task

    one_thread_per_task()
    keep_freed_buffers()
    spec = StoreSpec(size=1024)
    open_or_create_store(store, SampleTable(tuple(ids), None), spec)
    steps: dict[str, dict[str, list]] = {}
    for index, sample_id in [(i, s) for _ in range(passes) for i, s in enumerate(ids)]:
        times = steps.setdefault(encoding_of[sample_id], {"TIFF decode": [], "levels": [], "shard write": [],
                                                          "channel sums": []})
        start = time.perf_counter()
        channels = {f: read_image(folder / f"{sample_id}_{f}.tif") for f in FILTERS}
        decoded = time.perf_counter()
        levels = make_levels(channels, 1024, 3).levels
        made = time.perf_counter()
        write_levels(str(store), index, levels)
        written = time.perf_counter()
        channel_sums(levels)
        summed = time.perf_counter()
        for key, (a, b) in {"TIFF decode": (start, decoded), "levels": (decoded, made),
                            "shard write": (made, written), "channel sums": (written, summed)}.items():
            times[key].append(1000 * (b - a))
    return {enc: {k: round(float(np.mean(np.min(np.reshape(v, (passes, PER_ENCODING)), axis=0))), 1)
                  for k, v in t.items()} for enc, t in steps.items()}


def run() -> dict:
    with tempfile.TemporaryDirectory(dir=BENCH_DATA) as tmp:
        tmp = Path(tmp)
        folder = tmp / "tiff"
        folder.mkdir()
        ids, encoding_of = make_tiffs(folder)
        labels = tmp / "train.csv"
        with labels.open("w", newline="") as f:
            csv.writer(f).writerows([("Id", "Target")] + [(i, "0") for i in ids])
        with timer() as t_usual:
            usual_way(folder, tmp / "png")
        with timer() as t_ours:
            subprocess.run([sys.executable, "-m", "hpa_pipeline", "build-zarr", "--src", str(folder), "--csv",
                            str(labels), "--out", str(tmp / "ours.zarr"), "--size", "1024", "--workers", "1"],
                           check=True, capture_output=True)
        table = profile(folder, ids, encoding_of, tmp / "profile.zarr")
        shutil.rmtree(folder)
    figures = {
        "data": f"{len(ids)} samples (2048²/3072², 8-bit), TIFFs in 4 encodings: {', '.join(ENCODINGS)}",
        "usual way (PIL open, box resize to 1024, PNG save; 1 process), s": round(t_usual(), 2),
        "build-zarr --size 1024 --workers 1, whole command, s": round(t_ours(), 2),
        "ratio (target >= 3)": round(t_usual() / t_ours(), 2),
    }
    for encoding, steps in table.items():
        figures[f"ms per sample, {encoding}"] = ", ".join(f"{k} {v}" for k, v in steps.items())
    return report("percore", figures)


if __name__ == "__main__":
    run()
