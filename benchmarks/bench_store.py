"""Bytes on disk per sample at 512 and 1024, lossless, against the competition's 512² PNGs.

Two comparisons:
- real images: the 200 real 512² HPA PNGs of ``../shared/data/hpa-real-png``, grouped four at a
  time into pseudo-samples (red, green, blue, yellow), stored the way a store stores a 512 level
  (256² Blosc chunks), against the PNG files themselves (≈ 440 KB a sample);
- synthetic full-size samples built by ``build-zarr`` at 1024/512/256, against PNG encodings
  of the same levels (what the Kaggle approach writes), for each codec the store offers.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import cv2
import numpy as np
from numcodecs import Blosc

from hpa_pipeline.prep.build_zarr import build_zarr
from hpa_pipeline.contract.labels import FILTERS
from hpa_pipeline.contract.locations import bytes_under
from hpa_pipeline.contract.store import StoreSpec

from .common import BENCH_DATA, full_size_tiffs, report

REAL_PNG = Path(__file__).resolve().parents[2] / "shared" / "data" / "hpa-real-png"
CODECS = {"zstd-1": ("zstd", 1), "zstd-5": ("zstd", 5), "lz4-5": ("lz4", 5)}


def chunked_bytes(image: np.ndarray, codec: Blosc, chunk: int = 256) -> int:
    return sum(len(codec.encode(np.ascontiguousarray(image[y:y + chunk, x:x + chunk])))
               for y in range(0, image.shape[0], chunk) for x in range(0, image.shape[1], chunk))


def real_png_figures() -> dict:
    if not REAL_PNG.exists():
        return {"real PNGs": "skipped: ../shared/data/hpa-real-png not found"}
    by_filter = {f: sorted(REAL_PNG.glob(f"*_{f}.png")) for f in FILTERS}
    n = min(len(v) for v in by_filter.values())
    png_bytes = sum(p.stat().st_size for f in FILTERS for p in by_filter[f][:n])
    out = {"real: pseudo-samples (one real PNG per filter)": n,
           "real: competition PNGs, KB per sample": round(png_bytes / n / 1000, 1)}
    for name, (cname, clevel) in CODECS.items():
        codec = Blosc(cname=cname, clevel=clevel, shuffle=Blosc.NOSHUFFLE, blocksize=256 * 256)  # as the store
        stored = sum(chunked_bytes(cv2.imread(str(p), cv2.IMREAD_UNCHANGED), codec)
                     for f in FILTERS for p in by_filter[f][:n])
        out[f"real: store 512 {name}, KB per sample (vs PNG)"] = (round(stored / n / 1000, 1),
                                                                 round(stored / png_bytes, 3))
    return out


def synthetic_figures() -> dict:
    data, tiff = full_size_tiffs()
    out = {}
    with tempfile.TemporaryDirectory(dir=BENCH_DATA) as tmp:
        for name, (cname, clevel) in CODECS.items():
            store = Path(tmp) / f"{name}.zarr"
            build_zarr(tiff, data / "train.csv", store, StoreSpec(codec=cname, clevel=clevel))
            for size in (1024, 512):
                per_sample = bytes_under(store / "images" / str(size)) / 48
                if name == "zstd-1":
                    import zarr

                    images = zarr.open_array(str(store / "images" / str(size)), mode="r")
                    png = sum(len(cv2.imencode(".png", images[i, c])[1]) for i in range(48) for c in range(4)) / 48
                    out[f"synthetic {size}: PNG, KB per sample"] = round(png / 1000, 1)
                out[f"synthetic {size}: store {name}, KB per sample"] = round(per_sample / 1000, 1)
    return out


def run() -> dict:
    return report("store", {**real_png_figures(), **synthetic_figures()})


if __name__ == "__main__":
    run()
