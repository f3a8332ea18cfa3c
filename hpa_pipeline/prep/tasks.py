"""The one Dask task of preprocessing: a whole sample, from four TIFFs to every level in the store.

A task never raises for bad input: it returns a :class:`SampleResult` with the reason, so one
unreadable file costs one sample, not the run. It writes only its own sample's shards; the
coordinator marks it done after reading the result.
"""
from __future__ import annotations

import errno
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .hashing import sample_hashes
from .imaging import ImageError, channel_sums, make_levels, read_image
from .memory import keep_freed_buffers
from ..common.machine import one_thread_per_task
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
    hashes: np.ndarray | None = None  # (4,) uint64 perceptual hash per channel (.hashing)
    disk_full: bool = False  # the store's disk filled up: the run stops (every later sample would fail too)
    exception: str | None = None  # the type of an unexpected failure (a bug, or a store fault): kept in the report

    @property
    def ok(self) -> bool:
        return self.error is None


def process_sample(job: SampleJob) -> SampleResult:
    """Read, check, downsample and write one sample; failures come back as a result."""
    one_thread_per_task()
    keep_freed_buffers()
    try:
        channels = {f: read_image(src, job.names.get(f) or (f if isinstance(src, (bytes, bytearray)) else str(src)), f)
                    for f, src in job.sources.items()}
        levels = make_levels(channels, job.size, job.levels, job.dtype, sample_id=job.sample_id,
                             upscale=job.upscale)
        del channels
        write_levels(job.store, job.index, levels.levels)
        return SampleResult(job.index, job.sample_id, None, levels.source_shape, levels.source_bits,
                            channel_sums(levels.levels), hashes=sample_hashes(levels.levels))
    except ImageError as exc:
        message = str(exc)
        if not message.startswith(job.sample_id):
            message = f"{job.sample_id}: {message}"
        return SampleResult(job.index, job.sample_id, message)
    except OSError as exc:
        full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
        return SampleResult(job.index, job.sample_id, f"{job.sample_id}: {type(exc).__name__}: {exc}", disk_full=full,
                            exception=None if full else type(exc).__name__)
    except Exception as exc:  # a bug or a store failure: still one sample, with its cause and type
        return SampleResult(job.index, job.sample_id, f"{job.sample_id}: {type(exc).__name__}: {exc}",
                            exception=type(exc).__name__)
