"""The coordinator of a store build, shared by ``build-zarr`` and ``ingest``.

It creates (or reopens, to resume) the store, says which samples are still to do, turns task
results into ``done`` flags in batches, collects every failure with its reason, and at the end
writes the channel statistics and ``report.json``. It is the only writer of ``done``.
"""
from __future__ import annotations

import re
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..contract.atomic import Interrupted
from ..contract.labels import SampleTable
from ..contract.store import LABELS, Store, StoreSpec, open_or_create_store, remove_partial_files, write_report
from .sample_book import SampleBook
from .tasks import SampleJob, SampleResult
from ..contract.errors import EXIT_SOME_FAILED, DiskFull, HpaError


@dataclass
class BuildReport:
    """What a run did; also the content of ``report.json``."""

    command: str
    store: str
    source: str
    n_samples: int
    done_before: int = 0
    written: int = 0
    #: {"id", "reason"} for each sample not written; "exception": the type of an unexpected failure
    failed: list[dict] = field(default_factory=list)
    not_in_csv: list[str] = field(default_factory=list)  # ids found in the source but not in the CSV
    unknown_files: list[str] = field(default_factory=list)  # files that are not <id>_<filter>.tif
    refused: list[str] = field(default_factory=list)  # unsafe archive members, with the reason
    archive_error: str | None = None
    labels_updated: list[str] = field(default_factory=list)  # ids whose labels the CSV changed on this rerun
    seconds: float = 0.0
    samples_at_once: int | None = None  # ingest: the most samples worked on at once (its pace)

    @property
    def done(self) -> int:
        return self.done_before + self.written

    @property
    def exit_code(self) -> int:
        return EXIT_SOME_FAILED if self.failed or self.archive_error else 0

    def problems(self) -> list[tuple[str, str]]:
        """(kind, line) of an archive error and of each failed sample, for a report's reader."""
        archive = [("archive error", self.archive_error)] if self.archive_error else []
        return archive + [(f"failed (unexpected {failure['exception']}: a bug? see the report)"
                           if "exception" in failure else "failed", failure["reason"]) for failure in self.failed]

    def summary(self) -> str:
        parts = [f"{self.done}/{self.n_samples} samples done ({self.written} written now, "
                 f"{self.done_before} already done)", f"{len(self.failed)} failed"]
        if self.not_in_csv:
            parts.append(f"{len(self.not_in_csv)} ids not in the CSV ignored")
        if self.unknown_files:
            parts.append(f"{len(self.unknown_files)} unknown files ignored")
        if self.refused:
            parts.append(f"{len(self.refused)} unsafe members refused")
        if self.labels_updated:
            shown = ", ".join(self.labels_updated[:3]) + (" ..." if len(self.labels_updated) > 3 else "")
            parts.append(f"labels of {len(self.labels_updated)} samples updated from the CSV ({shown})")
        n = self.samples_at_once
        at_once = f", up to {n} sample{'s' if n != 1 else ''} at once" if n else ""
        return ", ".join(parts) + f" in {self.seconds:.1f}s{at_once}"


class SystematicFailure(HpaError, RuntimeError):
    """The first samples of a run all failed for one reason, and none was written: the cause is
    the options or the source as a whole, not a bad file, so the run stops."""


def failure_kind(sample_id: str, reason: str) -> str:
    """A failure's reason without what differs from sample to sample (the id, numbers): two
    samples 'fail alike' when these agree (``source is 256x256, smaller than --size 1024`` and
    ``... 384x384 ...`` do)."""
    return re.sub(r"\d+", "N", reason.replace(sample_id, "ID"))


def start_build(out: str | Path, table: SampleTable, spec: StoreSpec, command: str, source: str,
                upscale: bool = False) -> StoreBuilder:
    """Open (or create) the store at ``out``, remove the half-written files a killed run left
    there, and start the bookkeeping of this run."""
    store = open_or_create_store(out, table, spec, source=source)
    remove_partial_files(str(out))
    builder = StoreBuilder(store, out, table, spec, command, source, upscale)
    builder.report.labels_updated = follow_the_csv_labels(store, table)
    return builder


def follow_the_csv_labels(store: Store, table: SampleTable) -> list[str]:
    """Make the store's labels those of the CSV given (a corrected ``train.csv`` on a rerun);
    returns the ids whose labels changed. Images are unaffected: only ``labels`` is rewritten."""
    if not table.has_labels or not store.has_labels:
        return []
    stored, wanted = store.labels(), table.label_matrix()
    changed = (stored != wanted).any(axis=1)
    if changed.any():
        store.array(LABELS)[:] = wanted
    return [table.ids[i] for i in changed.nonzero()[0]]


