"""The hand-written shard writer and reader against zarr-python's own codec pipeline and the
``zarrs`` (Rust) codec pipeline, on the store's checksummed layout (Blosc-zstd-1 then crc32c,
and crc32c alone for ``--codec none``), one thread.

Writer: whole samples (levels 1024/512/256, 256² inner chunks, one shard per sample and level)
per second. Reader: 512² crops from the 1024 level per second. The pixels are those of the
benchmarks' full-size synthetic dataset, built once. Each figure is the best of two passes,
the contenders alternated so that the machine's drift hits all of them.
"""
from __future__ import annotations

import contextlib
import shutil
import tempfile
from pathlib import Path

import numpy as np
import zarr

from hpa_pipeline.contract.shards import ShardReader, write_sample_shard
from hpa_pipeline.contract.spec import StoreSpec
from hpa_pipeline.prep.build_zarr import build_zarr

from .common import BENCH_DATA, full_size_tiffs, report, timer

SIZES = (1024, 512, 256)
CROP = 512
N_CROPS = 400


def source_levels() -> dict[int, np.ndarray]:
    """``{size: (n, 4, size, size)}`` of the full-size synthetic dataset, built once."""
    data, tiff = full_size_tiffs()
    store = BENCH_DATA / "shards_source.zarr"
    if not (store / "report.json").exists():
        shutil.rmtree(store, ignore_errors=True)
        build_zarr(tiff, data / "train.csv", store, StoreSpec(codec="none"), workers=2)
    root = zarr.open_group(str(store), mode="r")
    return {s: root[f"images/{s}"][:] for s in SIZES}


@contextlib.contextmanager
def pipeline(name: str):
    """zarr's codec pipeline for the block: its own (``zarr``) or the zarrs one."""
    if name != "zarrs":
        yield
        return
    with zarr.config.set({"codec_pipeline.path": "zarrs.ZarrsCodecPipeline", "threading.max_workers": 1}):
        yield


def empty_store(path: Path, n: int, codec: str) -> None:
    spec = StoreSpec(codec=codec)
    for s in SIZES:
        zarr.create_array(str(path / f"images/{s}"), shape=(n, 4, s, s), dtype="uint8", chunks=(1, 1, 256, 256),
                          shards=(1, 4, s, s), compressors=spec.compressors(256 * 256), fill_value=0)


def write_rate(levels: dict, path: Path, writer: str, codec: str) -> float:
    """Samples per second written by ``ours`` (the direct writer) or through zarr with a pipeline."""
    n = len(levels[SIZES[0]])
    shutil.rmtree(path, ignore_errors=True)
    empty_store(path, n, codec)
    with pipeline(writer):
        arrays = {s: zarr.open_array(str(path / f"images/{s}"), mode="r+") for s in SIZES}
        with timer() as t:
            for i in range(n):
                for s in SIZES:
                    if writer == "ours":
                        write_sample_shard(str(path), f"images/{s}", i, levels[s][i])
                    else:
                        arrays[s][i] = levels[s][i]
    return n / t()


def read_rate(path: Path, reader: str, n: int) -> float:
    """512² crops per second from the 1024 level, by ``ours`` (ShardReader) or zarr with a pipeline."""
    rng = np.random.default_rng(0)
    picks = [(int(rng.integers(n)), *(int(v) * 256 for v in rng.integers(0, 3, 2))) for _ in range(N_CROPS)]
    with pipeline(reader):
        if reader == "ours":
            shards = ShardReader(str(path), "images/1024")
            read = lambda i, y, x: shards.read(i, y, x, CROP, CROP)  # noqa: E731
        else:
            array = zarr.open_array(str(path / "images/1024"), mode="r")
            read = lambda i, y, x: array[i, :, y:y + CROP, x:x + CROP]  # noqa: E731
        with timer() as t:
            for i, y, x in picks:
                read(i, y, x)
    return N_CROPS / t()


def run() -> dict:
    levels = source_levels()
    n = len(levels[SIZES[0]])
    figures = {"samples": f"{n} synthetic full-size samples as levels {SIZES}, 256² chunks, one thread"}
    contenders = ("ours", "zarr", "zarrs")
    with tempfile.TemporaryDirectory(dir=BENCH_DATA) as tmp:
        for codec in ("zstd", "none"):
            label = "zstd-1 + crc32c" if codec == "zstd" else "crc32c alone (--codec none)"
            writes, reads = {}, {}
            for _ in range(2):
                for name in contenders:
                    writes[name] = max(writes.get(name, 0.0), write_rate(levels, Path(tmp, name), name, codec))
            written = Path(tmp, "ours")  # every reader reads the same bytes
            for _ in range(2):
                for name in contenders:
                    reads[name] = max(reads.get(name, 0.0), read_rate(written, name, n))
            for name in contenders:
                figures[f"{label}: write, {name}: samples/s"] = round(writes[name], 2)
                figures[f"{label}: read, {name}: 512² crops/s"] = round(reads[name], 1)
            for name in ("zarr", "zarrs"):
                figures[f"{label}: write ratio ours / {name}"] = round(writes["ours"] / writes[name], 2)
                figures[f"{label}: read ratio ours / {name}"] = round(reads["ours"] / reads[name], 2)
    return report("shards", figures)


if __name__ == "__main__":
    run()
