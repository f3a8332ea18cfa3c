"""The line between a user's problem and a bug.

Every error the project raises for something the user can fix (their options, input files,
data, store, run folder, or the machine's disk) is an :class:`HpaError`: the CLI shows its one
line. An operating-system error it can explain (no space, no permission, no such file) is one
line too. Anything else is a bug in the project: the CLI shows its traceback and asks for a
report, so a bug never hides behind a message that looks like the user's mistake.
"""
from __future__ import annotations

import errno


#: the exit statuses of every command (README, "Exit statuses"): one table, read by the CLI
EXIT_OK = 0
EXIT_ERROR = 1  # an error one line explains (or a bug, with its traceback)
EXIT_USAGE = 2  # options that cannot work together, or a value Click refuses
EXIT_SOME_FAILED = 3  # some samples failed; the rest are written, and a rerun retries the failed ones
EXIT_DIVERGED = 4  # training stopped: the loss is not finite; the last good checkpoint is kept
EXIT_INTERRUPTED = 130  # Ctrl-C (SIGINT); what is finished is kept
EXIT_TERMINATED = 143  # SIGTERM, handled as Ctrl-C


class HpaError(Exception):
    """A problem of the input, the options, the data or the machine that one line explains.

    ``exit_code``: the status the CLI exits with; ``hint``: what to do, appended to the line
    (a class's hint for all its errors, or one given with the error); ``label``: the word the
    CLI puts before the line.
    """

    exit_code = EXIT_ERROR
    hint = ""
    label = "Error"

    def __init__(self, message: str = "", hint: str | None = None):
        super().__init__(message)
        if hint is not None:
            self.hint = hint

    def line(self) -> str:
        """The one line the CLI shows: the message, then the hint."""
        return f"{self}; {self.hint}" if self.hint else str(self)


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
        line += "; " + DiskFull.hint
    return line


class DiskFull(HpaError, OSError):
    """The disk filled up (or is too small for what is still to write); what was written is whole."""

    hint = ("every file already written is kept whole (each is written under a temporary name, then renamed): "
            "free space and run the same command again to go on")


class OptionError(HpaError, ValueError):
    """An option value, or a combination of them, that cannot work (``--crop`` above ``--level``,
    no ``--out``): a usage error, so it exits as Click's own do."""

    exit_code = EXIT_USAGE


def sendable(exc: HpaError) -> HpaError | str:
    """``exc`` if it crosses a process boundary intact, else its traceback as text: a worker
    hands the user's error itself to the process that shows it (a queue drops what it cannot
    pickle, in its feeder thread, and the answer would never come)."""
    import pickle
    import traceback

    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        return "".join(traceback.format_exception(exc))
