"""One writer at a time: a lock per store, per run folder and per extract target.

Readers and writers, and what they lock::

    ingest, build-zarr, verify --repair   the store, exclusive
    train                                 its run folder, exclusive; --store and --external, shared
    predict, verify                       the store, shared
    extract                               the target folder, exclusive

A writing command (ingest, build-zarr, verify --repair, train, extract) holds an exclusive
lock for its whole life; a reading command (train and predict on a store, verify) holds a
shared one, so it never reads a store that a writer is changing, and a writer never starts
under a reader. The second command fails at once with one line naming the holder (pid, host,
command, since when).

Why ``fcntl.flock`` (the standard library) and not a lock file's existence: the kernel drops
the lock when its holder exits in any way, SIGKILL included, so a lock left by a killed
command is free at once and is simply taken over; there is no staleness to guess from ages
or pids. The lock file records its holder while held and is emptied on release; a file that
still names a holder when its lock is free was left by a killed command (``stale``).

Local folders only: a store behind a URL has no lock (object stores have no flock; the
documentation says so). On a network file system, flock is as good as that system's locking.
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import HpaError
from .locations import is_url

LOCK_NAME = ".hpa-lock"


class Busy(HpaError):
    """Another command holds the lock of the folder this one would use."""


def store_lock_path(store: str | Path) -> Path:
    """The lock of a local store or run folder: a hidden file beside it (the folder itself may
    not exist yet, or be removed and made again by a first run), of its real path, so that two
    names of one folder (a symlink) share one lock."""
    real = Path(os.path.realpath(store))
    return real.with_name(f".{real.name}{LOCK_NAME}")


def folder_lock_path(folder: str | Path) -> Path:
    """The lock of a run folder or an extract target: a hidden file inside it."""
    return Path(os.path.realpath(folder)) / LOCK_NAME


@contextmanager
def locked(lock_path: Path, what: str, shared: bool = False) -> Iterator[dict | None]:
    """Hold the lock at ``lock_path`` for the block; yields the stale holder it took over (the
    record a killed command left), or None. Raises :class:`Busy` naming the holder."""
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    except PermissionError:
        if shared:  # a store on read-only media or someone else's: reading it needs no lock file
            yield None
            return
        raise
    try:
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            raise Busy(f"{what} is in use by {describe_holder(_read_holder(fd))}; wait for it to finish, or stop "
                       f"it (a killed command's lock is taken over at once)") from None
        stale = None if shared else _read_holder(fd)
        if not shared:
            _write_holder(fd)
        try:
            yield stale
        finally:
            if not shared:
                os.ftruncate(fd, 0)  # released cleanly: no holder recorded
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def store_locked(store: str | Path, shared: bool = False, what: str = "store"):
    """:func:`locked` for a store (or a run folder, ``what``); a store behind a URL gets no lock
    (see the module's docstring)."""
    if is_url(store):
        return _nothing()
    lock = store_lock_path(store)
    if not shared:
        try:
            lock.parent.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError) as exc:  # a file where a folder must be
            raise HpaError(f"{store}: cannot write a {what} there ({exc.strerror}); choose another --out") from None
    elif not lock.parent.is_dir():  # no folder to hold the store: opening it will say so
        return _nothing()
    return locked(lock, f"{what} {store}", shared)


def writes_store(fn):
    """Decorate a function whose ``out`` argument is the store it writes: it runs holding the
    store's exclusive lock (``ingest``, ``build_zarr``)."""
    import functools
    import inspect

    signature = inspect.signature(fn)

    @functools.wraps(fn)
    def holding_the_lock(*args, **kwargs):
        out = signature.bind(*args, **kwargs).arguments["out"]
        with store_locked(out):
            return fn(*args, **kwargs)
    return holding_the_lock


def folder_locked(folder: str | Path, what: str):
    """:func:`locked` for a run folder or an extract target, creating the folder."""
    Path(folder).mkdir(parents=True, exist_ok=True)
    return locked(folder_lock_path(folder), f"{what} {folder}")


@contextmanager
def _nothing() -> Iterator[None]:
    yield None


def _holder() -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(), "command": " ".join(["hpa-pipe", *sys.argv[1:]]),
            "since": time.strftime("%Y-%m-%d %H:%M:%S %Z")}


def _write_holder(fd: int) -> None:
    data = json.dumps(_holder()).encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)


def _read_holder(fd: int) -> dict | None:
    data = os.pread(fd, 4096, 0)
    try:
        return json.loads(data) if data.strip() else None
    except ValueError:
        return None


def describe_holder(holder: dict | None) -> str:
    """``pid 123 on host (hpa-pipe ingest ...) since ...``; readers record no holder."""
    if not holder:
        return "another command (a reader such as train or predict, or one that records no holder)"
    return f"pid {holder.get('pid')} on {holder.get('host')} ({holder.get('command')}) since {holder.get('since')}"
