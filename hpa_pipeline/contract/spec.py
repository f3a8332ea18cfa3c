"""What a dataset store is asked to be: its sizes, levels and codec (:class:`StoreSpec`).

Apart from :mod:`.store` so that it imports without zarr: the command line checks its options,
and ``ingest`` starts decoding an archive, before zarr's import (about 0.2 s) is paid.
"""
from __future__ import annotations

from dataclasses import dataclass
from .errors import HpaError, OptionError


def level_sizes(size: int, levels: int) -> list[int]:
    """``[size, size/2, ...]``, ``levels`` long; each must stay an integer."""
    sizes = [size >> k for k in range(levels)]
    if levels < 1 or any(s << k != size for k, s in enumerate(sizes)) or sizes[-1] < 1:
        raise OptionError(f"--size {size} cannot be halved {levels - 1} times into whole pixels; use a size "
                         f"divisible by {2 ** (levels - 1)} (e.g. 1024) or fewer --levels")
    return sizes


#: the pixel types a store holds (the source's 16 bits on request)
DTYPES = ("uint8", "uint16")
#: the inner chunks' compressors (each followed by the chunk's CRC32C): zarr v3's own zstd (the
#: default: plain zstd frames, which nvCOMP decodes on a GPU), zstd or lz4 in Blosc's container,
#: or none
CODECS = ("zstd", "blosc-zstd", "lz4", "none")
DEFAULT_CODEC = "zstd"
#: the fields of :class:`StoreSpec`, which are also build-zarr's and ingest's layout options (--size ...)
LAYOUT_FIELDS = ("size", "levels", "dtype", "chunk", "codec", "clevel")

#: the most levels a store gets when --levels is not given
MOST_DEFAULT_LEVELS = 3


def default_levels(size: int, chunk: int) -> int:
    """As many levels as halve ``size`` exactly and stay at least one ``chunk``, at most
    :data:`MOST_DEFAULT_LEVELS`; one when ``size`` itself is below a chunk."""
    levels = 1
    while levels < MOST_DEFAULT_LEVELS and size % (2 << (levels - 1)) == 0 and size >> levels >= chunk:
        levels += 1
    return levels


def fits_chunks(size: int, levels: int, chunk: int) -> bool:
    """Every level of ``size`` halved ``levels - 1`` times is whole ``chunk``² chunks (the top
    level may be one chunk smaller than ``chunk``)."""
    if size % (1 << (levels - 1)):
        return False
    sizes = [size >> k for k in range(levels)]
    return (sizes[0] < chunk and levels == 1) or all(s >= chunk and s % chunk == 0 for s in sizes)


def check_chunking(size: int, levels: int, chunk: int, new_store: bool = True) -> None:
    """Refuse a ``chunk`` that does not divide every level larger than it, and for a
    ``new_store`` also ``levels`` that shrink one below a chunk, with the options that would work."""
    if fits_chunks(size, levels, chunk):
        return
    sizes = level_sizes(size, levels)
    shown = ", ".join(map(str, sizes))
    bad = [s for s in sizes if s > chunk and s % chunk]
    if not bad and not new_store:
        return
    if not bad:  # every level is whole chunks but the lowest ones, which are smaller than one
        fewer = max(n for n in range(1, levels) if fits_chunks(size, n, chunk))
        small = next(s for s in sizes[1:] if s < chunk)
        fits = f", or --chunk {sizes[-1]}" if fits_chunks(size, levels, sizes[-1]) else ""
        raise OptionError(f"--levels {levels} makes level {small} smaller than one --chunk {chunk} chunk "
                          f"(levels {shown}); use --levels {fewer}{fits}")
    sizes_that_fit = [n for n in (_nearest_size(size, levels, chunk, -1), _nearest_size(size, levels, chunk, 1)) if n]
    chunks = [c for c in range(chunk - 1, 0, -1) if fits_chunks(size, levels, c)][:1]
    fixes = ([f"--size {' or '.join(map(str, sizes_that_fit))}"] if sizes_that_fit else []) + \
        [f"--chunk {c}" for c in chunks]
    raise OptionError(f"--chunk {chunk} does not divide level {bad[0]} (levels {shown}); use "
                      f"{', or '.join(fixes)}")


