"""Crops and whole images decoded where the model runs: on the GPU with nvCOMP, or on the CPU.

A loader worker that decodes every chunk a crop touches needs about three cores per fast GPU
on the default store (``benchmarks/bench_loader.py``). Here the workers only *read*: for each
crop, the stored bytes of the inner chunks it touches (each CRC32C-checked), packed back to
back into one batch (:class:`CompressedBatch`). The training process then decodes them all at
once (:func:`decode_chunks`: nvCOMP's batched zstd on a GPU, numcodecs on the CPU) and cuts the
crops out of the decoded chunks (:func:`assemble_crops`). That last step is one code path on
torch tensors for both decoders, so a batch is bit-identical whichever decoded it; flips,
rotations, jitter and normalisation then run on the device as for every batch (``Normalizer``).
Validation and ``predict`` read whole images the same way (a crop the size of the level).

GPU decoding needs chunks nvCOMP can read: zarr's own ``zstd`` (the default store) or none;
Blosc's container (``blosc-zstd``, ``lz4``) is read on the CPU. :func:`choose_decoder` says
which one ``--decode auto`` takes, and why.
"""
from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

import numpy as np
import torch

from ..contract.errors import OptionError
from ..contract.labels import N_CLASSES
from ..contract.shards import align_up
from .feed import BatchFeed, in_batches
from .names import DECODERS

log = logging.getLogger(__name__)


@dataclass
class CompressedBatch:
    """The stored bytes of a batch's crops, and where each crop lies in its chunks.

    ``data``: every needed chunk's bytes back to back (uint8), ``starts``/``lengths`` each
    chunk's place in it; ``tiles[b, ch, r, c]``: the chunk (an index into those, or -1 for an
    empty chunk, all zeros) at row ``r``, column ``c`` of crop ``b``'s chunk grid in channel
    ``ch``; ``origins[b]``: where the crop starts inside that grid. The labels, sample indices
    and augmentation travel with it, as in every batch.
    """

    data: torch.Tensor
    starts: torch.Tensor
    lengths: torch.Tensor
    tiles: torch.Tensor
    origins: torch.Tensor
    labels: torch.Tensor
    indices: torch.Tensor
    augmentation: torch.Tensor
    chunk: int
    crop: int
    dtype: str

    def pin_memory(self) -> CompressedBatch:
        """Page-locked copies (PyTorch's DataLoader calls this with ``pin_memory=True``)."""
        fields = {k: (v.pin_memory() if isinstance(v, torch.Tensor) else v) for k, v in vars(self).items()}
        return CompressedBatch(**fields)


def grid_rows(crop: int, chunk: int) -> int:
    """Chunk rows (and columns) a crop can touch, wherever it starts."""
    return (crop - 1) // chunk + 2


# Where each stored chunk starts in a slot: nvCOMP's batched decoders read a frame only from an
# address aligned to 8 bytes (zstd), and advise 16; in a shard chunks lie back to back at any offset.
FRAME_ALIGNMENT = 16


def stored_chunk_bound(chunk_bytes: int, codec: str) -> int:
    """The most bytes one inner chunk of ``chunk_bytes`` pixels' bytes can take in a shard, its
    CRC32C included: zstd's own bound (``ZSTD_COMPRESSBOUND``) for the default store."""
    if codec == "none":
        return chunk_bytes + 4
    small = ((128 << 10) - chunk_bytes) >> 11 if chunk_bytes < (128 << 10) else 0
    return chunk_bytes + (chunk_bytes >> 8) + small + 4


