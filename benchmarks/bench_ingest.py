"""ingest against its floor (decoding the archive alone) and against extract + build-zarr.

Data: full-size synthetic samples (2048/3072 mix) as uncompressed TIFFs in an LZMA2 archive,
so that, as with the real archives (58 % of their TIFFs), LZMA2 really codes the data. The
floor is the default decoder's (7-Zip's ``7zz`` where available, else py7zr) decoding alone,
members delivered and nothing done with them. Also each decoder's rate of TIFF bytes out:
py7zr, and 7-Zip with all threads and with one (``-mmt1``: the rate of one LZMA2 stream, what
a solid archive written by one thread allows; :mod:`bench_capacity` plans from it), and the
peak extra disk of each path.
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
from hpa_pipeline.prep.sevenzip import find_7zz
from hpa_pipeline.prep.ingest import ingest, ingest_workers
from hpa_pipeline.contract.locations import bytes_under
from hpa_pipeline.contract.store import StoreSpec

from .common import BENCH_DATA, report, synth_data, timer

N_SAMPLES = 32


def lzma2_archive() -> tuple[Path, Path]:
    """The benchmark archive (LZMA2 over uncompressed TIFFs) and its train.csv."""
    data = synth_data(f"raw{N_SAMPLES}", n_train=N_SAMPLES, n_test=1, compression="none")
    archive = BENCH_DATA / f"raw{N_SAMPLES}_lzma2.7z"
    if not archive.exists():
        tiff = BENCH_DATA / f"raw{N_SAMPLES}_tiff"
        extract_archives([data / "train_full_size.7z"], tiff)
        seven = find_7zz()
        print("   (compressing the LZMA2 benchmark archive)")
        if seven:  # multithreaded, much faster to make; one solid block like the real archives
            subprocess.run([seven.path, "a", "-t7z", "-m0=lzma2", "-mx=1", "-ms=64g", str(archive), "."], cwd=tiff,
                           check=True, stdout=subprocess.DEVNULL)
            (archive.parent / "extract_report.json").unlink(missing_ok=True)
        else:
            with py7zr.SevenZipFile(archive, "w", filters=[{"id": py7zr.FILTER_LZMA2, "preset": 1}]) as a:
                for path in sorted(tiff.glob("*.tif")):
                    a.write(path, path.name)
        shutil.rmtree(tiff)
    return archive, data / "train.csv"


def decode_floor(archive: Path, decoder: str | None = None) -> tuple[float, int]:
    """Seconds to decode every member with ``decoder`` (default: ingest's), and the bytes out."""
    total = [0]

    def deliver(member, data, error):
        total[0] += len(data or b"")

    with timer() as t:
        stream_members(archive, lambda m: True, deliver, decoder=decoder)
    return t(), total[0]


def seven_zip_rates(archive: Path, decoded: int) -> dict[str, float]:
    """7-Zip's ``t`` rate, MB/s of TIFF out, with all its threads and with one (``-mmt1``)."""
    seven = find_7zz()
    if seven is None:
        return {}
    rates = {}
    for label, switches in (("all threads", []), ("one thread", ["-mmt1"])):
        with timer() as t:
            subprocess.run([seven.path, "t", *switches, str(archive)], check=True, stdout=subprocess.DEVNULL)
        rates[label] = decoded / 1e6 / t()
    return rates


def run() -> dict:
    from hpa_pipeline.prep.archive import decoder_label

    archive, csv = lzma2_archive()
    cores = os.cpu_count() or 1
    with py7zr.SevenZipFile(archive) as a:
        folders = a.header.main_streams.unpackinfo.numfolders
    floor_s, decoded = decode_floor(archive)
    py7zr_s, _ = decode_floor(archive, "py7zr")
    figures = {
        "archive": f"{N_SAMPLES} samples, {archive.stat().st_size / 2**20:.0f} MiB LZMA2, "
                   f"{decoded / 2**20:.0f} MiB of TIFFs, {folders} solid block(s)",
        "decoder (ingest's default)": decoder_label(None),
        "floor: that decoder alone, members delivered, s": round(floor_s, 1),
        "py7zr decode MB/s": round(decoded / 1e6 / py7zr_s, 1),
    }
    for label, rate in seven_zip_rates(archive, decoded).items():
        figures[f"7-Zip (7zz t), {label}, decode MB/s"] = round(rate, 1)
    with tempfile.TemporaryDirectory(dir=BENCH_DATA) as tmp:
        tmp = Path(tmp)
        with timer() as t_ingest:
            a = ingest(archive, csv, tmp / "ingest.zarr", StoreSpec())  # its default workers
        with timer() as t_extract:
            extract_archives([archive], tmp / "tiff")
        with timer() as t_build:
            b = build_zarr(tmp / "tiff", csv, tmp / "build.zarr", StoreSpec(), workers=cores)
        assert a.exit_code == b.exit_code == 0
        store_bytes, tiff_bytes = bytes_under(tmp / "ingest.zarr"), bytes_under(tmp / "tiff")
    figures.update({
        f"ingest (default: {ingest_workers()} worker(s)), s": round(t_ingest(), 1),
        f"build-zarr ({cores} threads) after extract, s": round(t_build(), 1),
        "ingest / floor (target <= 1.15)": round(t_ingest() / floor_s, 3),
        "extract + build-zarr, s": round(t_extract() + t_build(), 1),
        "ingest speed-up over extract + build-zarr": round((t_extract() + t_build()) / t_ingest(), 2),
        "peak extra disk, ingest (store only), MiB": round(store_bytes / 2**20),
        "peak extra disk, extract + build-zarr (TIFFs + store), MiB": round((tiff_bytes + store_bytes) / 2**20),
    })
    return report("ingest", figures)


if __name__ == "__main__":
    run()
