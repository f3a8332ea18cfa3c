"""``ingest``: the store straight from a 7z or zip archive; no image is ever written to disk.

A decoder thread streams the archive's members (7-Zip's ``7zz``, a process per solid block
with its own threads; or py7zr, one core per solid block) and groups them by sample; each
sample whose four members have arrived becomes a task, which gets the members' buffers
(handed on, not copied). A bounded queue between the two keeps memory flat: when the tasks
fall behind, decoding waits. Samples already done in the store are decoded past (a solid
stream cannot be skipped) but never processed again. By default the tasks get all cores but
one (:func:`ingest_workers`); with one worker they run in this process, without Dask.
"""
from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable
from pathlib import Path

from .archive import ArchiveError, Member, catalogue, list_members, stream_members
from .builder import BuildReport, StoreBuilder
from ..contract.labels import FILTERS, read_sample_table
from .scheduler import WORKER_TIMEOUT, check_cluster_choice, dask_client, in_flight_limit, run_bounded
from ..contract.store import StoreSpec
from .tasks import keep_freed_buffers, process_sample

_END = object()


def ingest_workers() -> int:
    """All cores but one: the decoder (7zz or py7zr on a single LZMA2 stream) keeps one busy.

    Measured on 2 cores (benchmarks/bench_decoders.py): one worker beats two on every archive
    packing, since a second would only compete with the decoder (and starts a Dask cluster).
    """
    return max(1, (os.cpu_count() or 1) - 1)


def ingest(archive: str | Path, csv: str | Path, out: str | Path, spec: StoreSpec, workers: int | None = None,
           scheduler: str | None = None, cluster: str = "threads",
           progress: Callable[[int, int], None] | None = None,
           on_bytes: Callable[[int], None] | None = None,
           on_cluster: Callable[[dict], None] | None = None, threads_per_worker: int = 1,
           worker_timeout: float = WORKER_TIMEOUT, decoder: str | None = None, upscale: bool = False) -> BuildReport:
    """Build (or resume) the store at ``out`` from ``archive``; samples in ``csv`` order.

    ``progress(advance, total)`` counts samples; ``on_bytes(n)`` counts decoded bytes;
    ``on_cluster(info)`` gets the Dask dashboard link and worker counts once the cluster is up.
    ``decoder``: ``auto`` (7-Zip's 7zz when available, else py7zr), ``7zz`` or ``py7zr``.
    ``workers`` (local clusters): samples processed at once; default :func:`ingest_workers`.
    Raises :class:`ArchiveError` only when the archive cannot be opened at all; damage found
    while decoding fails the samples not yet complete and is recorded in the report.
    """
    workers = workers or ingest_workers()
    keep_freed_buffers()  # before the decoder thread allocates the first member buffers
    table = read_sample_table(csv)
    check_cluster_choice(scheduler, cluster)  # before the store is created
    listing = catalogue(list_members(archive, decoder))
    repeated = {kept.parsed()[0]: f"{kept.parsed()[0]}: {kept.parsed()[1]} appears twice ({kept.name}, {again.name})"
                for kept, again in listing.duplicates}
    builder = StoreBuilder(out, table, spec, "ingest", source=str(archive), upscale=upscale)
    index_of = {sample_id: i for i, sample_id in enumerate(table.ids)}

    todo: dict[str, dict[str, Member]] = {}
    for index in builder.pending():
        sample_id = table.ids[index]
        members = listing.images.get(sample_id)
        if not members:
            builder.fail(index, f"{sample_id}: not in archive {Path(archive).name}")
        elif sample_id in repeated:
            builder.fail(index, repeated[sample_id])
        elif missing := [f for f in FILTERS if f not in members]:
            builder.fail(index, f"{sample_id}: missing channel(s) {', '.join(missing)} in the archive")
        else:
            todo[sample_id] = members
    if progress:
        progress(0, len(todo))

    wanted_names = {m.name for members in todo.values() for m in members.values()}
    jobs: queue.Queue = queue.Queue()
    archive_error: list[str] = []

    with builder.saving_on_interrupt(), dask_client(scheduler, workers, cluster, on_cluster,
                                                    threads_per_worker, worker_timeout) as client:
        in_flight = in_flight_limit(client)
        # samples decoded but not yet finished; sized for the workers there at the start (one
        # decoder thread feeds about 4-8 cores: more workers joining later would wait on it anyway)
        slots = threading.Semaphore(in_flight() + 2)
        decoding = threading.Thread(
            target=_decode, name="7z-decoder", daemon=True,
            args=(archive, wanted_names, todo, builder, index_of, jobs, slots, archive_error, on_bytes, decoder),
        )
        decoding.start()

        def on_result(result):
            slots.release()
            builder.on_result(result)
            if progress:
                progress(1, len(todo))

        def on_error(job, exc):
            slots.release()
            builder.on_error(job, exc)

        run_bounded(client, process_sample, iter(jobs.get, _END), in_flight, on_result, on_error)
        decoding.join()

    return builder.finish(not_in_csv=sorted(set(listing.images) - set(table.ids)), unknown_files=listing.unknown,
                          refused=listing.refused, archive_error=archive_error[0] if archive_error else None)


def _decode(archive, wanted_names, todo, builder: StoreBuilder, index_of, jobs: queue.Queue,
            slots: threading.Semaphore, archive_error: list, on_bytes, decoder: str | None) -> None:
    """Decoder thread: members -> complete samples -> ``jobs``; failures straight to the builder."""
    arrived: dict[str, dict[str, bytes]] = {}
    settled: set[str] = set()  # queued as a job, or failed
    lock = threading.Lock()  # py7zr may call deliver from one thread per solid block

    def deliver(member: Member, data: bytes | None, error: str | None) -> None:
        sample_id, filt = member.parsed()
        with lock:
            if sample_id in settled:
                return
            if error is not None:
                settled.add(sample_id)
                arrived.pop(sample_id, None)
                builder.fail(index_of[sample_id], f"{sample_id}: {error}")
                return
            got = arrived.setdefault(sample_id, {})
            got[filt] = data
            if len(got) < len(FILTERS):
                return
            del arrived[sample_id]
            settled.add(sample_id)
        slots.acquire()  # back-pressure: wait here (outside the lock) while enough is in flight
        names = {f: m.name for f, m in todo[sample_id].items()}
        jobs.put(builder.job(index_of[sample_id], got, names))

    try:
        stream_members(archive, lambda m: m.name in wanted_names, deliver, on_bytes, decoder)
    except ArchiveError as exc:
        archive_error.append(str(exc))
    finally:
        reason = f"not decoded: {archive_error[0]}" if archive_error else "members not delivered by the archive"
        with lock:
            for sample_id in sorted(set(todo) - settled):
                builder.fail(index_of[sample_id], f"{sample_id}: {reason}")
        jobs.put(_END)
