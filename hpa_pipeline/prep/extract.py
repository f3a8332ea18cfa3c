"""``extract``: unpack archive members to ``DIR/<id>_<filter>.tif``, each file whole or not at all.

A member is held in memory until complete (a TIFF is a few MB), its CRC checked against the
archive's listing, written under a temporary name and renamed: so a crash never leaves a
half-written ``.tif``, and a re-run skips every file already there with the listed size and
CRC-32. One extract at a time writes into a folder (its lock, :mod:`..contract.locks`).
Free space is checked against the listed sizes of the files still to write before anything
is decoded. Unsafe members (absolute paths, ``..``, links) and files that are not HPA images
are refused by name and listed in ``extract_report.json``.
"""
from __future__ import annotations

import logging
import shutil
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .archive import ArchiveError, Member, catalogue, list_members, stream_members
from ..contract.atomic import SUFFIX, write_bytes, write_json
from ..common.progress import Counter, ProgressCallback
from .checksum import crc32
from ..contract.errors import EXIT_SOME_FAILED, DiskFull
from ..contract.locks import store_locked

log = logging.getLogger(__name__)

REPORT_NAME = "extract_report.json"


@dataclass
class ExtractReport:
    out_dir: str
    archives: list[str]
    written: int = 0
    skipped: int = 0  # already complete from an earlier run
    bytes_written: int = 0
    failed: list[str] = field(default_factory=list)  # members with a bad CRC or size
    refused: list[str] = field(default_factory=list)  # unsafe members
    unknown_files: list[str] = field(default_factory=list)  # not <id>_<filter>.tif, not extracted
    duplicates: list[str] = field(default_factory=list)
    archive_errors: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return EXIT_SOME_FAILED if self.failed or self.archive_errors else 0

    def problems(self) -> list[tuple[str, str]]:
        """(kind, line) of each refused member, failed member and archive error."""
        return ([("refused", line) for line in self.refused]
                + [("failed", line) for line in self.failed + self.archive_errors])

    def summary(self) -> str:
        return (f"{self.written} files written, {self.skipped} already there, {len(self.failed)} failed, "
                f"{len(self.refused)} refused, {len(self.unknown_files)} unknown files ignored")


@dataclass
class ExtractPlan:
    """Per archive: the members to write, and what is refused or ignored."""

    archive: str
    todo: list[Member] = field(default_factory=list)
    skipped: int = 0
    refused: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)

    @property
    def bytes_needed(self) -> int:
        return sum(m.size for m in self.todo)


def plan_extract(archive: str | Path, out_dir: Path, decoder: str | None = None) -> ExtractPlan:
    """Sort an archive's members into to-write, already-there, refused, unknown and duplicate."""
    listing = catalogue(list_members(archive, decoder))
    plan = ExtractPlan(str(archive), refused=listing.refused, unknown=listing.unknown,
                       duplicates=[again.name for _, again in listing.duplicates])
    for members in listing.images.values():
        for m in members.values():
            target = out_dir / m.basename
            if _already_extracted(target, m):
                plan.skipped += 1
            else:
                plan.todo.append(m)
    return plan


def _already_extracted(target: Path, member: Member) -> bool:
    """Whether ``target`` holds ``member`` already: the same size and, where the archive lists
    one, the same CRC-32 (a file damaged since, or another file of that size, is extracted again)."""
    if not target.is_file() or target.stat().st_size != member.size:
        return False
    if member.crc32 is None:
        return True
    value = 0
    with target.open("rb") as f:
        while block := f.read(16 << 20):
            value = crc32(block, value)
    return value == member.crc32


def check_free_space(out_dir: Path, needed: int, margin: int = 256 * 2**20) -> None:
    free = shutil.disk_usage(out_dir).free
    if needed + margin > free:
        raise DiskFull(
            f"{out_dir}: {needed / 2**30:.2f} GiB still to extract (plus {margin / 2**20:.0f} MiB margin) "
            f"but only {free / 2**30:.2f} GiB free", hint="free space or extract elsewhere (or skip extraction: "
            "`hpa-pipe ingest` reads the archive directly)")


def extract_archives(archives: list[str | Path], out_dir: str | Path,
                     progress: ProgressCallback | None = None, decoder: str | None = None) -> ExtractReport:
    """Extract every HPA image member of ``archives`` into ``out_dir``; resumable.

    ``progress`` gets the bytes decoded of the total (task ``extract``, unit ``B``). Raises :class:`..contract.errors.DiskFull` before decoding when space is short, and
    :class:`ArchiveError` for an archive that cannot be opened. ``decoder``: ``auto``, ``7zz`` or
    ``py7zr`` (see :mod:`.archive`).
    """
    out = Path(out_dir)
    with store_locked(out, what="extract target"):
        return _extract_archives(archives, out, progress, decoder)


def _extract_archives(archives: list[str | Path], out: Path, progress: ProgressCallback | None,
                      decoder: str | None) -> ExtractReport:
    """:func:`extract_archives`, holding the target's lock."""
    for leftover in out.glob(f"*{SUFFIX}"):
        leftover.unlink()
    plans = [plan_extract(a, out, decoder) for a in archives]
    for archive, plan in zip(archives, plans):
        log.debug("%s: %d members to write, %d already there", archive, len(plan.todo), plan.skipped)
    total = sum(p.bytes_needed for p in plans)
    out.mkdir(parents=True, exist_ok=True)
    check_free_space(out, total)
    decoded = Counter(progress, "extract", total, unit="B")
    decoded.start()
    report = ExtractReport(str(out), [str(a) for a in archives])
    lock = threading.Lock()
    for plan in plans:
        report.skipped += plan.skipped
        report.refused += plan.refused
        report.unknown_files += plan.unknown
        report.duplicates += plan.duplicates
        wanted = {m.name for m in plan.todo}

        def deliver(member: Member, data: bytes | None, error: str | None) -> None:
            if error is not None:
                with lock:
                    report.failed.append(error)
                return
            write_bytes(out / member.basename, data)
            with lock:  # blocks may be decoded by several threads
                report.written += 1
                report.bytes_written += len(data)

        try:
            stream_members(plan.archive, lambda m: m.name in wanted, deliver, decoded.add, decoder)
        except ArchiveError as exc:
            report.archive_errors.append(str(exc))
    write_json(out / REPORT_NAME, asdict(report))
    return report
