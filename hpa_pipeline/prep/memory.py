"""How the preprocessing processes use memory: freed sample buffers kept for the next sample.

Apart from :mod:`.tasks` (OpenCV, tifffile, zarr) so that ``ingest`` can call it before its
decoder thread starts, without those imports.
"""
from __future__ import annotations

import ctypes
import functools


#: glibc's ``mallopt`` parameters, and the largest mmap threshold it accepts on 64-bit
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX = -1, -3, 32 << 20


@functools.cache
def keep_freed_buffers() -> bool:
    """Let glibc's malloc keep freed blocks of up to 32 MiB for the next sample instead of
    giving them back to the system; False where the C library is not glibc (nothing changes).

    Why: a sample's members (9-38 MB each) and level arrays are allocated and freed again for
    every sample. glibc maps blocks above its threshold afresh and returns freed heap beyond
    twice that, so each sample's tens of MB page-faulted in again, the kernel zeroing every
    page (benchmarks/bench_memory.py counts the faults and the CPU with and without). Page faults also serialise the threads of one
    process on its memory map, which costs more with many worker threads. Memory stays
    bounded by what is in flight: a freed block is reused, not added to.
    """
    try:
        libc = ctypes.CDLL(None)  # the process's own symbols, the C library's among them (no ldconfig run)
        libc.gnu_get_libc_version  # glibc's alone: other C libraries number mallopt's parameters otherwise
    except (OSError, AttributeError, TypeError):
        return False
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX) and libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30))