class CompressedSlots:
    """A batch slot of stored chunk bytes (the :class:`.feed.BatchFeed` layout for ``--decode
    gpu``): every chunk the batch's crops touch, read by a worker straight into the slot's
    ``data`` (``preadv``, then the CRC32C checked in place), with where each lies (``spans``)
    and the crops' chunk grids (``tiles``, ``origins``); labels, sample indices and
    augmentation as in every batch. A batch is a :class:`CompressedBatch`: its bytes and grids
    on the device, its spans on the host for the decoder's call.
    """

    def __init__(self, dataset, codec: str):
        self.dataset, self.codec = dataset, codec
        reader = dataset.reader()
        self.chunk, self.dtype = reader.chunk, str(reader.dtype)
        self.crop = dataset.item_size  # a crop, or the whole image (validation, predict)
        # a whole image starts at a chunk's corner: its own chunks, not a crop's one more row
        self.rows = -(-self.crop // self.chunk) if self.crop == dataset.level else grid_rows(self.crop, self.chunk)
        bound = stored_chunk_bound(self.chunk * self.chunk * np.dtype(self.dtype).itemsize, codec)
        self.bound = align_up(bound, FRAME_ALIGNMENT)  # each chunk starts aligned

    def shapes(self, batch_size: int) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        chunks = batch_size * 4 * self.rows * self.rows
        return {"data": ((chunks * self.bound,), torch.uint8), "spans": ((chunks, 2), torch.int64),
                "sizes": ((2,), torch.int64), "tiles": ((batch_size, 4, self.rows, self.rows), torch.int64),
                "origins": ((batch_size, 2), torch.int64), "labels": ((batch_size, N_CLASSES), torch.float32),
                "indices": ((batch_size,), torch.int64), "augmentation": ((batch_size, 9), torch.float32)}

    def fill(self, items: list, slot: dict[str, np.ndarray]) -> None:
        """Read ``items``' chunks into the slot (in a loader worker): the same crops and
        augmentation as ``dataset.fill`` draws, as stored bytes."""
        dataset, reader, c = self.dataset, self.dataset.reader(), self.chunk
        slot["tiles"][:len(items)] = -1
        pos = n = 0
        for b, item in enumerate(items):
            epoch, k = item if isinstance(item, tuple) else (dataset.epoch, item)
            index = int(dataset.indices[k])
            y, x, slot["augmentation"][b] = dataset.draw(index, epoch)
            slot["origins"][b] = (y % c, x % c)
            wanted = [(ch, cy, cx) for ch in range(4) for cy in range(y // c, (y + self.crop - 1) // c + 1)
                      for cx in range(x // c, (x + self.crop - 1) // c + 1)]
            spans, pos = reader.read_stored_into(index, wanted, slot["data"], pos, FRAME_ALIGNMENT)
            for (ch, cy, cx), span in zip(wanted, spans):
                if span is not None:
                    slot["tiles"][b, ch, cy - y // c, cx - x // c] = n
                    slot["spans"][n] = span
                    n += 1
            slot["labels"][b], slot["indices"][b] = dataset.labels_of(index), index
        slot["sizes"][:] = (n, pos)

    def parts(self, slot: dict[str, torch.Tensor], count: int) -> dict[str, torch.Tensor]:
        """What goes to the device: the bytes actually read, and the batch's grids and labels."""
        n_bytes = int(slot["sizes"][1])
        return {"data": slot["data"][:n_bytes], **{name: slot[name][:count] for name in
                                                  ("tiles", "origins", "labels", "indices", "augmentation")}}

    def batch(self, parts: dict[str, torch.Tensor], slot: dict[str, torch.Tensor], count: int) -> CompressedBatch:
        spans = slot["spans"][:int(slot["sizes"][0])].clone()  # host numbers for the decoder's call
        return CompressedBatch(parts["data"], spans[:, 0], spans[:, 1], parts["tiles"], parts["origins"],
                               parts["labels"], parts["indices"], parts["augmentation"], self.chunk, self.crop,
                               self.dtype)


def read_compressed_batch(dataset, items: list, codec: str = "zstd") -> CompressedBatch:
    """What a loader worker reads for ``items`` of a ``dataset`` (a ``StoreDataset``), read in
    this process into a slot of its own: the same code as the feed's workers."""
    layout = CompressedSlots(dataset, codec)
    slot = {name: torch.zeros(shape, dtype=dtype) for name, (shape, dtype) in layout.shapes(len(items)).items()}
    layout.fill(items, {name: t.numpy() for name, t in slot.items()})
    return layout.batch(layout.parts(slot, len(items)), slot, len(items))


def decode_chunks(batch: CompressedBatch, codec: str, device: torch.device) -> torch.Tensor:
    """``(n_chunks, chunk, chunk)`` pixels of the batch's chunks on ``device``: nvCOMP's batched
    decoder on CUDA, numcodecs elsewhere; ``codec`` is the store's (``zstd`` or ``none``)."""
    c, dtype = batch.chunk, torch.uint8 if batch.dtype == "uint8" else torch.uint16
    n = len(batch.starts)
    if n == 0:
        return torch.zeros((0, c, c), dtype=dtype, device=device)
    chunk_bytes = c * c * dtype.itemsize
    if codec == "none":  # the stored bytes are the pixels: each chunk's, without its checksum
        flat = _uncompressed(batch.data.to(device, non_blocking=True), batch.starts, batch.lengths, chunk_bytes)
    elif device.type == "cuda":
        flat = _nvcomp_decode(batch.data.to(device, non_blocking=True), batch.starts, batch.lengths, chunk_bytes)
    else:
        flat = torch.from_numpy(_cpu_decode(batch))
    return flat.view(dtype).view(n, c, c)


def _uncompressed(raw: torch.Tensor, starts: torch.Tensor, lengths: torch.Tensor, chunk_bytes: int) -> torch.Tensor:
    """``(n, chunk_bytes)`` pixel bytes of uncompressed chunks in ``raw``: a view where they lie
    at a fixed stride (as a slot holds them: back to back, each followed by its checksum), else
    each cut out in turn."""
    n = len(starts)
    stride = int(starts[1] - starts[0]) if n > 1 else chunk_bytes
    regular = (bool((lengths == chunk_bytes).all()) and stride >= chunk_bytes
               and (n - 1) * stride + chunk_bytes <= len(raw) and bool((starts == torch.arange(n) * stride).all()))
    if regular:  # the last chunk needs no padding after it
        return raw.as_strided((n, chunk_bytes), (stride, 1))
    return torch.stack([raw[s:s + chunk_bytes] for s in starts.tolist()])


def _cpu_decode(batch: CompressedBatch) -> np.ndarray:
    data = batch.data.numpy()
    from numcodecs import Zstd

    decoder = Zstd()
    pieces = [decoder.decode(data[s:s + n]) for s, n in zip(batch.starts.tolist(), batch.lengths.tolist())]
    return np.frombuffer(bytearray(b"".join(pieces)), np.uint8)


def _nvcomp_decode(raw: torch.Tensor, starts: torch.Tensor, lengths: torch.Tensor, chunk_bytes: int) -> torch.Tensor:
    """Every chunk's zstd frame decoded in one nvCOMP batch call, straight into one tensor.

    The frames and their places are carved out of the two buffers by offset tables (no Python
    object per chunk: a batch holds thousands). Nothing waits on the host: every chunk decodes
    to ``chunk_bytes``, so nvCOMP needs no look at the frames' headers, and the call runs on a
    stream of its own that follows PyTorch's current one and is followed by it (events, as
    PyTorch orders its own streams; nvCOMP takes no stream 0, PyTorch's default)."""
    from nvidia import nvcomp

    n, current = len(starts), torch.cuda.current_stream(raw.device)
    codec, stream = _nvcomp_codec(raw.device.index or 0, chunk_bytes)
    out = torch.empty(n * chunk_bytes, dtype=torch.uint8, device=raw.device)
    stream.wait_stream(current)  # raw's copy and out's allocation come first
    frames = nvcomp.as_arrays(raw, starts.tolist(), lengths.tolist(), cuda_stream=stream.cuda_stream)
    places = nvcomp.as_arrays(out, list(range(0, n * chunk_bytes, chunk_bytes)), [chunk_bytes] * n,
                              cuda_stream=stream.cuda_stream)
    config = codec.decompression_config(codec.compression_config([chunk_bytes] * n))
    codec.decode(frames, out=places, decompression_config=config)
    raw.record_stream(stream)  # neither buffer is reused before the decode has run
    out.record_stream(stream)
    current.wait_stream(stream)
    return out


@functools.lru_cache(maxsize=8)
def _nvcomp_codec(device_id: int, chunk_bytes: int):
    """One nvCOMP zstd decoder and its stream per device and chunk size (it keeps its scratch
    memory between batches; its own chunk size, 64 KiB unless told, is a 256² uint8 chunk's)."""
    from nvidia import nvcomp

    stream = torch.cuda.Stream(torch.device("cuda", device_id))
    return nvcomp.Codec(algorithm="Zstd", bitstream_kind=nvcomp.BitstreamKind.RAW, device_id=device_id,
                        cuda_stream=stream.cuda_stream, uncomp_chunk_size=chunk_bytes), stream


def assemble_crops(chunks: torch.Tensor, batch: CompressedBatch) -> torch.Tensor:
    """``(batch, 4, crop, crop)``: each crop cut from its chunk grid; the one code path of both
    decoders (a gather on whichever device ``chunks`` is on)."""
    device, c, crop = chunks.device, batch.chunk, batch.crop
    with_empty = torch.cat([chunks, torch.zeros((1, c, c), dtype=chunks.dtype, device=device)])
    tiles = batch.tiles.to(device, non_blocking=True)
    tiles = torch.where(tiles < 0, len(chunks), tiles)  # -1: the all-zero chunk appended last
    b, _, rows, _ = tiles.shape
    canvas = with_empty[tiles].permute(0, 1, 2, 4, 3, 5).reshape(b, 4, rows * c, rows * c)
    origins = batch.origins.to(device, non_blocking=True)
    span = torch.arange(crop, device=device)
    ys = (origins[:, 0, None] + span)[:, None, :, None]
    xs = (origins[:, 1, None] + span)[:, None, None, :]
    return canvas[torch.arange(b, device=device)[:, None, None, None], torch.arange(4, device=device)[None, :, None, None],
                  ys, xs]


def crops_of(batch: CompressedBatch, codec: str, device: torch.device):
    """``(images, labels, indices, augmentation)`` on ``device``, as every training batch."""
    images = assemble_crops(decode_chunks(batch, codec, device), batch)
    return (images, batch.labels.to(device, non_blocking=True), batch.indices.to(device, non_blocking=True),
            batch.augmentation.to(device, non_blocking=True))


def nvcomp_available() -> str | None:
    """None where nvCOMP's Python package loads and is new enough, else why not (for
    ``--decode auto``'s line): the batch call needs 6.0's ``as_arrays`` by offsets, and other
    GPU libraries bring older ones."""
    try:
        from nvidia import nvcomp
    except ImportError:
        return "nvCOMP is not installed (pip install 'hpa-pipeline[gpu]')"
    except OSError as exc:  # its shared library, or the CUDA runtime it needs, does not load
        return f"nvCOMP does not load ({exc})"
    version = str(getattr(nvcomp, "__version__", "0"))
    major = version.split(".")[0]
    if not major.isdigit() or int(major) < 6:
        return (f"nvCOMP {version} is installed; decoding on the GPU needs 6.0 or later "
                f"(pip install 'hpa-pipeline[gpu]')")
    return None


def nvcomp_fails(device: torch.device) -> str | None:
    """None where nvCOMP decodes a small batch of zstd frames on ``device`` exactly as the CPU
    does, else what went wrong. ``--decode auto`` tries this before it trusts the GPU with a
    run: an nvCOMP built for another CUDA than the driver's loads, and fails only here."""
    from numcodecs import Zstd

    chunk_bytes, rng = 4096, np.random.default_rng(0)
    chunks = [rng.integers(0, top, chunk_bytes, dtype=np.uint8).tobytes() for top in (1, 7, 256)]
    data, starts, lengths = bytearray(), [], []
    for frame in (Zstd(level=1).encode(chunk) for chunk in chunks):
        data += bytes(align_up(len(data), FRAME_ALIGNMENT) - len(data))  # each frame aligned, as in a batch
        starts.append(len(data))
        lengths.append(len(frame))
        data += frame
    try:
        raw = torch.frombuffer(data, dtype=torch.uint8).to(device)
        decoded = _nvcomp_decode(raw, torch.tensor(starts), torch.tensor(lengths), chunk_bytes).cpu()
    except Exception as exc:  # whatever nvCOMP or CUDA raise: the reason to stay on the CPU
        log.debug("nvCOMP's test decode on %s failed", device, exc_info=True)
        first_line = (str(exc).strip().splitlines() or [""])[0]
        return f"nvCOMP failed a test decode on {device} ({type(exc).__name__}: {first_line})"
    if decoded.numpy().tobytes() != b"".join(chunks):
        return f"nvCOMP decoded a test batch on {device} wrongly"
    return None


def choose_decoder(decode: str, codec: str, device: torch.device, direct: bool = True,
                   ruled_out: list[str] | None = None, task: str = "training") -> tuple[str, str]:
    """``("cpu" | "gpu", why)`` for ``--decode`` on a store of ``codec`` read for ``task``
    (training, predict) on ``device`` (``ruled_out``: what else keeps the decoding on the CPU);
    ``gpu`` asked where it cannot work is an error that says why. ``auto`` takes nvCOMP only
    once it has decoded a test batch right (:func:`nvcomp_fails`); ``gpu`` meets whatever
    nvCOMP raises in the run itself, with its traceback."""
    if decode not in DECODERS:
        raise OptionError(f"--decode must be one of {', '.join(DECODERS)}, not {decode!r}")
    reasons = list(ruled_out or [])
    if device.type != "cuda":
        reasons.append(f"{task} runs on {device.type}, not a GPU")
    if codec not in ("zstd", "none"):
        reasons.append(f"the store's chunks are {codec} (Blosc's container, which nvCOMP cannot read; "
                       f"a store built with --codec zstd can be)")
    if not direct:
        reasons.append("the store is read through zarr (a URL, or another layout)")
    missing = nvcomp_available() if not reasons and codec != "none" else None
    if missing:
        reasons.append(missing)
    elif not reasons and codec != "none" and decode == "auto":  # --decode gpu meets a failure head-on
        failed = nvcomp_fails(device)
        reasons += [failed] if failed else []
    if decode == "cpu":
        return "cpu", "decoding in the loader workers on the CPU (--decode cpu)"
    if reasons:
        if decode == "gpu":
            raise OptionError(f"--decode gpu: {'; '.join(reasons)}")
        return "cpu", f"decoding on the CPU: {'; '.join(reasons)}"
    return "gpu", f"decoding the store's {codec} chunks on {device} (nvCOMP)" if codec != "none" else \
        f"copying the store's uncompressed chunks to {device} and cutting crops there"


class GpuDecoding:
    """Batches of ``dataset`` whose chunks the loader workers only read (:class:`CompressedSlots`
    in a :class:`.feed.BatchFeed`) and ``device`` decodes and cuts (:func:`crops_of`); with
    ``workers`` 0 they are read in this process. Close it to stop the workers."""

    def __init__(self, dataset, batch_size: int, workers: int, device: torch.device, codec: str,
                 slots: int | None = None):
        self.dataset, self.batch_size, self.device, self.codec = dataset, batch_size, device, codec
        self.feed = BatchFeed(dataset, batch_size, workers, device, slots=slots,
                              layout=CompressedSlots(dataset, codec)) if workers > 0 else None

    def batches(self, items, drop_last: bool = False):
        """``(images, labels, indices, augmentation)`` on the device for ``items`` in order."""
        if self.feed is not None:
            return (crops_of(batch, self.codec, self.device) for batch in self.feed.batches(items, drop_last))
        return (crops_of(read_compressed_batch(self.dataset, chunk, self.codec), self.codec, self.device)
                for chunk in in_batches(items, self.batch_size, drop_last))

    def close(self) -> None:
        if self.feed is not None:
            self.feed.close()
