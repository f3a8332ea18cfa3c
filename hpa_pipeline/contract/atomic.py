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
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes(path: str | Path, data, unique: bool = True) -> None:
    with replacing(path, unique) as tmp:
        tmp.write_bytes(data)


def write_json(path: str | Path, obj) -> None:
    with replacing(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=1))


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during a long command, with a one-line summary of what was saved; the CLI prints
    it and exits with status 130."""
