"""Writing one sample's shard of a local store directly, in the Zarr v3 sharding format.

Why: zarr-python 3.1 spends Python time per inner chunk on a write (its async codec pipeline):
for the 84 chunks of a 1024/512/256 sample, as much as decoding the four full-size TIFFs
(benchmarks/bench_build.py). Each task here writes whole shards that no other writer touches, so the
general read-modify-write machinery is not needed: the inner chunks are Blosc-encoded with
numcodecs (the same library zarr's ``BloscCodec`` calls), laid end to end, followed by the
shard index that the v3 sharding spec defines: ``(offset, nbytes)`` little-endian uint64 pairs
per inner chunk in C order, then the index's CRC32C (``index_codecs = [bytes, crc32c]``,
``index_location = end``, zarr's defaults). The tests read every shard back through zarr.

Remote stores (``s3://`` and other URLs) get the same bytes in one PUT per shard (atomic on
object stores); reads from them, and other layouts, go through zarr itself.
"""
from __future__ import annotations

import os
from functools import lru_cache
from typing import NamedTuple
from pathlib import Path

import google_crc32c
import numpy as np
import zarr
from numcodecs import Blosc

from .atomic import write_bytes
from .locations import is_url, join, put_bytes
from .spec import StoreError


class ShardLayout(NamedTuple):
    """What the direct writer and reader need of a sharded array's metadata."""

    chunk_shape: tuple[int, ...]
    compressor: object | None  # the inner chunks' numcodecs codec (Blosc or Zstd); None: uncompressed
    checksummed: bool  # each inner chunk ends in its CRC32C (zarr's crc32c codec)