def _nearest_size(size: int, levels: int, chunk: int, step: int) -> int | None:
    """The first size from ``size`` in direction ``step`` whose levels ``chunk`` fits."""
    n = size + step
    while 0 < n <= 4 * size + chunk * (1 << levels):
        if fits_chunks(n, levels, chunk):
            return n
        n += step
    return None


class StoreError(HpaError, ValueError):
    """A store that does not match what was asked (another size, other ids) or is not a store."""


@dataclass(frozen=True)
class StoreSpec:
    """How the images are laid out. The defaults come from ``benchmarks/bench_store.py``.

    Every level of a new store is split into whole ``chunk``² chunks, so that a consumer may
    rely on one chunk shape: :meth:`check_new` refuses a level below one chunk, except a top
    level (``size``) smaller than the chunk, which is one chunk. ``levels=None`` takes as many
    as keep that, at most :data:`MOST_DEFAULT_LEVELS` (1024 with 256² chunks: 1024, 512, 256).
    Stores made before that rule (a lowest level smaller than a chunk, stored as one chunk of
    its size) are still described, read and resumed.
    """

    size: int = 1024
    levels: int | None = None
    dtype: str = "uint8"
    chunk: int = 256
    codec: str | None = DEFAULT_CODEC  # None: an existing store's own, the default for a new one
    clevel: int = 1

    def __post_init__(self):
        if self.chunk < 1:
            raise OptionError(f"--chunk must be a positive number of pixels (e.g. 256), got {self.chunk}")
        if self.levels is None and self.size >= 1:
            object.__setattr__(self, "levels", default_levels(self.size, self.chunk))
        if self.size < 1 or self.levels < 1:
            raise OptionError(f"--size must be a positive number of pixels and --levels at least 1 "
                             f"(e.g. --size 1024 --levels 3: 1024, 512, 256); got --size {self.size} "
                             f"--levels {self.levels}")
        level_sizes(self.size, self.levels)  # raises on sizes that do not halve
        check_chunking(self.size, self.levels, self.chunk, new_store=False)
        if not 0 <= self.clevel <= 9:
            raise OptionError(f"--clevel must be 0-9, got {self.clevel}")
        if self.dtype not in DTYPES:
            raise OptionError(f"dtype must be one of {', '.join(DTYPES)}, not {self.dtype!r}")
        if self.codec is not None and self.codec not in CODECS:
            raise OptionError(f"codec must be one of {', '.join(CODECS)}, not {self.codec!r}")

    def check_new(self) -> None:
        """Refuse, for a store about to be made, levels that shrink one below a chunk."""
        check_chunking(self.size, self.levels, self.chunk)

    @property
    def sizes(self) -> list[int]:
        return level_sizes(self.size, self.levels)

    def compressors(self, chunk_bytes: int):
        """The inner chunks' codecs: zarr's zstd (``zstd``), or Blosc with one block per chunk
        (``blocksize=chunk_bytes``; ``blosc-zstd``, ``lz4``), then each chunk's CRC32C.

        Why one block: Blosc's own choice for level 1 is a few tens of KiB, and its zstd
        starts afresh on each block. Whole-chunk blocks give the same size with zstd faster to
        write and to read, on 256² and 512² chunks of real HPA images, 8- and 16-bit
        (benchmarks/bench_store.py; Blosc's threads, which smaller blocks would feed, are off here: the
        parallelism is the samples).
        """
        from zarr.codecs import BloscCodec, Crc32cCodec, ZstdCodec  # here, not at the top: see the module's docstring

        # every chunk ends in its CRC32C, so that any Zarr v3 reader finds damage at rest
        checksum = Crc32cCodec()
        if self.codec == "none":
            return [checksum]
        if self.codec in ("zstd", None):  # plain zstd frames: as fast as Blosc's on one-byte data, and GPU-decodable
            return [ZstdCodec(level=self.clevel, checksum=False), checksum]
        cname = "zstd" if self.codec == "blosc-zstd" else self.codec
        return [BloscCodec(cname=cname, clevel=self.clevel, shuffle="noshuffle", blocksize=chunk_bytes), checksum]
