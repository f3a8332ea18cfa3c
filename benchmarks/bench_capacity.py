"""Capacity plan for the full dataset, from per-core figures measured here.

Measures, on the same 48 full-size synthetic samples (2048/3072 mix, deflate TIFFs):

- build-zarr per-core rate at top sizes 512, 1024 and 2048 (the default levels: 2, 3 and 3), all cores;
- the same at 1024 with one thread: the baseline of this benchmark, so the ratio is the
  parallel efficiency (how well the per-core rate carries to more cores);
- store bytes per sample at each size, and the worst-case memory (3072² 16-bit sources, the
  ``ingest`` command line with 1 and 2 worker threads: a fixed part plus a cost per thread);
- the decoder's rate on one LZMA2 stream (bytes of TIFF out per second, ``7zz t -mmt1``; py7zr
  where no 7-Zip is installed) on the ingest benchmark's archive: the floor of ``ingest`` and
  ``extract`` when an archive is one stream (written by one thread, as the competition's may
  be: how they were packed is not published; ``hpa-pipe inspect`` on the archive says).

Then it prints the plan (wall time, core-hours, peak memory, disk) for the 31,072 + 11,702
samples of the competition on a 2-core machine, a 16-core machine and a cluster, from these
figures and the archives' known sizes, for archives of one LZMA2 stream and for archives written
in independent chunks (which 7-Zip decodes on every core). The documentation's benchmarks page
shows the latest plan.
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

from hpa_pipeline.prep.build_zarr import build_zarr
from hpa_pipeline.contract.locations import bytes_under
from hpa_pipeline.contract.store import StoreSpec

from .bench_ingest import decode_floor, lzma2_archive, seven_zip_rates
from .bench_memory import rss_trace
from .common import BENCH_DATA, full_size_tiffs, report, synth_data, timer

N_SAMPLES = 48
SIZES = (512, 1024, 2048)
FULL = {"train": 31_072, "test": 11_702}
TIFF_GB = {"train": 460 * 189 / 267, "test": 460 * 78 / 267}  # unpacked, split in the archives' ratio
MACHINES = (("2-core machine", 1, 2), ("16-core machine", 1, 16), ("cluster: 8 workers x 16 cores", 8, 16))


def measure_build(tiff: Path, csv: Path, size: int, threads: int) -> dict:
    with tempfile.TemporaryDirectory(dir=BENCH_DATA) as tmp:
        with timer() as t:
            result = build_zarr(tiff, csv, Path(tmp) / "s.zarr", StoreSpec(size=size), workers=threads)
        assert result.exit_code == 0, result.failed
        store_bytes = bytes_under(Path(tmp) / "s.zarr")
        shutil.rmtree(tmp, ignore_errors=True)
    return {"per_core": N_SAMPLES / t() / threads, "mb_per_sample": store_bytes / N_SAMPLES / 1e6}


def measure_memory(size: int) -> dict:
    """Worst-case memory (3072² 16-bit sources): peak RSS of ``ingest`` with 1 and 2 worker threads;
    the difference is the cost of one more thread, the rest is the fixed part."""
    data = synth_data("mem16_8", n_train=8, n_test=1, image_sizes=(3072,), bit_depth=16)  # as bench_memory
    peaks = []
    for threads in (1, 2):
        with tempfile.TemporaryDirectory(dir=BENCH_DATA) as tmp:
            peaks.append(max(rss_trace([sys.executable, "-m", "hpa_pipeline", "ingest",
                                        str(data / "train_full_size.7z"), "--csv", str(data / "train.csv"),
                                        "--out", str(Path(tmp) / "s.zarr"), "--size", str(size),
                                        "--workers", str(threads)])) / 2**30)
    per_thread = max(0.0, peaks[1] - peaks[0])
    return {"fixed_gib": peaks[0] - per_thread, "per_thread_gib": per_thread}


def ingest_hours(decode_h: dict[str, float], core_h: float, nodes: int, cores: int, chunked: bool) -> float:
    """Wall hours of ingesting both archives: ``decode_h`` is each archive's decoding on one
    core, ``core_h`` the samples' work. Two commands run side by side where there are 8 or more
    threads. One stream decodes on one core of the machine running ``ingest``, the work goes to
    the other threads; an archive in chunks decodes on all the cores of that machine, beside
    the work."""
    threads = nodes * cores
    both_at_once = threads >= 8
    decoders = 2 if both_at_once else 1
    if not chunked:
        decode_wall = max(decode_h.values()) if both_at_once else sum(decode_h.values())
        return max(decode_wall, core_h / max(1, threads - decoders))
    decode_cpu = sum(decode_h.values())
    if nodes == 1:
        return (decode_cpu + core_h) / threads
    return max(decode_cpu / cores, core_h / (threads - cores))


def plan(rates: dict, decode_mb_s: float) -> list[str]:
    """A Markdown table (its header first): size, machine, build-zarr wall, ingest wall (archives
    of one stream, and written in chunks), core-hours, memory, disk."""
    samples = sum(FULL.values())
    decode_h = {split: gb * 1e3 / decode_mb_s / 3600 for split, gb in TIFF_GB.items()}
    rows = ["| top size | machine | build-zarr (TIFFs already unpacked) | ingest, archives of one LZMA2 stream "
            "| ingest, archives written in chunks | core-hours | peak memory (all threads busy) | store on disk |",
            "|---|---|---|---|---|---|---|---|"]
    for size, m in rates.items():
        core_h = samples / m["per_core"] / 3600
        disk_gb = samples * m["mb_per_sample"] / 1e3
        for name, nodes, cores in MACHINES:
            threads = nodes * cores
            build_h = core_h / threads
            one_stream, chunked = (ingest_hours(decode_h, core_h, nodes, cores, c) for c in (False, True))
            memory = m["fixed_gib"] + m["per_thread_gib"] * cores
            read_gb_s = sum(TIFF_GB.values()) / (build_h * 3600)  # what build-zarr must read from disk
            rows.append(f"| {size} | {name} | {build_h:.2f} h (reads {read_gb_s:.2f} GB/s) | {one_stream:.2f} h | {chunked:.2f} h | "
                        f"{core_h:.1f} | "
                        f"{memory:.1f} GiB{' per node' if nodes > 1 else ''} | {disk_gb:.0f} GB |")
    return rows


def run() -> dict:
    data, tiff = full_size_tiffs()
    cores = os.cpu_count() or 1
    single = measure_build(tiff, data / "train.csv", 1024, 1)
    rates = {size: {**measure_build(tiff, data / "train.csv", size, cores), **measure_memory(size)}
             for size in SIZES}
    archive, _ = lzma2_archive()
    floor_s, decoded = decode_floor(archive, "py7zr")
    py7zr_mb_s, seven_zip = decoded / 1e6 / floor_s, seven_zip_rates(archive, decoded)
    decoder, decode_mb_s = (("7zz t -mmt1", seven_zip["one thread"]) if seven_zip
                            else ("py7zr (no 7-Zip here)", py7zr_mb_s))
    figures = {
        "samples": f"{N_SAMPLES} full-size (2048/3072), deflate TIFFs",
        "baseline: build-zarr 1024, 1 thread, samples/s": round(single["per_core"], 2),
        f"ours: build-zarr 1024, {cores} threads, samples/s per core": round(rates[1024]["per_core"], 2),
        "parallel efficiency (per-core rate, all cores / 1 thread)": round(rates[1024]["per_core"] / single["per_core"], 2),
    }
    for size, m in rates.items():
        figures[f"size {size}: samples/s per core"] = round(m["per_core"], 2)
        figures[f"size {size}: MB per sample"] = round(m["mb_per_sample"], 2)
        figures[f"size {size}: GiB fixed (16-bit 3072² sources)"] = round(m["fixed_gib"], 2)
        figures[f"size {size}: GiB per thread (16-bit 3072² sources)"] = round(m["per_thread_gib"], 2)
    figures[f"one LZMA2 stream decoded by {decoder}, MB/s of TIFF out"] = round(decode_mb_s, 1)
    figures["py7zr, the same, MB/s"] = round(py7zr_mb_s, 1)
    figures["plan"] = plan(rates, decode_mb_s)
    record = report("capacity", figures)
    print("\n" + "\n".join(figures["plan"]))
    return record


if __name__ == "__main__":
    run()
