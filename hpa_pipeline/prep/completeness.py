"""Is an archive whole? The question to ask when it cannot be opened.

A 189 GB download that stopped early, or a volume left behind, is the most common reason an
archive does not open, and the decoders' own words for it ("Unexpected end of archive",
"File is not a zip file") do not say so. Both formats answer it from a few bytes:

- 7z: the 32-byte start header gives the offset and size of the header at the end of the
  archive, so ``32 + offset + size`` is the size of the whole archive (of all its volumes
  together). A header of zeros is one 7-Zip has not written yet (it writes it last).
- zip: the end-of-central-directory record (``PK\\x05\\x06``) ends every whole zip file; a
  file that starts like a zip (``PK\\x03\\x04``) and lacks it was cut short.

Volumes ``x.7z.001, .002, ...`` are normally of one size but the last: when they add up short,
a gap in the numbers or a full-sized last volume means a volume is missing, a smaller last
one that it was cut short.
"""
from __future__ import annotations

import struct
from pathlib import Path

from .members import VOLUME_SUFFIX, ArchiveError, volume_paths

SEVEN_Z_SIGNATURE = b"7z\xbc\xaf\x27\x1c"
ZIP_LOCAL_HEADER = b"PK\x03\x04"
ZIP_END_RECORD = b"PK\x05\x06"
#: the end record and the longest comment a zip may carry after it
ZIP_TAIL = 22 + 65535
HINT = "an interrupted download or copy? Fetch it again, or finish the download"


def why_incomplete(volumes: list[Path]) -> str | None:
    """One line naming what is missing from the archive made of ``volumes``, or None when it
    looks whole (or is not a 7z or zip file at all)."""
    first = volumes[0]
    try:
        with first.open("rb") as f:
            head = f.read(32)
        sizes = [v.stat().st_size for v in volumes]
    except OSError:
        return None
    if head[:6] == SEVEN_Z_SIGNATURE and len(head) == 32:
        return _seven_z(volumes, sizes, head)
    if head[:4] == ZIP_LOCAL_HEADER and len(volumes) == 1 and not _has_zip_end(first, sizes[0]):
        return f"{first} looks incomplete: a zip file without its end record ({HINT})"
    if len(head) < 32 and head[:2] in (SEVEN_Z_SIGNATURE[:2], ZIP_LOCAL_HEADER[:2]):
        return f"{first} looks incomplete: only {sizes[0]} bytes ({HINT})"
    return None


def _seven_z(volumes: list[Path], sizes: list[int], head: bytes) -> str | None:
    offset, length = struct.unpack("<QQ", head[12:28])
    if offset == 0 and length == 0:
        return (f"{volumes[0]} looks incomplete: its header was never written (7-Zip writes it last; was the "
                f"archive still being written?)")
    needed, have = 32 + offset + length, sum(sizes)
    if have >= needed:
        return None
    short = f"{have:,} of the {needed:,} bytes its header needs"
    if len(volumes) == 1 and not _is_volume(volumes[0]):
        return f"{volumes[0]} looks incomplete: {short} ({HINT})"
    missing = _next_volume(volumes[-1])
    if len(volumes) > 1 and sizes[-1] < sizes[0] and not missing.exists():
        return f"{volumes[-1]} looks incomplete: {short}, and it is smaller than the volumes before it ({HINT})"
    return f"volume {missing} is missing: {', '.join(v.name for v in volumes)} hold {short}"


def _has_zip_end(path: Path, size: int) -> bool:
    with path.open("rb") as f:
        f.seek(max(0, size - ZIP_TAIL))
        return ZIP_END_RECORD in f.read()


def _is_volume(path: Path) -> bool:
    return VOLUME_SUFFIX.search(path.name) is not None


def _next_volume(path: Path) -> Path:
    digits = path.suffix[1:]
    return path.with_suffix(f".{int(digits) + 1:0{len(digits)}d}")


def unreadable(path: str | Path, kind: str, detail: str) -> ArchiveError:
    """The error for an archive that does not open: what is missing when it looks incomplete
    (a download cut short, a volume left behind), else the decoder's own words."""
    try:
        incomplete = why_incomplete(volume_paths(path))
    except ArchiveError:
        incomplete = None
    return ArchiveError(incomplete or f"{path}: not a readable {kind} archive ({detail})")
