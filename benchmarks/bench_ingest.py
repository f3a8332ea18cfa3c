"""ingest against its floor (decoding the archive alone) and against extract + build-zarr.

Data: full-size synthetic samples (2048/3072 mix) as uncompressed TIFFs in an LZMA2 archive,
so that, as with the real archives, LZMA2 really codes the data and decodes at 35-40 MB/s of
output on one core: that single stream is the floor. Also: py7zr's decode rate against the
7-Zip command line where one is installed, and the peak extra disk of each path.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import py7zr

from hpa_pipeline.prep.archive import stream_members
from hpa_pipeline.prep.build_zarr import build_zarr
from hpa_pipeline.prep.extract import extract_archives
from hpa_pipeline.prep.ingest import ingest
from hpa_pipeline.contract.locations import bytes_under
from hpa_pipeline.contract.store import StoreSpec

from .common import BENCH_DATA, report, seven_zip_cli, synth_data, timer

N_SAMPLES = 32


def lzma2_archive() -> tuple[Path, Path]:
    """The benchmark archive (LZMA2 over uncompressed TIFFs) and its train.csv."""
    data = synth_data(f"raw{N_SAMPLES}", n_train=N_SAMPLES, n_test=1, compression="none")
    archive = BENCH_DATA / f"raw{N_SAMPLES}_lzma2.7z"
    if not archive.exists():
        tiff = BENCH_DATA / f"raw{N_SAMPLES}_tiff"
        extract_archives([data / "train_full_size.7z"], tiff)
        cli = seven_zip_cli()
        print("   (compressing the LZMA2 benchmark archive)")
        if cli:  # multithreaded, much faster to make; one solid LZMA2 stream like the real archives
            subprocess.run([cli, "a", "-t7z", "-m0=lzma2", "-mx=1", "-ms=64g", str(archive), "."], cwd=tiff,
                           check=True, stdout=subprocess.DEVNULL)
            (archive.parent / "extract_report.json").unlink(missing_ok=True)
        else:
            with py7zr.SevenZipFile(archive, "w", filters=[{"id": py7zr.FILTER_LZMA2, "preset": 1}]) as a:
                for path in sorted(tiff.glob("*.tif")):
                    a.write(path, path.name)
        shutil.rmtree(tiff)
    return archive, data / "train.csv"


def decode_floor(archive: Path) -> tuple[float, int]:
    total = [0]

    def deliver(member, data, error):
        total[0] += len(data or b"")

    with timer() as t:
        stream_members(archive, lambda m: True, deliver)
    return t(), total[0]


def run() -> dict:
    archive, csv = lzma2_archive()
    cores = os.cpu_count() or 1
    with py7zr.SevenZipFile(archive) as a:
        folders = a.header.main_streams.unpackinfo.numfolders
    floor_s, decoded = decode_floor(archive)
    figures = {
        "archive": f"{N_SAMPLES} samples, {archive.stat().st_size / 2**20:.0f} MiB LZMA2, "
                   f"{decoded / 2**20:.0f} MiB of TIFFs, {folders} solid block(s)",
        "floor: py7zr decode alone, s": round(floor_s, 1),
        "py7zr decode MB/s": round(decoded / 1e6 / floor_s, 1),
    }
    cli = seven_zip_cli()
    if cli:
        with timer() as t_cli:
            subprocess.run([cli, "t", str(archive)], check=True, stdout=subprocess.DEVNULL)
        figures[f"7-Zip CLI ({cli} t) decode MB/s"] = round(decoded / 1e6 / t_cli(), 1)
    with tempfile.TemporaryDirectory(dir=BENCH_DATA) as tmp:
        tmp = Path(tmp)
        with timer() as t_ingest:
            a = ingest(archive, csv, tmp / "ingest.zarr", StoreSpec(), workers=cores)
        with timer() as t_extract:
            extract_archives([archive], tmp / "tiff")
        with timer() as t_build:
            b = build_zarr(tmp / "tiff", csv, tmp / "build.zarr", StoreSpec(), workers=cores)
        assert a.exit_code == b.exit_code == 0
        store_bytes, tiff_bytes = bytes_under(tmp / "ingest.zarr"), bytes_under(tmp / "tiff")
    figures.update({
        f"ingest ({cores} threads), s": round(t_ingest(), 1),
        "ingest / floor (target <= 1.15)": round(t_ingest() / floor_s, 3),
        "extract + build-zarr, s": round(t_extract() + t_build(), 1),
        "ingest speed-up over extract + build-zarr": round((t_extract() + t_build()) / t_ingest(), 2),
        "peak extra disk, ingest (store only), MiB": round(store_bytes / 2**20),
        "peak extra disk, extract + build-zarr (TIFFs + store), MiB": round((tiff_bytes + store_bytes) / 2**20),
    })
    return report("ingest", figures)


if __name__ == "__main__":
    run()
