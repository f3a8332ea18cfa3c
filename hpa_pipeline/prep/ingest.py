"""``ingest``: the store straight from a 7z or zip archive; no image is ever written to disk.

A decoder thread (:class:`_Decoding`) streams the archive's members (7-Zip's ``7zz``, a
process per solid block with its own threads; or py7zr, one core per solid block) and groups
them by sample; each sample whose four members have arrived is handed to this thread, which
makes it a task that gets the members' buffers (handed on, not copied). A bounded number of
samples decoded but not finished keeps memory flat: when the tasks fall behind, decoding
waits. Samples already done in the store are decoded past (a solid stream cannot be skipped)
but never processed again. By default the cluster gets all cores but one
(:func:`ingest_workers`), and ingest works on as few samples at once as keep up with the
decoder (:class:`_Pace`); with one worker the tasks run in this process, without Dask.

A new store needs nothing from the store to know which members are wanted, so decoding
starts first and 7zz works while zarr is imported (about 0.2 s), the store is created and
the cluster starts; resuming reads the done flags first.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from .archive import ArchiveError, Catalogue, Member, catalogue, list_members, stream_members
from ..contract.labels import FILTERS, SampleTable, check_source_matches, read_sample_table
from ..contract.locations import is_url
from ..common.machine import usable_cores
from ..common.progress import Counter, ProgressCallback
from ..contract.spec import StoreSpec
from ..contract.locks import writes_store
from .memory import keep_freed_buffers
from .scheduler import WORKER_TIMEOUT, announcing, check_cluster_choice, dask_client, in_flight_limit, run_bounded

if TYPE_CHECKING:
    from .builder import BuildReport, StoreBuilder

_END = object()


log = logging.getLogger(__name__)


def ingest_workers() -> int:
    """All cores but one: the decoder (7zz or py7zr on a single LZMA2 stream) keeps one busy.

    On 2 cores one worker beats two on every archive packing (benchmarks/bench_decoders.py):
    a second would only compete with the decoder, and would start a Dask cluster.
    """
    return max(1, usable_cores() - 1)


@writes_store
def ingest(archive: str | Path, csv: str | Path, out: str | Path, spec: StoreSpec, workers: int | None = None,
           scheduler: str | None = None, cluster: str = "threads", progress: ProgressCallback | None = None,
           threads_per_worker: int = 1, worker_timeout: float = WORKER_TIMEOUT, decoder: str | None = None,
           upscale: bool = False) -> BuildReport:
    """Build (or resume) the store at ``out`` from ``archive``; samples in ``csv`` order.

    ``progress`` gets the samples finished (task ``ingest``), the bytes decoded (task
    ``decode``) and, as a message, the Dask cluster's dashboard link and worker counts.
    ``decoder``: ``auto`` (7-Zip's 7zz when available, else py7zr), ``7zz`` or ``py7zr``.
    ``workers`` (local clusters): the most samples processed at once (:class:`_Pace` decides how
    many); default :func:`ingest_workers`.
    Raises :class:`ArchiveError` only when the archive cannot be opened at all; damage found
    while decoding fails the samples not yet complete and is recorded in the report.
    """
    keep_freed_buffers()  # before the decoder thread allocates the first member buffers
    table = read_sample_table(csv)
    check_cluster_choice(scheduler, cluster)  # before the store is created
    listing = catalogue(list_members(archive, decoder))
    check_source_matches(table, listing.images, csv, archive)
    decoded = Counter(progress, "decode", unit="B")

    def decode(pending: Iterable[int]) -> _Decoding:
        return _Decoding(archive, *_wanted(table, listing, pending, archive), decoder, decoded.add)

    log.debug("%s: %d samples in %s, %d with images in the archive", archive, len(table), csv, len(listing.images))
    decoding = decode(range(len(table))) if _is_new(out) else None  # new: every sample of the CSV is wanted
    try:
        # imported here, after decoding has started: zarr's import takes about 0.2 s
        from .builder import start_build

        builder = start_build(out, table, spec, "ingest", source=str(archive), upscale=upscale)
        decoding = decoding or decode(builder.pending())
        with builder.saving_on_interrupt(), dask_client(scheduler, workers or ingest_workers(), cluster,
                                                        announcing(progress, "ingest"), threads_per_worker,
                                                        worker_timeout) as client:
            at_once = _process_decoded(client, builder, decoding, Counter(progress, "ingest"))
        builder.stop_if_all_failed_alike()
        decoding.join()
    except BaseException:
        if decoding is not None:
            decoding.cancel()
        raise
    return builder.finish(not_in_csv=sorted(set(listing.images) - set(table.ids)), unknown_files=listing.unknown,
                          refused=listing.refused, archive_error=decoding.archive_error, samples_at_once=at_once)


def _process_decoded(client, builder: StoreBuilder, decoding: "_Decoding", finished: Counter) -> int:
    """Make a task of each sample as the decoder completes it and run them (on ``client``, or
    here without one); return the most samples worked on at once."""
    from .tasks import process_sample

    index_of = {sample_id: i for i, sample_id in enumerate(builder.table.ids)}
    for sample_id, reason in decoding.unusable.items():
        builder.fail(index_of[sample_id], reason)
    finished.start(len(decoding.todo))
    if client is None:  # one sample at a time in this thread, the next two decoded meanwhile
        pace, limit = None, in_flight_limit(None)
        decoding.allow(2)
    else:
        pace = limit = _Pace(decoding, in_flight_limit(client, per_thread=1))

    def jobs() -> Iterator:
        for sample_id, members, error in decoding.samples():
            if error is not None:
                builder.fail(index_of[sample_id], error)
                continue
            names = {f: m.name for f, m in decoding.todo[sample_id].items()}
            yield builder.job(index_of[sample_id], members, names)

    def settled() -> None:
        decoding.finished()  # its slot goes back to the decoder
        if pace is not None:
            pace.step()

    def on_result(result):
        settled()
        builder.on_result(result)
        finished.add()

    def on_error(job, exc):
        settled()
        builder.on_error(job, exc)

    run_bounded(client, process_sample, builder.until_given_up(jobs()), limit, on_result, on_error)
    return pace.at_once if pace is not None else 1


def _is_new(out: str | Path) -> bool:
    """A local ``out`` that holds nothing yet: there are no done flags to read."""
    if is_url(str(out)):
        return False
    path = Path(out)
    try:
        return not path.exists() or path.is_dir() and not any(path.iterdir())
    except OSError:  # unreadable: opening the store says why
        return False


def _wanted(table: SampleTable, listing: Catalogue, pending: Iterable[int],
            archive: str | Path) -> tuple[dict[str, dict[str, Member]], dict[str, str]]:
    """The ``pending`` samples the archive can give, each with its four members; and those it
    cannot, with the reason."""
    repeated = {kept.parsed()[0]: f"{kept.parsed()[0]}: {kept.parsed()[1]} appears twice ({kept.name}, {again.name})"
                for kept, again in listing.duplicates}
    todo: dict[str, dict[str, Member]] = {}
    unusable: dict[str, str] = {}
    for index in pending:
        sample_id = table.ids[index]
        members = listing.images.get(sample_id)
        if not members:
            unusable[sample_id] = f"{sample_id}: not in archive {Path(archive).name}"
        elif sample_id in repeated:
            unusable[sample_id] = repeated[sample_id]
        elif missing := [f for f in FILTERS if f not in members]:
            refusals = [r for r in listing.refused if sample_id in r]  # e.g. a member declaring gigabytes
            why = f" (refused: {'; '.join(refusals)})" if refusals else " in the archive"
            unusable[sample_id] = f"{sample_id}: missing channel(s) {', '.join(missing)}{why}"
        else:
            todo[sample_id] = members
    return todo, unusable


class _Pace:
    """How many samples are worked on at once, called as ``run_bounded``'s limit (a query) and
    stepped up by :meth:`step` as samples finish: as few as keep up with the decoder, at most
    ``most()`` (the cluster's own limit). ``at_once`` only
    grows, so at the end it is the most samples worked on at once.

    A worker beyond what the decoder needs only competes with it for the cores and the caches
    (benchmarks/bench_ingest.py, against ``7zz t`` alone). How many are needed depends on the
    TIFFs: a sample's work is a small part of its decoding when they are uncompressed, more
    than its decoding when deflated (LZMA2 finds little left to compress in those and decodes
    them fast). So it is measured: one sample at a time to start with, and one more
    whenever the decoder spent more than :attr:`SHARE` of the time since the last change
    waiting for a free slot, that is, for the workers.
    """

    SHARE = 0.05
    MIN_WINDOW = 0.25  # seconds between two steps up

    def __init__(self, decoding: "_Decoding", most: Callable[[], int], start: int = 1,
                 clock: Callable[[], float] = time.monotonic):
        self.decoding, self.most, self.clock = decoding, most, clock
        self.at_once = start
        decoding.allow(start)
        self._since, self._waited = clock(), decoding.waited

    def __call__(self) -> int:
        """How many samples may be in flight now."""
        return min(self.at_once, self.most())

    def step(self) -> None:
        """Called as each sample finishes: take on one more when the decoder waited for the
        workers, giving the decoder a slot for it."""
        now, waited = self.clock(), self.decoding.waited
        window = now - self._since
        if window >= self.MIN_WINDOW:
            if waited - self._waited > self.SHARE * window and self.at_once < self.most():
                self.at_once += 1
                self.decoding.allow(1)
            self._since, self._waited = now, waited


class _Cancelled(Exception):
    """Raised into the decoder when the ingest stops early."""


class _Decoding:
    """The decoder thread: the archive's wanted members, grouped into complete samples.

    It knows nothing of the store, so it can start before the store is opened. The samples
    come out of :meth:`samples` as ``(sample_id, {filter: bytes}, None)``, or ``(sample_id,
    None, reason)`` for one that cannot be had (a bad CRC, a broken stream). At most
    :attr:`AHEAD` complete samples wait before the workers are known (:meth:`allow` adds
    theirs), and each one taken must be given back by :meth:`finished` when its task ends:
    that bounds the memory. :attr:`waited` counts the seconds the decoder has waited for a
    free slot since the first :meth:`allow` (the workers were behind), for :class:`_Pace`;
    :attr:`waits` counts the times it found no free slot (each is counted after its ``asked``
    time is read, so a test that sees it move may then move ``clock``).
    """

    AHEAD = 2

    def __init__(self, archive: str | Path, todo: dict[str, dict[str, Member]], unusable: dict[str, str],
                 decoder: str | None, on_bytes: Callable[[int], None] | None,
                 clock: Callable[[], float] = time.monotonic):
        self.archive, self.todo, self.unusable, self.clock = archive, todo, unusable, clock
        self.archive_error: str | None = None
        self._queue: queue.Queue = queue.Queue()
        self._slots = threading.Semaphore(self.AHEAD)
        self.waited = 0.0
        self.waits = 0
        self._working_since: float | None = None  # the first allow(): waits before it are the start-up's
        self._cancelled = threading.Event()
        self._arrived: dict[str, dict[str, bytes]] = {}
        self._settled: set[str] = set()  # handed on, or failed
        self._lock = threading.Lock()  # py7zr and 7zz's blocks may deliver from several threads
        wanted = {m.name for members in todo.values() for m in members.values()}
        self._thread = threading.Thread(target=self._run, args=(wanted, decoder, on_bytes), name="7z-decoder",
                                        daemon=True)
        self._thread.start()

    def samples(self) -> Iterator[tuple[str, dict | None, str | None]]:
        return iter(self._queue.get, _END)

    def allow(self, more: int) -> None:
        if self._working_since is None:
            self._working_since = self.clock()
        self._slots.release(more)

    def finished(self) -> None:
        self._slots.release()

    def join(self) -> None:
        self._thread.join()

    def cancel(self, timeout: float = 10.0) -> None:
        """Stop decoding (7zz is killed at its next member) and wait a while for the thread."""
        self._cancelled.set()
        self._slots.release(1 << 20)  # wake a deliver waiting for a slot
        self._thread.join(timeout)

    def _run(self, wanted: set[str], decoder: str | None, on_bytes) -> None:
        try:
            stream_members(self.archive, lambda m: m.name in wanted, self._deliver, on_bytes, decoder)
        except _Cancelled:
            return
        except ArchiveError as exc:
            if self._cancelled.is_set():  # a stream broken off by the cancel itself
                return
            self.archive_error = str(exc)
        finally:
            if not self._cancelled.is_set():
                self._fail_the_rest()

    def _deliver(self, member: Member, data: bytes | None, error: str | None) -> None:
        if self._cancelled.is_set():
            raise _Cancelled
        sample_id, filt = member.parsed()
        with self._lock:
            if sample_id in self._settled:
                return
            if error is not None:
                self._settled.add(sample_id)
                self._arrived.pop(sample_id, None)
                self._queue.put((sample_id, None, f"{sample_id}: {error}"))
                return
            got = self._arrived.setdefault(sample_id, {})
            got[filt] = data
            if len(got) < len(FILTERS):
                return
            del self._arrived[sample_id]
            self._settled.add(sample_id)
        if not self._slots.acquire(blocking=False):
            self._wait_for_a_slot()
        if self._cancelled.is_set():
            raise _Cancelled
        self._queue.put((sample_id, got, None))

    def _wait_for_a_slot(self) -> None:
        """Back-pressure: wait here (outside the lock) while enough is in flight."""
        asked = self.clock()
        with self._lock:
            self.waits += 1
        self._slots.acquire()
        if self._working_since is not None:
            with self._lock:
                self.waited += max(0.0, self.clock() - max(asked, self._working_since))

    def _fail_the_rest(self) -> None:
        """Every wanted sample not handed on fails with the reason, then the end is marked."""
        reason = f"not decoded: {self.archive_error}" if self.archive_error else "members not delivered by the archive"
        with self._lock:
            for sample_id in sorted(set(self.todo) - self._settled):
                self._queue.put((sample_id, None, f"{sample_id}: {reason}"))
        self._queue.put(_END)
