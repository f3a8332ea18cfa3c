"""py7zr, the pure-Python 7z decoder: the fallback where no 7-Zip program is found.

Imported only when py7zr decodes (``--decoder py7zr`` or no ``7zz``): importing py7zr costs
about 0.15 s of start-up that the 7zz path does not need.

Facts this module is built on (py7zr 1.x):

- There is no ``read()``: members stream through ``extract(factory=...)`` into a ``Py7zIO``
  that py7zr ``close()``s when the member is complete. On a CRC mismatch py7zr raises
  instead and the whole extraction ends, though the stream could go on; so
  :func:`stream_members` turns py7zr's per-member CRC check off and :class:`_MemberSink`
  checks each member against the archive's listing itself: one damaged member, one failure.
- py7zr keeps every sink it created until the extraction ends; a sink therefore hands its
  bytes on and drops them at ``close()``, or memory would grow by the whole archive.
- LZMA2 decoding of one solid block runs on one core (benchmarks/bench_decoders.py). An archive with
  several solid blocks ("folders") is decoded by py7zr in parallel threads when it is opened
  from a path (not from a file object, so not for multi-volume archives).
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import py7zr
from py7zr.helpers import get_sanitized_output_path
from py7zr.io import Py7zIO, WriterFactory

from .completeness import unreadable
from .members import VOLUME_SUFFIX, ArchiveError, Deliver, Member, volume_paths
from .checksum import crc32


def label() -> str:
    """The decoder line ``ingest`` and ``extract`` print."""
    return f"py7zr {py7zr.__version__} (one thread per solid block)"


def open_archive(path: str | Path) -> py7zr.SevenZipFile:
    """Open a 7z archive or a multi-volume set, with a clear error for what is not one."""
    volumes = volume_paths(path)
    try:
        if len(volumes) == 1 and not VOLUME_SUFFIX.search(volumes[0].name):
            return py7zr.SevenZipFile(volumes[0], mode="r")
        import multivolumefile

        digits = len(VOLUME_SUFFIX.search(volumes[0].name).group(1))
        base = volumes[0].with_name(VOLUME_SUFFIX.sub("", volumes[0].name))
        handle = multivolumefile.MultiVolume(base, mode="rb", ext_digits=digits)
        return py7zr.SevenZipFile(handle, mode="r")
    except (py7zr.Bad7zFile, EOFError, OSError, ValueError, KeyError, IndexError) as exc:
        raise unreadable(path, "7z", f"{type(exc).__name__}: {exc}") from None


def _member(info) -> Member:
    """A :class:`Member` from py7zr's file info (a folder's size is None there)."""
    return Member(info.filename, info.uncompressed or 0, info.crc32, info.is_directory, info.is_symlink)


def list_members(path: str | Path) -> list[Member]:
    with open_archive(path) as archive:
        return [_member(i) for i in archive.list()]


class _MemberSink(Py7zIO):
    """Receives one member's bytes; checks its CRC and hands them on at ``close()``."""

    def __init__(self, member: Member, deliver: Deliver, on_bytes: Callable[[int], None] | None,
                 raised: list[BaseException]):
        self.member, self.deliver, self.on_bytes = member, deliver, on_bytes
        self.raised = raised  # what deliver raised, shared by the sinks, for stream_members
        self.parts: list[bytes] = []
        self.crc = 0
        self.length = 0

    def write(self, s) -> int:
        data = bytes(s)
        self.parts.append(data)
        self.crc = crc32(data, self.crc)
        self.length += len(data)
        if self.on_bytes is not None:
            self.on_bytes(len(data))
        return len(data)

    def close(self) -> None:
        parts, self.parts = self.parts, []  # py7zr keeps this sink alive: drop the bytes now
        m = self.member
        try:
            if self.length != m.size:
                self.deliver(m, None, f"{m.name}: {self.length} bytes decoded, archive lists {m.size}")
            elif m.crc32 is not None and self.crc != m.crc32:
                self.deliver(m, None, f"{m.name}: CRC mismatch (archive {m.crc32:08x}, data {self.crc:08x})")
            else:
                self.deliver(m, b"".join(parts), None)
        except BaseException as exc:  # py7zr would report it as damage, or lose it on a worker thread
            self.raised.append(exc)
            raise

    def read(self, size=None) -> bytes:
        return b""

    def seek(self, offset, whence=0) -> int:
        return 0

    def flush(self) -> None:
        pass

    def size(self) -> int:
        return self.length


class _Discard(_MemberSink):
    """For a second member of the same name (py7zr renames it ``name_0``): decoded, not kept."""

    def __init__(self):
        super().__init__(Member("", 0, None, False, False), lambda *a: None, None, [])

    def write(self, s) -> int:
        return len(s)

    def close(self) -> None:
        pass


class _SinkFactory(WriterFactory):
    """Maps the names py7zr hands to ``create`` (sanitised member names) back to members."""

    def __init__(self, members: dict[str, Member], deliver: Deliver, on_bytes):
        self.by_output_name = {get_sanitized_output_path(name, None).as_posix(): m for name, m in members.items()}
        self.deliver, self.on_bytes = deliver, on_bytes
        self.raised: list[BaseException] = []  # exceptions deliver raised, in any sink

    def create(self, filename: str) -> Py7zIO:
        member = self.by_output_name.pop(filename, None)
        if member is None:
            return _Discard()
        return _MemberSink(member, self.deliver, self.on_bytes, self.raised)


def stream_members(path: str | Path, wanted: Callable[[Member], bool], deliver: Deliver,
                   on_bytes: Callable[[int], None] | None = None) -> None:
    """:func:`.archive.stream_members` with py7zr."""
    with open_archive(path) as archive:
        members = {}
        for info in archive.list():
            m = _member(info)
            if not m.is_dir and m.unsafe_reason() is None and wanted(m):
                members[m.name] = m
        if not members:
            return
        # py7zr raises at the first member whose CRC differs and so ends the whole stream, though
        # the stream itself is intact; the sinks check CRCs instead (from the listing above), so
        # one damaged member costs one sample.
        for entry in archive.files:
            entry._file_info["digest"] = None
        factory = _SinkFactory(members, deliver, on_bytes)
        try:
            archive.extract(targets=list(members), factory=factory)
        except Exception as exc:  # CrcError, lzma.LZMAError, EOFError, Bad7zFile, ... from a damaged archive
            if factory.raised:  # the receiver's own error, not the archive's
                raise factory.raised[0] from None
            if isinstance(exc, py7zr.exceptions.CrcError):
                raise ArchiveError(f"{path}: CRC error in the archive stream ({exc})") from None
            raise ArchiveError(f"{path}: archive is damaged or truncated ({type(exc).__name__}: {exc})") from None
        if factory.raised:  # raised on one of py7zr's threads, which keeps it to itself
            raise factory.raised[0]
