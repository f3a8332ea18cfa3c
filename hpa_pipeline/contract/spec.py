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


class StoreError(HpaError, ValueError):
    """A store that does not match what was asked (another size, other ids) or is not a store."""


@dataclass(frozen=True)
class StoreSpec:
    """How the images are laid out. The defaults come from ``benchmarks/bench_store.py``."""

    size: int = 1024
    levels: int = 3
    dtype: str = "uint8"
    chunk: int = 256
    codec: str = "zstd"
    clevel: int = 1

    def __post_init__(self):
        if self.size < 1 or self.levels < 1:
            raise OptionError(f"--size must be a positive number of pixels and --levels at least 1 "
                             f"(e.g. --size 1024 --levels 3: 1024, 512, 256); got --size {self.size} "
                             f"--levels {self.levels}")
        level_sizes(self.size, self.levels)  # raises on sizes that do not halve
        if self.chunk < 1:
            raise OptionError(f"--chunk must be a positive number of pixels (e.g. 256), got {self.chunk}")
        for s in self.sizes:
            if self.chunk < s and s % self.chunk:
                raise OptionError(f"--chunk {self.chunk} does not divide level {s} (levels {self.sizes}); "
                                 f"use a power of two such as 256")
        if not 0 <= self.clevel <= 9:
            raise OptionError(f"--clevel must be 0-9 (Blosc's levels), got {self.clevel}")
        if self.dtype not in ("uint8", "uint16"):
            raise OptionError(f"dtype must be uint8 or uint16, not {self.dtype!r}")
        if self.codec not in ("zstd", "lz4", "none"):
            raise OptionError(f"codec must be zstd, lz4 or none, not {self.codec!r}")

    @property
    def sizes(self) -> list[int]:
        return level_sizes(self.size, self.levels)

    def compressors(self, chunk_bytes: int):
        """The inner chunks' codecs: Blosc with one block per chunk (``blocksize=chunk_bytes``),
        then each chunk's CRC32C.

        Why one block: Blosc's own choice for level 1 is a few tens of KiB, and its zstd
        starts afresh on each block. Whole-chunk blocks give the same size with zstd faster to
        write and to read, on 256² and 512² chunks of real HPA images, 8- and 16-bit
        (benchmarks/bench_store.py; Blosc's threads, which smaller blocks would feed, are off here: the
        parallelism is the samples).
        """
        from zarr.codecs import BloscCodec, Crc32cCodec  # here, not at the top: see the module's docstring

        # every chunk ends in its CRC32C, so that any Zarr v3 reader finds damage at rest
        checksum = Crc32cCodec()
        if self.codec == "none":
            return [checksum]
        return [BloscCodec(cname=self.codec, clevel=self.clevel, shuffle="noshuffle", blocksize=chunk_bytes), checksum]
