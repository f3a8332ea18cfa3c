"""What the chunk checksums cost the loader: 512² crops from the 1024 level, one process.

Baseline: the same store layout without chunk checksums (as stores were written before each
inner chunk carried its CRC32C; only the shard index is checked). Ours: the default layout,
each chunk's CRC32C checked as it is decoded. For ``--codec none`` the reader checks a chunk
whole the first time it touches it and then reads only a crop's rows: both the first pass
(a fresh reader over fresh samples) and the steady state are reported.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from unittest import mock

import numpy as np

from hpa_pipeline.contract.spec import StoreSpec
from hpa_pipeline.model.data import StoreDataset, make_loader
from hpa_pipeline.prep.build_zarr import build_zarr

from .bench_loader import BATCH, CROP, _Endless, crops_per_second
from .common import BENCH_DATA, full_size_tiffs, report, timer

CODECS = {"zstd-1": StoreSpec(codec="zstd", clevel=1, chunk=256), "none": StoreSpec(codec="none", chunk=256)}


def _without_checksums(spec: StoreSpec, chunk_bytes: int):
    """The codecs of a store written before chunk checksums: Blosc alone, or none."""
    return [c for c in _WITH_CHECKSUMS(spec, chunk_bytes) if type(c).__name__ != "Crc32cCodec"] or None


_WITH_CHECKSUMS = StoreSpec.compressors


def first_pass_crops_per_second(store: Path, n: int) -> float:
    """Crops/s of a fresh reader, one crop per sample: every chunk it touches is checked whole."""
    dataset = StoreDataset(str(store), 1024, np.arange(n), crop=CROP, train=True)
    loader = make_loader(dataset, BATCH, 0, range(n))
    with timer() as t:
        seen = sum(len(batch[0]) for batch in loader)
    return seen / t()


def run() -> dict:
    data, tiff = full_size_tiffs()
    figures = {"crop": f"{CROP}² from the 1024 level, batches of {BATCH}, 1 process"}
    with tempfile.TemporaryDirectory(dir=BENCH_DATA) as tmp:
        for name, spec in CODECS.items():
            plain, checked = Path(tmp, f"{name}_plain.zarr"), Path(tmp, f"{name}_crc.zarr")
            with mock.patch.object(StoreSpec, "compressors", _without_checksums):
                build_zarr(tiff, data / "train.csv", plain, spec, workers=2)
            build_zarr(tiff, data / "train.csv", checked, spec, workers=2)
            n = 48
            first = {}
            for store in (plain, checked, plain, checked):  # alternated, best of two: the first read of a
                # store also pays for its opening, whichever is measured first
                first[store] = max(first.get(store, 0.0), first_pass_crops_per_second(store, n))
            steady = {}
            for store in (plain, checked, plain, checked):  # alternated: the machine's drift hits both
                dataset = StoreDataset(str(store), 1024, np.arange(n), crop=CROP, train=True)
                best = crops_per_second(make_loader(dataset, BATCH, 0, _Endless(n)))
                steady[store] = max(steady.get(store, 0.0), best)
            figures[f"{name}: baseline (no chunk checksums), crops/s"] = round(steady[plain], 1)
            figures[f"{name}: ours (chunk CRC32C checked), crops/s"] = round(steady[checked], 1)
            figures[f"{name}: ratio ours / baseline"] = round(steady[checked] / steady[plain], 3)
            figures[f"{name}: first pass, baseline / ours crops/s"] = f"{first[plain]:.1f} / {first[checked]:.1f}"
            figures[f"{name}: first pass ratio ours / baseline"] = round(first[checked] / first[plain], 3)
    return report("checksum", figures)


if __name__ == "__main__":
    run()
