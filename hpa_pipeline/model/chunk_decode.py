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

from dataclasses import dataclass

import numpy as np
import torch

from ..contract.errors import OptionError
from .data import already_collated, worker_options
from .names import DECODERS


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


def read_compressed_batch(dataset, items: list) -> CompressedBatch:
    """What a loader worker reads for ``items`` of a ``dataset`` (a ``StoreDataset``): the same
    crops and augmentation as ``dataset.fill`` draws (whole images for a validation or
    prediction set), as stored bytes."""
    reader = dataset.reader()
    crop = dataset.crop if dataset.train and dataset.crop is not None else dataset.level  # else whole images
    c, rows = reader.chunk, grid_rows(crop, reader.chunk)
    tiles = np.full((len(items), 4, rows, rows), -1, np.int64)
    origins = np.zeros((len(items), 2), np.int64)
    labels, indices, augmentation, parts = [], [], [], []
    for b, item in enumerate(items):
        epoch, k = item if isinstance(item, tuple) else (dataset.epoch, item)
        index = int(dataset.indices[k])
        y, x, aug = dataset.draw(index, epoch)
        origins[b] = (y % c, x % c)
        wanted = [(ch, cy, cx) for ch in range(4) for cy in range(y // c, (y + crop - 1) // c + 1)
                  for cx in range(x // c, (x + crop - 1) // c + 1)]
        for (ch, cy, cx), stored in zip(wanted, reader.compressed_chunks(index, wanted)):
            if stored is not None:
                tiles[b, ch, cy - y // c, cx - x // c] = len(parts)
                parts.append(stored)
        labels.append(dataset.labels_of(index))
        indices.append(index)
        augmentation.append(aug)
    lengths = np.array([len(p) for p in parts], np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    data = np.frombuffer(b"".join(parts), np.uint8) if parts else np.zeros(0, np.uint8)
    return CompressedBatch(torch.from_numpy(data.copy()), torch.from_numpy(starts), torch.from_numpy(lengths),
                           torch.from_numpy(tiles), torch.from_numpy(origins), torch.from_numpy(np.stack(labels)),
                           torch.tensor(indices), torch.from_numpy(np.stack(augmentation)), c, crop,
                           str(reader.dtype))


def decode_chunks(batch: CompressedBatch, codec: str, device: torch.device) -> torch.Tensor:
    """``(n_chunks, chunk, chunk)`` pixels of the batch's chunks on ``device``: nvCOMP's batched
    decoder on CUDA, numcodecs elsewhere; ``codec`` is the store's (``zstd`` or ``none``)."""
    c, dtype = batch.chunk, torch.uint8 if batch.dtype == "uint8" else torch.uint16
    n = len(batch.starts)
    if n == 0:
        return torch.zeros((0, c, c), dtype=dtype, device=device)
    if device.type == "cuda":
        raw = batch.data.to(device, non_blocking=True)
        flat = raw if codec == "none" else _nvcomp_decode(raw, batch.starts, batch.lengths, c * c * dtype.itemsize)
    else:
        flat = torch.from_numpy(_cpu_decode(batch, codec)).clone() if codec == "none" else \
            torch.from_numpy(_cpu_decode(batch, codec))
    return flat.view(dtype).view(n, c, c)


def _cpu_decode(batch: CompressedBatch, codec: str) -> np.ndarray:
    data = batch.data.numpy()
    if codec == "none":
        return data
    from numcodecs import Zstd

    decoder = Zstd()
    pieces = [decoder.decode(data[s:s + n]) for s, n in zip(batch.starts.tolist(), batch.lengths.tolist())]
    return np.frombuffer(bytearray(b"".join(pieces)), np.uint8)


def _nvcomp_decode(raw: torch.Tensor, starts: torch.Tensor, lengths: torch.Tensor, chunk_bytes: int) -> torch.Tensor:
    """Every chunk's zstd frame decoded in one nvCOMP batch call; their bytes back to back."""
    from nvidia import nvcomp

    codec = nvcomp.Codec(algorithm="Zstd", bitstream_kind=nvcomp.BitstreamKind.RAW,
                         device_id=raw.device.index or 0)
    frames = [nvcomp.as_array(raw[s:s + n]) for s, n in zip(starts.tolist(), lengths.tolist())]
    decoded = codec.decode(frames, data_type="|u1")
    out = torch.cat([_as_tensor(d, raw.device).reshape(-1) for d in decoded])
    if out.numel() != len(frames) * chunk_bytes:
        raise RuntimeError(f"nvCOMP decoded {out.numel()} bytes, not {len(frames)} chunks of {chunk_bytes}")
    return out


def _as_tensor(array, device: torch.device) -> torch.Tensor:
    """An nvCOMP array on the device as a tensor, without a copy (DLPack, else the CUDA array
    interface)."""
    if hasattr(array, "__dlpack__"):
        return torch.from_dlpack(array)
    return torch.as_tensor(array, device=device)


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
    """None where nvCOMP's Python package imports, else why not (for ``--decode auto``'s line)."""
    try:
        from nvidia import nvcomp  # noqa: F401
    except ImportError:
        return "nvCOMP is not installed (pip install 'hpa-pipeline[gpu]')"
    return None


def choose_decoder(decode: str, codec: str, device: torch.device, direct: bool = True,
                   ruled_out: list[str] | None = None, task: str = "training") -> tuple[str, str]:
    """``("cpu" | "gpu", why)`` for ``--decode`` on a store of ``codec`` read for ``task``
    (training, predict) on ``device`` (``ruled_out``: what else keeps the decoding on the CPU);
    ``gpu`` asked where it cannot work is an error that says why."""
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
    if decode == "cpu":
        return "cpu", "decoding in the loader workers on the CPU (--decode cpu)"
    if reasons:
        if decode == "gpu":
            raise OptionError(f"--decode gpu: {'; '.join(reasons)}")
        return "cpu", f"decoding on the CPU: {'; '.join(reasons)}"
    return "gpu", f"decoding the store's {codec} chunks on {device} (nvCOMP)" if codec != "none" else \
        f"copying the store's uncompressed chunks to {device} and cutting crops there"


class CompressedCrops(torch.utils.data.Dataset):
    """A dataset's batches as the stored bytes of their chunks, for loader workers to read."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitems__(self, items: list):
        return read_compressed_batch(self.dataset, items)


@dataclass
class GpuDecoding:
    """Loader workers that read each batch's stored chunk bytes (page-locked), decoded and cut
    into crops or whole images on ``device`` by :func:`crops_of`."""

    loader: torch.utils.data.DataLoader
    codec: str
    device: torch.device

    def batches(self):
        return (crops_of(batch, self.codec, self.device) for batch in self.loader)


def compressed_loader(dataset, sampler, batch_size: int, workers: int, device: torch.device,
                      drop_last: bool = True) -> torch.utils.data.DataLoader:
    """Loader workers reading each batch's stored chunk bytes, page-locked for a GPU; without a
    ``sampler``, the dataset in order (validation, predict)."""
    return torch.utils.data.DataLoader(CompressedCrops(dataset), batch_size=batch_size, sampler=sampler,
                                       collate_fn=already_collated, drop_last=drop_last,
                                       pin_memory=device.type == "cuda", **worker_options(workers, prefetch_factor=4))
