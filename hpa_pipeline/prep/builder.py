"""The coordinator of a store build, shared by ``build-zarr`` and ``ingest``.

It creates (or reopens, to resume) the store, says which samples are still to do, turns task
results into ``done`` flags in batches, collects every failure with its reason, and at the end
writes the channel statistics and ``report.json``. It is the only writer of ``done``.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..contract.atomic import Interrupted
from ..contract.labels import SampleTable
from ..contract.store import SampleBook, StoreSpec, create_store, remove_partial_files, write_report
from .exit_status import EXIT_SOME_FAILED
from .tasks import SampleJob, SampleResult


@dataclass
class BuildReport:
    """What a run did; also the content of ``report.json``."""

    command: str
    store: str
    source: str
    n_samples: int
    done_before: int = 0
    written: int = 0
    failed: list[dict] = field(default_factory=list)  # {"id", "reason"} for each sample not written
    not_in_csv: list[str] = field(default_factory=list)  # ids found in the source but not in the CSV
    unknown_files: list[str] = field(default_factory=list)  # files that are not <id>_<filter>.tif
    refused: list[str] = field(default_factory=list)  # unsafe archive members, with the reason
    archive_error: str | None = None
    seconds: float = 0.0
    samples_at_once: int | None = None  # ingest: the most samples worked on at once (its pace)

    @property
    def done(self) -> int:
        return self.done_before + self.written

    @property
    def exit_code(self) -> int:
        return EXIT_SOME_FAILED if self.failed or self.archive_error else 0

    def summary(self) -> str:
        parts = [f"{self.done}/{self.n_samples} samples done ({self.written} written now, "
                 f"{self.done_before} already done)", f"{len(self.failed)} failed"]
        if self.not_in_csv:
            parts.append(f"{len(self.not_in_csv)} ids not in the CSV ignored")
        if self.unknown_files:
            parts.append(f"{len(self.unknown_files)} unknown files ignored")
        if self.refused:
            parts.append(f"{len(self.refused)} unsafe members refused")
        n = self.samples_at_once
        at_once = f", up to {n} sample{'s' if n != 1 else ''} at once" if n else ""
        return ", ".join(parts) + f" in {self.seconds:.1f}s{at_once}"


class StoreBuilder:
    """Bookkeeping of one build: pending samples, results, failures, statistics, report."""

    FLUSH_SECONDS = 1.0

    def __init__(self, out: str | Path, table: SampleTable, spec: StoreSpec, command: str, source: str,
                 upscale: bool = False):
        self.out, self.table, self.spec, self.upscale = str(out), table, spec, upscale
        self.root = create_store(self.out, table, spec, source=source)
        remove_partial_files(self.out)
        self.book = SampleBook(self.root)
        self.report = BuildReport(command, self.out, source, len(table), done_before=int(self.book.done.sum()))
        self.failures: dict[int, str] = {}
        self.started = time.perf_counter()
        self._last_flush = time.perf_counter()

    def pending(self) -> list[int]:
        """Indices of samples not yet done, in CSV order."""
        return [i for i in range(len(self.table)) if not self.book.done[i]]

    def job(self, index: int, sources: dict, names: dict | None = None) -> SampleJob:
        return SampleJob(index, self.table.ids[index], sources, self.out, self.spec.size, self.spec.levels,
                         self.spec.dtype, names or {}, self.upscale)

    def on_result(self, result: SampleResult) -> None:
        if result.ok:
            self.book.mark_done(result.index, result.source_shape, result.source_bits, result.sums)
            self.report.written += 1
            if time.perf_counter() - self._last_flush > self.FLUSH_SECONDS:
                self.book.flush()
                self._last_flush = time.perf_counter()
        else:
            self.fail(result.index, result.error)

    def on_error(self, job: SampleJob, exc: BaseException) -> None:
        self.fail(job.index, f"{job.sample_id}: task failed ({type(exc).__name__}: {exc})")

    def fail(self, index: int, reason: str) -> None:
        self.failures[index] = reason

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
        meta = dict(self.root.attrs["hpa"])
        meta["statistics"] = self.book.statistics(self.spec.sizes)
        self.root.attrs["hpa"] = meta
        for key, value in extra.items():
            setattr(self.report, key, value)
        self.report.failed = [{"id": self.table.ids[i], "reason": r} for i, r in sorted(self.failures.items())]
        self.report.seconds = time.perf_counter() - self.started
        write_report(self.out, asdict(self.report))
        return self.report
