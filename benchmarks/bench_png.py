"""The competition's 512² PNG zip into a store, against the usual PIL PNG reading loop, per core.

Data: the 200 real HPA PNGs of ``../shared/data/hpa-real-png`` as 50 four-channel pseudo-samples
in a zip (stored, as PNGs are compressed already), repeated 4 times (200 samples). Baseline: one
process reads each sample's four PNGs from the zip with PIL and stacks them (what Kaggle kernels
did every epoch). Ours: ``ingest`` of the zip into a store with levels 512/256/128, 1 worker.
"""
from __future__ import annotations

import io
import tempfile
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from hpa_pipeline.contract.labels import FILTERS
from hpa_pipeline.contract.store import StoreSpec
from hpa_pipeline.prep.ingest import ingest

from .common import BENCH_DATA, report, timer

REAL_PNG = Path(__file__).resolve().parents[2] / "shared" / "data" / "hpa-real-png"
REPEAT = 4


def make_zip(tmp: Path) -> tuple[Path, Path, list[str]]:
    files = sorted(REAL_PNG.glob("*.png"))
    ids, archive, csv = [], tmp / "train.zip", tmp / "train.csv"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as z:
        for r in range(REPEAT):
            for k in range(len(files) // 4):
                sample_id = f"p{r}_{k:03d}"
                ids.append(sample_id)
                for filt, source in zip(FILTERS, files[4 * k:4 * k + 4]):
                    z.write(source, f"{sample_id}_{filt}.png")
    csv.write_text("Id,Target\n" + "".join(f"{i},0\n" for i in ids))
    return archive, csv, ids


def pil_loop(archive: Path, ids: list[str]) -> None:
    with zipfile.ZipFile(archive) as z:
        for sample_id in ids:
            np.stack([np.asarray(Image.open(io.BytesIO(z.read(f"{sample_id}_{f}.png")))) for f in FILTERS])


def run() -> dict:
    if not REAL_PNG.is_dir():
        print("bench png: ../shared/data/hpa-real-png is not here")
        return {}
    with tempfile.TemporaryDirectory(dir=BENCH_DATA) as tmp:
        archive, csv, ids = make_zip(Path(tmp))
        with timer() as t_base:
            pil_loop(archive, ids)
        with timer() as t_ours:
            result = ingest(archive, csv, Path(tmp) / "s.zarr", StoreSpec(size=512, levels=3, chunk=128), workers=1)
        assert result.exit_code == 0
    base, ours = len(ids) / t_base(), len(ids) / t_ours()
    return report("png", {
        "data": f"{len(ids)} samples of four real 512² PNGs in a stored zip",
        "baseline: PIL reads the four PNGs of each sample, 1 process: samples/s": round(base, 1),
        "ours: ingest the zip, levels 512/256/128, Blosc-zstd, 1 worker: samples/s": round(ours, 1),
        "ratio per core": round(ours / base, 2),
    })


if __name__ == "__main__":
    run()