def align_up(n: int, to: int) -> int:
    """``n`` rounded up to a multiple of ``to`` (where a chunk starts in a GPU decoder's batch)."""
    return -(-n // to) * to


def _inner_chain(codecs) -> list[str] | None:
    """The inner codec chain as names, checked by class: the bytes codec, then optionally Blosc
    or zstd, then optionally crc32c; None for any other chain (zarr writes and reads those itself)."""
    from zarr.codecs import BloscCodec, BytesCodec, Crc32cCodec, ZstdCodec

    kinds = {BytesCodec: "BytesCodec", BloscCodec: "BloscCodec", ZstdCodec: "ZstdCodec", Crc32cCodec: "Crc32cCodec"}
    names = [next((name for cls, name in kinds.items() if isinstance(c, cls)), None) for c in codecs]
    chains = [["BytesCodec", *compressor, *checksum] for compressor in ([], ["BloscCodec"], ["ZstdCodec"])
              for checksum in ([], ["Crc32cCodec"])]
    return names if names in chains else None


@lru_cache(maxsize=32)
def _layout(store: str, name: str, metadata_version: int) -> ShardLayout | None:
    """Inner chunk shape, compressor and checksum of a sharded array, read once per metadata
    file version; ``None`` for layouts this writer does not produce (zarr writes those itself):
    every assumption the direct path makes is checked here, by class, not taken for granted."""
    from zarr.codecs import BytesCodec, Crc32cCodec, ShardingCodec

    array = zarr.open_array(store, path=name, mode="r")
    sharding = [c for c in array.metadata.codecs if isinstance(c, ShardingCodec)]
    if len(sharding) != 1 or len(array.metadata.codecs) != 1:
        return None
    sharding = sharding[0]
    inner = list(sharding.codecs)
    chain = _inner_chain(inner)
    index = list(sharding.index_codecs)
    if chain is None or len(index) != 2 or not isinstance(index[0], BytesCodec) or not isinstance(index[1], Crc32cCodec):
        return None
    if array.dtype.itemsize > 1 and inner[0].endian is not None and inner[0].endian.value != "little":
        return None
    encoding = array.metadata.chunk_key_encoding
    if getattr(encoding, "name", "default") != "default" or getattr(encoding, "separator", "/") != "/":
        return None  # shard_key builds default "/"-separated keys
    if array.fill_value != 0:
        return None  # the reader fills empty chunks with 0
    if sharding.index_location.value != "end" or tuple(array.shards[1:]) != tuple(array.shape[1:]):
        return None
    compressor = None
    if "BloscCodec" in chain:
        c = inner[chain.index("BloscCodec")]
        shuffle = {"noshuffle": Blosc.NOSHUFFLE, "shuffle": Blosc.SHUFFLE, "bitshuffle": Blosc.BITSHUFFLE}
        compressor = Blosc(cname=c.cname.value, clevel=c.clevel, shuffle=shuffle[c.shuffle.value],
                           blocksize=c.blocksize)
    elif "ZstdCodec" in chain:
        from numcodecs import Zstd  # what zarr's ZstdCodec runs: the same frames

        c = inner[chain.index("ZstdCodec")]
        compressor = Zstd(level=c.level, checksum=c.checksum)
    return ShardLayout(tuple(sharding.chunk_shape), compressor, chain[-1] == "Crc32cCodec")


def encode_shard(shard: np.ndarray, chunk_shape: tuple[int, ...], compressor,
                 checksummed: bool = True) -> bytes:
    """The bytes of one complete shard: encoded inner chunks (each followed by its CRC32C when
    ``checksummed``, as zarr's crc32c codec writes it), then the CRC32C-checked index."""
    grid = tuple(s // c for s, c in zip(shard.shape, chunk_shape))
    parts, index, offset = [], np.empty(grid + (2,), dtype="<u8"), 0
    for position in np.ndindex(*grid):
        block = tuple(slice(p * c, (p + 1) * c) for p, c in zip(position, chunk_shape))
        raw = np.ascontiguousarray(shard[block])
        data = compressor.encode(raw) if compressor is not None else raw.tobytes()
        parts.append(data)
        if checksummed:  # a part of its own: the chunk's bytes are joined once, not copied twice
            parts.append(_crc32c_bytes(data))
        nbytes = len(data) + 4 * checksummed
        index[position] = (offset, nbytes)
        offset += nbytes
    index_bytes = index.tobytes()
    parts.append(index_bytes)
    parts.append(_crc32c_bytes(index_bytes))
    return b"".join(parts)


def _crc32c_bytes(data) -> bytes:
    """The 4 little-endian bytes of ``data``'s CRC32C, as zarr's crc32c codec appends them."""
    return google_crc32c.value(bytes(data)).to_bytes(4, "little")


def _metadata_version(store: str, name: str) -> int:
    """Cache key of an array's layout: the local metadata file's mtime; remote ones are read once."""
    return 0 if is_url(store) else Path(store, name, "zarr.json").stat().st_mtime_ns


def shard_key(name: str, index: int, ndim: int) -> str:
    """Key of sample ``index``'s shard in array ``name`` (default v3 chunk key encoding)."""
    return "/".join([name, "c", str(index), *["0"] * (ndim - 1)])


def write_sample_shard(store: str, name: str, index: int, image: np.ndarray) -> None:
    """Write ``image`` as sample ``index`` of the sharded array ``name`` (one shard per sample)."""
    layout = _layout(store, name, _metadata_version(store, name))
    if layout is None:
        zarr.open_array(store, path=name, mode="r+")[index] = image
        return
    data = encode_shard(image[np.newaxis], layout.chunk_shape, layout.compressor, layout.checksummed)
    if is_url(store):
        put_bytes(join(store, shard_key(name, index, image.ndim + 1)), data)
        return
    target = Path(store, shard_key(name, index, image.ndim + 1))
    target.parent.mkdir(parents=True, exist_ok=True)
    write_bytes(target, data, unique=True)  # readers and killed writers never see half a shard


class DamagedShard(StoreError):
    """A written sample's shard that is missing, cut short or fails a check; names the file."""

    @classmethod
    def in_store(cls, message: str, store: str) -> DamagedShard:
        """The error, with what to do about ``store``'s damage as its hint."""
        return cls(message, hint=f"nothing was made from it. `hpa-pipe verify {store}` lists every "
                                 f"damaged sample; `verify --repair` then the same ingest/build-zarr command rebuilds "
                                 f"them")


class ShardReader:
    """Reads regions of one sample from a local sharded level, decoding only the inner chunks
    the region touches: the read-side twin of :func:`write_sample_shard`, for the loader.

    zarr-python reads a 512² crop from 256² chunks at about 240 a second a core; this reads the
    shard's index and the needed chunks with ``os.pread`` and decodes them with numcodecs.
    Arrays in another layout, or behind a URL, are read through zarr.
    """

    def __init__(self, store: str, name: str, ids: list[str] | None = None):
        self.store, self.name, self.ids = str(store), name, ids  # ids: to name samples in messages
        self.array = zarr.open_array(self.store, path=name, mode="r")
        self.shape, self.dtype = self.array.shape, self.array.dtype
        layout = None if is_url(self.store) else _layout(self.store, name, _metadata_version(self.store, name))
        self.layout = layout
        if layout is not None:
            chunk_shape, self.compressor, self.checksummed = layout
            self.chunk = chunk_shape[-1]
            self.grid = tuple(s // c for s, c in zip((1,) + tuple(self.shape[1:]), chunk_shape))
            self.n_chunks = int(np.prod(self.grid))
            # (sample, inner chunk) whose CRC32C this reader has checked: the uncompressed fast path
            # reads only a crop's rows, so a chunk is read whole and checked the first time
            # (compressed chunks are decoded, and so checked, whole every time: nothing to keep)
            self._checked = np.zeros((self.shape[0], self.n_chunks) if self.compressor is None else (0, 0), bool)

    def read(self, index: int, y: int = 0, x: int = 0, h: int | None = None, w: int | None = None,
             out: np.ndarray | None = None) -> np.ndarray:
        """``(C, h, w)`` of sample ``index`` from ``(y, x)``; the whole image by default.

        ``out``: an array of that shape to fill (a slot of a batch), instead of a new one.
        """
        h = self.shape[-2] - y if h is None else h
        w = self.shape[-1] - x if w is None else w
        if out is None:
            out = np.empty((self.shape[1], h, w), self.dtype)
        if self.layout is None:
            out[...] = self.array[index, :, y:y + h, x:x + w]
            return out
        try:
            return self._read_direct(index, y, x, h, w, out)
        except DamagedShard as exc:
            raise DamagedShard.in_store(str(exc), self.store) from None

    def sample(self, index: int) -> str:
        """How messages name sample ``index``: by its id where the reader knows the ids."""
        if self.ids is not None and 0 <= index < len(self.ids):
            return f"sample {self.ids[index]}"
        return f"sample {index}"

    def read_stored_into(self, index: int, chunks: list[tuple[int, int, int]], out: np.ndarray,
                         pos: int, align: int = 1) -> tuple[list[tuple[int, int] | None], int]:
        """The stored bytes of inner chunks ``(channel, row, column)`` of sample ``index``, read
        straight into the uint8 array ``out`` from ``pos`` on (a loader worker's shared batch
        slot: no bytes object per chunk, no copy into the slot), each CRC32C-checked in place:
        what a decoder elsewhere (a GPU) turns into pixels. Each chunk starts at a multiple of
        ``align`` (a GPU decoder reads only from aligned addresses). Returns each chunk's
        ``(start, length)`` in ``out`` without its checksum (None: an empty chunk, the fill
        value) and the position after the last. A chunk that does not fit in ``out`` is damage:
        the slot holds the largest chunk the layout can store. Local stores of this project's
        layout only."""
        if self.layout is None:
            raise ValueError(f"{self.store}/{self.name}: not a layout whose chunks can be read directly")
        try:
            return self._read_stored_into(index, chunks, memoryview(out), pos, align)
        except DamagedShard as exc:
            raise DamagedShard.in_store(str(exc), self.store) from None

    def _read_stored_into(self, index: int, chunks: list[tuple[int, int, int]], view: memoryview,
                          pos: int, align: int) -> tuple[list[tuple[int, int] | None], int]:
        fd, path = self._open_shard(index)
        try:
            table, spans = self._index(fd, path, index), []
            for ch, cy, cx in chunks:
                offset, nbytes = (int(v) for v in table[0, ch, cy, cx])
                if offset == 2**64 - 1:
                    spans.append(None)
                    continue
                pos = align_up(pos, align)
                if pos + nbytes > len(view):
                    raise DamagedShard(f"{path}: {self.sample(index)}: an inner chunk of {nbytes} bytes is larger "
                                       f"than any chunk of this layout")
                if os.preadv(fd, [view[pos:pos + nbytes]], offset) != nbytes:
                    raise DamagedShard(f"{path}: {self.sample(index)}'s shard is cut short")
                length = nbytes - 4 if self.checksummed else nbytes
                if self.checksummed:
                    self._check_crc(path, index, view[pos:pos + length], bytes(view[pos + length:pos + nbytes]))
                spans.append((pos, length))
                pos += nbytes
            return spans, pos
        finally:
            os.close(fd)

    def _open_shard(self, index: int) -> tuple[int, Path]:
        """The open shard file of sample ``index`` and its path; a missing one is damage."""
        path = Path(self.store, shard_key(self.name, index, len(self.shape)))
        try:
            return os.open(path, os.O_RDONLY), path
        except FileNotFoundError:
            raise DamagedShard(f"{path}: {self.sample(index)}'s shard is missing") from None

    def _stored(self, fd: int, path: Path, index: int, offset: int, nbytes: int) -> bytes:
        """One inner chunk's stored bytes, its CRC32C checked and taken off."""
        raw = os.pread(fd, nbytes, offset)
        if self.checksummed:
            raw, crc = raw[:-4], raw[-4:]
            self._check_crc(path, index, raw, crc)
        return raw

    def _check_crc(self, path: Path, index: int, data, crc: bytes) -> None:
        """An inner chunk's bytes against the CRC32C stored after them."""
        if len(crc) != 4 or _crc32c_bytes(data) != crc:
            raise DamagedShard(f"{path}: {self.sample(index)}: an inner chunk fails its CRC32C checksum")

    def _read_direct(self, index: int, y: int, x: int, h: int, w: int, out: np.ndarray) -> np.ndarray:
        """:meth:`read` of the layout this project writes: the index, then only the chunks needed."""
        fd, path = self._open_shard(index)
        try:
            table = self._index(fd, path, index)
            c = self.chunk
            for cy in range(y // c, (y + h - 1) // c + 1):
                for cx in range(x // c, (x + w - 1) // c + 1):
                    ys, xs = slice(max(y, cy * c), min(y + h, (cy + 1) * c)), slice(max(x, cx * c), min(x + w, (cx + 1) * c))
                    for ch in range(self.shape[1]):
                        offset, nbytes = table[0, ch, cy, cx]
                        target = out[ch, ys.start - y:ys.stop - y, xs.start - x:xs.stop - x]
                        if offset == 2**64 - 1:  # an empty chunk: the fill value
                            target[...] = 0
                            continue
                        rows = slice(ys.start - cy * c, ys.stop - cy * c)
                        columns = slice(xs.start - cx * c, xs.stop - cx * c)
                        chunk_id = (ch * self.grid[2] + cy) * self.grid[3] + cx
                        if self.compressor is None and (not self.checksummed or self._checked[index, chunk_id]) \
                                and _read_into(fd, int(offset), c, self.dtype.itemsize, rows, columns, target):
                            continue
                        block = self._chunk(fd, path, index, int(offset), int(nbytes))
                        if self.checksummed and self.compressor is None:  # the fast path may use it now
                            self._checked[index, chunk_id] = True
                        target[...] = block[rows, columns]
        finally:
            os.close(fd)
        return out

    def _index(self, fd: int, path: Path, index: int) -> np.ndarray:
        """The shard's index ``grid + (offset, nbytes)``, its CRC32C checked, every chunk inside the file."""
        size = os.fstat(fd).st_size
        n_index = self.n_chunks * 16
        if size < n_index + 4:
            raise DamagedShard(f"{path}: {self.sample(index)}'s shard is cut short ({size} bytes, smaller than its index)")
        raw = os.pread(fd, n_index + 4, size - n_index - 4)
        if google_crc32c.value(raw[:n_index]) != int.from_bytes(raw[n_index:], "little"):
            raise DamagedShard(f"{path}: {self.sample(index)}'s shard index fails its CRC32C checksum (damaged or cut short)")
        table = np.frombuffer(raw[:n_index], dtype="<u8").reshape(self.grid + (2,))
        written = table[..., 0] != 2**64 - 1
        offsets, lengths, end = table[..., 0][written], table[..., 1][written], np.uint64(size - n_index - 4)
        if np.any(offsets > end) or np.any(lengths > end - np.minimum(offsets, end)):  # no uint64 wrap-around
            raise DamagedShard(f"{path}: {self.sample(index)}'s shard index points past the end of the file")
        return table

    def _chunk(self, fd: int, path: Path, index: int, offset: int, nbytes: int) -> np.ndarray:
        """One decoded ``chunk x chunk`` inner chunk; damage that decoding finds names the file."""
        raw = self._stored(fd, path, index, offset, nbytes)
        expected = self.chunk * self.chunk * self.dtype.itemsize
        try:
            data = self.compressor.decode(raw) if self.compressor is not None else raw
        except (RuntimeError, ValueError) as exc:
            raise DamagedShard(f"{path}: {self.sample(index)}: an inner chunk does not decode ({exc})") from None
        if len(data) != expected:
            raise DamagedShard(f"{path}: {self.sample(index)}: an inner chunk decodes to {len(data)} bytes, not {expected}")
        return np.frombuffer(data, self.dtype).reshape(self.chunk, self.chunk)


_IOV_MAX = os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") and "SC_IOV_MAX" in os.sysconf_names else 1024
_SKIP = bytearray(1 << 16)  # where preadv drops the bytes of columns outside the region


def _read_into(fd: int, offset: int, c: int, itemsize: int, rows: slice, columns: slice, target: np.ndarray) -> bool:
    """Read rows/columns of an uncompressed ``c x c`` chunk straight into ``target`` (one
    ``preadv``: each row's part lands in its place, the columns outside go to a scratch buffer),
    so a crop is copied once, from the file into the batch. False where ``preadv`` cannot
    (no ``os.preadv``, too many rows, a non-contiguous target row): the caller reads the chunk."""
    n_rows = rows.stop - rows.start
    skip = (c - (columns.stop - columns.start)) * itemsize
    if not hasattr(os, "preadv") or 2 * n_rows - 1 > _IOV_MAX or skip > len(_SKIP) or not target.flags.writeable \
            or target.strides[-1] != itemsize:
        return False
    buffers = []
    view = target.view(np.uint8)
    for r in range(n_rows):
        if r and skip:
            buffers.append(memoryview(_SKIP)[:skip])
        buffers.append(view[r])
    start = offset + (rows.start * c + columns.start) * itemsize
    wanted = n_rows * (columns.stop - columns.start) * itemsize + (n_rows - 1) * skip
    return os.preadv(fd, buffers, start) == wanted
