"""What an archive is made of, as every reader of one describes it: its members, its volumes,
and the error for an archive that cannot be used.

Apart from :mod:`.archive` (which picks a reader) so that the readers (:mod:`.sevenzip`,
:mod:`.py7zr_reader`) and :mod:`.completeness` use these without importing the module that
imports them.
"""
from __future__ import annotations

import posixpath
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..contract.errors import HpaError
from ..contract.labels import MEMBER_NAME


class ArchiveError(HpaError, RuntimeError):
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
        if self.size > MAX_MEMBER_BYTES:
            return (f"declares {self.size / 2**30:.1f} GiB unpacked, over the limit of {MAX_MEMBER_BYTES / 2**30:.0f} "
                    f"GiB per image (a real HPA channel is under 20 MB; a member this large would exhaust memory)")
        return None


#: the most an archive member may unpack to; each is held in memory while its sample is processed
MAX_MEMBER_BYTES = 1 << 30

VOLUME_SUFFIX = re.compile(r"\.(\d{3,4})$")


def volume_paths(path: str | Path) -> list[Path]:
    """The files of an archive: ``x.7z`` alone, or ``x.7z.001``, ``x.7z.002``, ... in order.

    ``path`` may name the archive (``x.7z``) or its first volume. 7-Zip numbers volumes with
    three digits, py7zr's multivolumefile with four; both are found.
    """
    path = Path(path)
    if path.is_dir():  # 7zz would read it as a wildcard and name every file in it
        raise ArchiveError(f"{path} is a folder, not an archive; for a folder of <id>_<filter> images use "
                           f"build-zarr --src {path}")
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


#: ``deliver(member, data, error)``: data is the member's bytes (``bytes`` or a ``bytearray`` the
#: receiver may keep; CRC checked) or ``None`` with an error message.
Deliver = Callable[[Member, "bytes | None", "str | None"], None]
