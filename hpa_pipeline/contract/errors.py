"""The line between a user's problem and a bug.

Every error the project raises for something the user can fix (their options, input files,
data, store, run folder, or the machine's disk) is an :class:`HpaError`: the CLI shows its one
line. An operating-system error it can explain (no space, no permission, no such file) is one
line too. Anything else is a bug in the project: the CLI shows its traceback and asks for a
report, so a bug never hides behind a message that looks like the user's mistake.
"""
from __future__ import annotations

import errno


class HpaError(Exception):
    """A problem of the input, the options, the data or the machine that one line explains."""


#: errno -> what it means for the user; the CLI's one line for these OS errors
_EXPLAINED = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EACCES: "permission denied (not writable or readable by this user)",
    errno.EPERM: "operation not permitted for this user",
    errno.EROFS: "the file system is read-only",
    errno.ENOENT: "no such file or folder",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EISDIR: "is a folder, not a file",
}


def explain_os_error(exc: OSError) -> str | None:
    """One line for an OS error the user can act on (naming the file), or None (a bug)."""
    meaning = _EXPLAINED.get(exc.errno)
    if meaning is None:
        return None
    where = exc.filename if exc.filename is not None else ""
    line = f"{where}: {meaning}" if where else meaning
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        line += ("; every file already written is kept whole (each is written under a temporary name, then "
                 "renamed): free space and run the same command again to go on")
    return line


class OptionError(HpaError, ValueError):
    """An option value, or a combination of them, that cannot work (``--crop`` above ``--level``)."""