class StoreBuilder:
    """Bookkeeping of one build: pending samples, results, failures, statistics, report."""

    FLUSH_SECONDS = 1.0
    #: a run stops when its first this many processed samples all failed alike (:func:`failure_kind`)
    #: and none was written: e.g. --size 1024 on the competition's 512² PNGs, which would otherwise
    #: decode a whole archive for a report of identical failures
    GIVE_UP_AFTER = 100

    def __init__(self, store: Store, out: str | Path, table: SampleTable, spec: StoreSpec, command: str, source: str,
                 upscale: bool = False):
        self.out, self.table, self.spec, self.upscale = str(out), table, spec, upscale
        self.store = store
        self.book = SampleBook(store)
        self.report = BuildReport(command, self.out, source, len(table), done_before=int(self.book.done.sum()))
        self.failures: dict[int, str] = {}
        self.exceptions: dict[int, str] = {}  # index -> exception type of an unexpected failure
        self.started = time.perf_counter()
        self._last_flush = time.perf_counter()
        # the kind of the failures so far and how many, while all alike (:func:`failure_kind`); None once
        # a sample is written or two failures differ
        self._alike: tuple[str | None, int] | None = (None, 0)
        self.given_up: str | None = None  # why the run stops (:meth:`stop_if_all_failed_alike`)

    def pending(self) -> list[int]:
        """Indices of samples not yet done, in CSV order."""
        return [i for i in range(len(self.table)) if not self.book.done[i]]

    def job(self, index: int, sources: dict, names: dict | None = None) -> SampleJob:
        return SampleJob(index, self.table.ids[index], sources, self.out, self.spec.size, self.spec.levels,
                         self.spec.dtype, names or {}, self.upscale)

    def on_result(self, result: SampleResult) -> None:
        if result.disk_full:
            self._stop_on_a_full_disk()
        if result.ok:
            self.book.mark_done(result.index, result.source_shape, result.source_bits, result.sums, result.hashes)
            self.report.written += 1
            self._alike = None
            if time.perf_counter() - self._last_flush > self.FLUSH_SECONDS:
                self.book.flush()
                self._last_flush = time.perf_counter()
        else:
            self.fail(result.index, result.error, result.exception)
            self._give_up_if_all_alike(result.sample_id, result.error)

    def on_error(self, job: SampleJob, exc: BaseException) -> None:
        reason = f"{job.sample_id}: task failed ({type(exc).__name__}: {exc})"
        self.fail(job.index, reason, type(exc).__name__)
        self._give_up_if_all_alike(job.sample_id, reason)

    def until_given_up(self, jobs: Iterable[SampleJob]) -> Iterator[SampleJob]:
        """``jobs``, ending early once the run has given up (the tasks in flight still finish)."""
        for job in jobs:
            if self.given_up is not None:
                return
            yield job

    def stop_if_all_failed_alike(self) -> None:
        """Raise :class:`SystematicFailure` when the run gave up; called once the tasks are done."""
        if self.given_up is not None:
            raise SystematicFailure(self.given_up)

    def _give_up_if_all_alike(self, sample_id: str, reason: str) -> None:
        """Give up once the first :attr:`GIVE_UP_AFTER` processed samples all failed alike with
        none written (failures decided before processing, such as ids not in the archive, do
        not count: the report lists those at once)."""
        if self._alike is None:
            return
        kind, count = self._alike
        this = failure_kind(sample_id, reason)
        if kind not in (None, this):
            self._alike = None  # failures of several kinds: bad files, the run goes on
            return
        self._alike = this, count + 1
        if count + 1 >= self.GIVE_UP_AFTER and self.given_up is None:
            afresh = (" (with other layout options the store, in which nothing is done, is built afresh)"
                      if self.report.done_before == 0 else " to resume")
            self.given_up = (f"stopped: the first {count + 1} samples all failed alike, e.g. {reason}; nothing "
                             f"was written in this run. Fix the cause and run the command again{afresh}")

    def fail(self, index: int, reason: str, exception: str | None = None) -> None:
        """Record a sample not written; ``exception``: the type of an unexpected failure."""
        self.failures[index] = reason
        if exception is not None:
            self.exceptions[index] = exception

    def _stop_on_a_full_disk(self) -> None:
        """Save the done flags (if there is room) and stop: every later sample would fail alike."""
        try:
            self.book.flush()
        except OSError:
            pass  # the flags of the last second are lost: those samples are simply redone
        done = int(self.book.done.sum())
        raise DiskFull(f"{self.out}: no space left on the device; {done}/{len(self.table)} samples are saved "
                       f"whole (nothing is half-written)", hint="free space and run the same command again to go on")

    @contextmanager
    def saving_on_interrupt(self):
        """Ctrl-C: the done flags of every finished sample are written before the command stops."""
        try:
            yield
        except KeyboardInterrupt:
            self.book.flush()
            done = int(self.book.done.sum())
            raise Interrupted(f"interrupted: {done}/{len(self.table)} samples saved in {self.out}; run the same "
                              f"command again to do the rest") from None

    def finish(self, **extra) -> BuildReport:
        """Flush the last flags, store statistics and the report; return the report."""
        self.book.flush()
        self.store.set_statistics(self.book.statistics(self.spec.sizes))
        for key, value in extra.items():
            setattr(self.report, key, value)
        self.report.failed = [{"id": self.table.ids[i], "reason": r,
                               **({"exception": self.exceptions[i]} if i in self.exceptions else {})}
                              for i, r in sorted(self.failures.items())]
        self.report.seconds = time.perf_counter() - self.started
        write_report(self.out, asdict(self.report))
        return self.report
