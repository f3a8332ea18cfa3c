"""Files written whole or not at all: a temporary name next to the target, then a rename.

A killed process leaves either the old file or the new one (and perhaps a ``*.partial`` that the
next run removes), never half of one. No fsync: this guards against crashes of the process,
which is what resuming needs, not against power loss.
"""
from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

SUFFIX = ".partial"


@contextmanager
def replacing(path: str | Path, unique: bool = True) -> Iterator[Path]:
    """Yield a temporary path to write; it replaces ``path`` when the block ends without error.

    The temporary name is unique (``unique=False``: ``<name>.partial``), for files that two
    processes may write at once (a task retried after its worker was lost while the first
    attempt still runs): the last rename wins, and neither sees the other's half-written file.
    """
    path = Path(path)
    tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex}{SUFFIX}" if unique else path.name + SUFFIX)
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as error:
        tmp.unlink(missing_ok=True)
        if error.filename != str(tmp):
            raise
        # the user asked for ``path``; the temporary name would only puzzle them
        raise type(error)(error.errno, error.strerror, str(path)) from error
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def replacing_folder(path: str | Path) -> Iterator[Path]:
    """Yield a new empty folder beside ``path`` to fill; it takes ``path``'s place whole when the
    block ends without error (the earlier folder, if any, is then removed), and is removed on
    any failure, leaving the earlier folder as it was. Hold the target's writer lock around it:
    leftovers of a killed earlier attempt (``.<name>.*.partial``) are removed first.

    Nothing is written through an existing folder's files or links: the new folder is built
    apart, then exchanged with the old one in one step (Linux ``renameat2(RENAME_EXCHANGE)``;
    two renames elsewhere).
    """
    import shutil

    path = Path(path)
    for leftover in path.parent.glob(f".{path.name}.*{SUFFIX}"):
        shutil.rmtree(leftover, ignore_errors=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}{SUFFIX}")
    tmp.mkdir()
    try:
        yield tmp
        if os.path.lexists(path):
            _exchange(tmp, path)
        else:
            os.rename(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # the new folder on failure; the old one once exchanged


def _exchange(new: Path, old: Path) -> None:
    """Swap ``new`` and ``old`` atomically where the system can, else with two renames."""
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.renameat2(-100, os.fsencode(new), -100, os.fsencode(old), 2) == 0:  # AT_FDCWD, RENAME_EXCHANGE
            return
    except (AttributeError, OSError):
        pass
    aside = old.with_name(f".{old.name}.{uuid.uuid4().hex}{SUFFIX}")
    os.rename(old, aside)
    os.rename(new, old)
    os.rename(aside, new)


def write_bytes(path: str | Path, data, unique: bool = True) -> None:
    with replacing(path, unique) as tmp:
        tmp.write_bytes(data)


def write_json(path: str | Path, obj) -> None:
    with replacing(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=1))


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during a long command, with a one-line summary of what was saved; the CLI prints
    it and exits with status 130."""
