"""The one Dask task of preprocessing: a whole sample, from four TIFFs to every level in the store.

A task never raises for bad input: it returns a :class:`SampleResult` with the reason, so one
unreadable file costs one sample, not the run. It writes only its own sample's shards; the
coordinator marks it done after reading the result.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numcodecs.blosc
import numpy as np

from .imaging import ImageError, channel_sums, make_levels, read_image
from ..contract.store import write_levels


@dataclass
class SampleJob:
    """Where one sample's TIFFs are (paths, or bytes already read from an archive) and where it goes."""

    index: int
    sample_id: str
    sources: dict[str, bytes | bytearray | str | Path]  # filter -> image file (path, or its bytes)
    store: str
    size: int
    levels: int
    dtype: str = "uint8"
    names: dict[str, str] = field(default_factory=dict)  # filter -> file or member name (format, messages)
    upscale: bool = False  # sources smaller than size are interpolated up instead of failing


@dataclass
class SampleResult:
    index: int
    sample_id: str
    error: str | None = None
    source_shape: tuple[int, int] = (0, 0)
    source_bits: int = 0
    sums: np.ndarray | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def one_core_per_task() -> None:
    """OpenCV and Blosc run on the calling thread only.

    Why: both start their own thread pools by default (Blosc only when called from the main
    thread, which is where ``--workers 1`` runs the samples). The parallelism of a build is
    its tasks, and in ``ingest`` the decoder needs the other cores: pools inside a task only
    add thread hand-offs and spinning that take CPU from 7zz (measured on 2 cores: see the
    README's ``decoders`` row).
    """
    cv2.setNumThreads(0)
    numcodecs.blosc.use_threads = False


#: glibc's ``mallopt`` parameters, and the largest mmap threshold it accepts on 64-bit
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX = -1, -3, 32 << 20


@functools.cache
def keep_freed_buffers() -> bool:
    """Let glibc's malloc keep freed blocks of up to 32 MiB for the next sample instead of
    giving them back to the system; False where the C library is not glibc (nothing changes).

    Why: a sample's members (9-38 MB each) and level arrays are allocated and freed again for
    every sample. glibc maps blocks above its threshold afresh and returns freed heap beyond
    twice that, so each sample's tens of MB page-faulted in again, the kernel zeroing every
    page: 70,000 page faults in an ``ingest`` of 16 3072² samples, 58,000 with this, and
    about 6 ms less CPU a sample (2 cores). Page faults also serialise the threads of one
    process on its memory map, which costs more with many worker threads. Memory stays
    bounded by what is in flight: a freed block is reused, not added to.
    """
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        libc.gnu_get_libc_version  # glibc's alone: other C libraries number mallopt's parameters otherwise
    except (OSError, AttributeError):
        return False
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX) and libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30))


def process_sample(job: SampleJob) -> SampleResult:
    """Read, check, downsample and write one sample; failures come back as a result."""
    one_core_per_task()
    keep_freed_buffers()
    try:
        channels = {f: read_image(src, job.names.get(f) or (f if isinstance(src, (bytes, bytearray)) else str(src)), f)
                    for f, src in job.sources.items()}
        levels = make_levels(channels, job.size, job.levels, job.dtype, sample_id=job.sample_id,
                             upscale=job.upscale)
        del channels
        write_levels(job.store, job.index, levels.levels)
        return SampleResult(job.index, job.sample_id, None, levels.source_shape, levels.source_bits,
                            channel_sums(levels.levels))
    except ImageError as exc:
        message = str(exc)
        if not message.startswith(job.sample_id):
            message = f"{job.sample_id}: {message}"
        return SampleResult(job.index, job.sample_id, message)
    except Exception as exc:  # a bug or a store failure: still one sample, with its cause
        return SampleResult(job.index, job.sample_id, f"{job.sample_id}: {type(exc).__name__}: {exc}")
