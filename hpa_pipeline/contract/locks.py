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

Where the locks live, and why there. A writer's lock is a hidden file beside its target,
``.<name>.hpa-lock`` (the target may not exist yet, or be removed and made again by a first
run; nothing is added inside a store or an extract target, so no later step counts it as an
input file); it is removed again when the target was never made. A writer also locks the
target folder itself. A reader locks only the target folder, shared, through a read-only
handle, and reads the writer's file where there is one: it writes nothing, so stores, run
folders and packages on a read-only mount or in another user's folder are read as they are.

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
from collections.abc import Callable, Iterator
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


@contextmanager
def locked(lock_path: Path, what: str, shared: bool = False) -> Iterator[dict | None]:
    """Hold the lock at ``lock_path`` for the block; yields the stale holder it took over (the
    record a killed command left), or None. Raises :class:`Busy` naming the holder."""
    fd = _open_lock_file(lock_path, what, shared)
    try:
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


def _open_lock_file(lock_path: Path, what: str, shared: bool) -> int:
    """The lock file, open and flocked. A writer removes its file when the target was never
    made, so a lock taken on a file that was removed meanwhile is taken again on the new one."""
    while True:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise _busy(what, holder) from None
        except BaseException:
            os.close(fd)
            raise
        try:
            if os.fstat(fd).st_ino == os.stat(lock_path).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)


def store_locked(store: str | Path, shared: bool = False, what: str = "store"):
    """A reader's or a writer's lock of a store, run folder or extract target (``what``); a
    store behind a URL gets no lock (see the module's docstring)."""
    if is_url(store):
        return _nothing()
    if shared:
        return _reading(Path(store), f"{what} {store}")
    lock = store_lock_path(store)
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as exc:  # a file where a folder must be
        raise HpaError(f"{store}: cannot write a {what} there ({exc.strerror}); choose another --out") from None
    return _writing(Path(store), lock, f"{what} {store}")


@contextmanager
def _writing(target: Path, lock: Path, what: str) -> Iterator[dict | None]:
    """The writer's file lock beside ``target``, then ``target`` itself where it exists (so a
    reader, which locks only the folder, keeps a writer out); the file goes if no target was made."""
    with locked(lock, what) as stale:
        with _folder_flock(target, what, shared=False, holder=lambda: None):
            try:
                yield stale
            finally:
                if not target.exists():
                    lock.unlink(missing_ok=True)


@contextmanager
def _reading(target: Path, what: str) -> Iterator[None]:
    """A reader's shared lock on the folder itself (read-only handle) and on the writer's file
    if there is one: nothing is created or written."""
    lock = store_lock_path(target)
    with _folder_flock(target, what, shared=True, holder=lambda: _writer_of(lock)[1]):
        held, holder = _writer_of(lock)
        if held:  # a writer that began before the folder existed
            raise _busy(what, holder)
        yield None


@contextmanager
def _folder_flock(target: Path, what: str, shared: bool, holder: Callable[[], dict | None]) -> Iterator[None]:
    """flock on the folder ``target`` (nothing when it does not exist, or where the file system
    cannot lock a folder: a network file system without it); ``holder()`` names who has it."""
    try:
        fd = os.open(target, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        yield None  # not there (opening it will say so), or not a folder
        return
    try:
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            raise _busy(what, holder()) from None
        except OSError:
            yield None
            return
        try:
            yield None
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _busy(what: str, holder: dict | None) -> Busy:
    return Busy(f"{what} is in use by {describe_holder(holder)}; wait for it to finish, or stop it (a killed "
                f"command's lock is taken over at once)")


def _writer_of(lock: Path) -> tuple[bool, dict | None]:
    """Whether a writer holds the lock file (tried through a read-only handle), and its record."""
    try:
        fd = os.open(lock, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False, None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True, _read_holder(fd)
        except OSError:
            return False, None
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False, None
    finally:
        os.close(fd)


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
