"""The streaming crop loader: a PyTorch dataset over one level of a dataset store.

Training items are random crops (``crop``² at any offset, or on a ``crop_grid``) with a random
flip and 90° rotation
and a mild per-channel intensity jitter, all drawn here and applied with the normalisation;
validation and prediction items are whole images of the level.

Items stay in the store's integer dtype (uint8: a quarter of the bytes of float32) and in
reading order until :class:`Normalizer` flips/rotates each item and turns the batch into
normalised floats on the training device, with the store's per-channel statistics of that
level. Per-pixel work on the CPU (float conversion, the strided copy of a rotation) was most of
a crop's cost (benchmarks/bench_loader.py); on a GPU it is free.

How it reads: :class:`.shards.ShardReader` decodes only the inner chunks a crop touches, from
the shard file directly (several times faster than zarr-python's read path). The reader is
opened lazily inside each DataLoader worker. Workers start by ``fork`` on Linux: zarr 3
resets its event loop and thread pool in a forked child (``os.register_at_fork``), and
fork starts in milliseconds where ``spawn`` re-imports torch in every worker; pass
``multiprocessing_context="spawn"`` to :func:`make_loader` where fork is unsafe (macOS, or a
parent that already initialised CUDA). Each worker uses one thread for torch, OpenCV and Blosc,
so that N workers use N cores. For stores behind a URL, :mod:`.streaming` reads whole shards
in streaming order instead (one request per sample).

Randomness is a function of ``(seed, epoch, sample)``, so a run resumed mid-way, or run with
another number of workers, sees the same crops.

The protocol both readers of a dataset rely on (the training feed of :mod:`.feed`, and
PyTorch's DataLoader through ``__getitems__``), met by :class:`StoreDataset` and
:class:`CombinedDataset`:

- ``item_size`` and ``dtype``: the shape ``(4, item_size, item_size)`` and dtype of an item;
- ``fill(item, out)``: read ``item`` into the array ``out``, return ``(labels, sample index,
  augmentation)``;
- ``forget_readers()``: drop the open shard readers, so that processes started from this one
  open their own files rather than share the parent's.

Why two readers: training runs for many epochs of small crops, where a DataLoader's per-batch
copies and worker restarts would cost the training thread time every step, so it has the feed
(batch slots filled in place by workers that live for the run). Prediction and validation
outside training read each whole image once, in order, where the forward pass dwarfs the
copies; and ``--stream`` (stores behind a URL) must read whole shards in the order the object
store serves them. Both keep PyTorch's DataLoader (:func:`make_loader`, :mod:`.streaming`).
"""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ..contract.labels import N_CLASSES
from ..common.machine import leave_interrupts_to_the_parent, one_thread_per_task, start_method
from ..contract.shards import ShardReader
from ..contract.store import Store, level_path
from ..contract.errors import OptionError


class StoreDataset(Dataset):
    """Items ``(image uint8/uint16 (4, h, w), labels float32 (28,), sample index, augmentation (9,))``.

    ``augmentation`` is what :class:`Normalizer` applies: a dihedral code (0-7: rotation by
    code % 4 quarter turns, then a flip if code >= 4), then per-channel gains and offsets (in
    normalised units); the identity for evaluation items.
    """

    def __init__(self, store: str | Store, level: int, indices, crop: int | None = None, train: bool = False,
                 seed: int = 0, jitter: float = 0.1, crop_grid: int = 1):
        opened = store if isinstance(store, Store) else Store.open(store)  # a Store: opened once by the caller
        levels = list(opened.levels())
        if int(level) not in levels:
            raise OptionError(f"{opened.path} has no level {level}; levels: {levels}")
        stats = opened.statistics.get(int(level))
        if not stats:
            raise OptionError(f"{opened.path}: no channel statistics for level {level} (was the build finished?)")
        self.store, self.level, self.crop, self.train = opened.path, int(level), crop, train
        self.ids = opened.ids  # to name a damaged sample by its id
        self.indices = np.asarray(indices, dtype=np.int64)
        self.mean = np.asarray(stats.mean, np.float32)
        self.std = np.asarray(stats.std, np.float32)
        labels = opened.labels()
        self.labels = labels.astype(np.float32) if labels is not None else None
        self.seed, self.epoch, self.jitter, self.crop_grid = seed, 0, jitter, max(1, int(crop_grid))
        if crop is not None and not 0 < crop <= level:
            raise OptionError(f"crop {crop} is larger than level {level}" if crop > level
                              else f"crop {crop}: a crop is at least 1 pixel")
        self._reader = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.indices)

    def reader(self) -> ShardReader:
        if self._reader is None:  # opened in the worker process, never pickled
            self._reader = ShardReader(self.store, level_path(self.level), self.ids)
        return self._reader

    def forget_readers(self) -> None:
        """Drop the open reader; the next read (in whichever process) opens its own."""
        self._reader = None

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.reader().dtype)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_reader"] = None
        return state

    @property
    def item_size(self) -> int:
        return self.crop if self.train and self.crop is not None else self.level

    def draw(self, index: int, epoch: int | None = None) -> tuple[int, int, np.ndarray]:
        """Crop origin ``(y, x)`` and augmentation of sample ``index`` in ``epoch`` (default: this one)."""
        rng = np.random.default_rng((self.seed, self.epoch if epoch is None else epoch, index))
        y = x = 0
        if self.train and self.crop is not None:
            # crop_grid > 1 snaps the origin to a grid: with the chunk size, a crop decodes
            # exactly its own area instead of up to (crop + chunk)² (benchmarks/bench_loader.py)
            y, x = rng.integers(0, (self.level - self.crop) // self.crop_grid + 1, 2) * self.crop_grid
        augmentation = draw_augmentation(rng, self.jitter) if self.train else IDENTITY
        return int(y), int(x), augmentation

    def labels_of(self, index: int) -> np.ndarray:
        return self.labels[index] if self.labels is not None else np.zeros(N_CLASSES, np.float32)

    def fill(self, item, out: np.ndarray) -> tuple[np.ndarray, int, np.ndarray]:
        """Read ``item`` into ``out``; returns its labels, sample index and augmentation.

        ``item`` is a position in the dataset, or ``(epoch, position)`` from a sampler that
        tags its draws (:class:`EpochSampler` with ``tag_epoch``): then the epoch travels with
        the item, and workers that live for the whole run need no ``set_epoch``.
        """
        epoch, k = item if isinstance(item, tuple) else (self.epoch, item)
        index = int(self.indices[k])
        y, x, augmentation = self.draw(index, epoch)
        if self.train and self.crop is not None:
            self.reader().read(index, y, x, self.crop, self.crop, out=out)
        else:
            self.reader().read(index, out=out)
        return self.labels_of(index), index, augmentation

    def __getitem__(self, item):
        image = np.empty((4, self.item_size, self.item_size), self.dtype)
        labels, index, augmentation = self.fill(item, image)
        return torch.from_numpy(image), torch.from_numpy(labels), index, torch.from_numpy(augmentation)

    def __getitems__(self, items: list):
        """A whole batch, each crop decoded straight into its slot: no per-item tensors to stack.

        (PyTorch's DataLoader calls this with the batch's indices when a dataset defines it.)
        """
        return fill_batch(self, items)

    def normalizer(self) -> Normalizer:
        return Normalizer(self.mean, self.std)


def fill_batch(dataset, items: list):
    """``(images, labels, sample indices, augmentation)`` of ``items``, each image read by
    ``dataset.fill`` straight into its place in one batch array."""
    images = np.empty((len(items), 4, dataset.item_size, dataset.item_size), dataset.dtype)
    labels, indices, augmentation = zip(*(dataset.fill(item, images[j]) for j, item in enumerate(items)))
    return (torch.from_numpy(images), torch.from_numpy(np.stack(labels)), torch.tensor(indices),
            torch.from_numpy(np.stack(augmentation)))


class CombinedDataset(Dataset):
    """Several :class:`StoreDataset` parts as one: the competition's training fold followed by
    external stores (e.g. HPA v18). Items are positions in the concatenation, or ``(epoch,
    position)``; each part reads its own store with its own crops."""

    def __init__(self, parts: list[StoreDataset]):
        self.parts = parts
        self.offsets = np.cumsum([0] + [len(p) for p in parts])
        self.train, self.crop = parts[0].train, parts[0].crop

    def __len__(self) -> int:
        return int(self.offsets[-1])

    @property
    def item_size(self) -> int:
        return self.parts[0].item_size

    @property
    def dtype(self) -> np.dtype:
        return self.parts[0].dtype

    def forget_readers(self) -> None:
        for part in self.parts:
            part.forget_readers()

    def set_epoch(self, epoch: int) -> None:
        for part in self.parts:
            part.set_epoch(epoch)

    def fill(self, item, out):
        epoch, k = item if isinstance(item, tuple) else (None, item)
        part = int(np.searchsorted(self.offsets, k, side="right")) - 1
        local = int(k - self.offsets[part])
        return self.parts[part].fill(local if epoch is None else (epoch, local), out)

    def __getitems__(self, items: list):
        return fill_batch(self, items)


IDENTITY = np.array([0, 1, 1, 1, 1, 0, 0, 0, 0], np.float32)


def draw_augmentation(rng: np.random.Generator, jitter: float) -> np.ndarray:
    """``(9,)``: dihedral code 0-7, 4 channel gains in [1-j, 1+j], 4 offsets in [-j, j]."""
    code = rng.integers(0, 8)
    gain = rng.uniform(1 - jitter, 1 + jitter, 4)
    offset = rng.uniform(-jitter, jitter, 4)
    return np.concatenate([[code], gain, offset]).astype(np.float32)


def dihedral(images: torch.Tensor, code: int) -> torch.Tensor:
    """One of the 8 symmetries of the square: ``code % 4`` quarter turns, then a flip if >= 4."""
    images = torch.rot90(images, code % 4, dims=(-2, -1))
    return torch.flip(images, dims=(-1,)) if code >= 4 else images


class Normalizer(torch.nn.Module):
    """Integer batch -> float, normalised per channel, each item flipped/rotated and jittered as
    its augmentation vector says; runs on the training device.

    The symmetries are one ``gather`` with a per-item pixel permutation (8 index maps made once
    per image size and device), so a batch of mixed codes needs no host-device synchronisation
    (no ``unique()``, boolean masks or ``.tolist()`` on the device) and one kernel, not one per code.
    """

    #: the smallest std divided by: a channel that is constant (all zero in a store of blank
    #: yellow images) must not make the inputs infinite
    STD_FLOOR = 1e-3

    def __init__(self, mean, std, per_image: bool = False):
        """``mean``, ``std``: the store's per-channel statistics; ``per_image``: each image (or
        crop) by its own mean and std per channel instead (3rd place: official and external
        images have very different statistics)."""
        super().__init__()
        self.per_image = per_image
        std = np.maximum(np.asarray(std, np.float32), self.STD_FLOOR)
        self.register_buffer("mean", torch.as_tensor(np.asarray(mean), dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("inv_std", 1.0 / torch.as_tensor(std).view(1, -1, 1, 1))
        self._maps: dict = {}

    def _dihedral_maps(self, size: int, device) -> torch.Tensor:
        """``(8, size*size)``: for each code, the source pixel of each output pixel."""
        key = (size, str(device))
        if key not in self._maps:
            pixels = torch.arange(size * size, device=device).view(size, size)
            self._maps[key] = torch.stack([dihedral(pixels, code).reshape(-1) for code in range(8)])
        return self._maps[key]

    def _standardise(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float()
        if not self.per_image:
            return (x - self.mean) * self.inv_std
        mean = x.mean(dim=(2, 3), keepdim=True)
        std = x.std(dim=(2, 3), keepdim=True).clamp_min(1.0)  # one grey level: a constant channel stays 0
        return (x - mean) / std

    def forward(self, images: torch.Tensor, augmentation: torch.Tensor | None = None) -> torch.Tensor:
        if augmentation is None:
            return self._standardise(images)
        n, c, h, w = images.shape
        if h != w:
            raise ValueError(f"augmented items must be square, got {h}x{w}")
        index = self._dihedral_maps(h, images.device)[augmentation[:, 0].long()]  # (n, h*w)
        turned = torch.gather(images.reshape(n, c, h * w), 2, index[:, None, :].expand(n, c, h * w))
        x = self._standardise(turned.view(n, c, h, w))
        gain, offset = augmentation[:, 1:5, None, None], augmentation[:, 5:9, None, None]
        return x * gain + offset


class EpochSampler(Sampler):
    """A permutation of the dataset (or a class-balanced draw) that depends only on seed and epoch.

    ``weights`` (one per item) turns it into sampling with replacement in proportion to them,
    for oversampling rare classes. ``draws`` sets the epoch's size (``--epoch-size``): fewer
    than the dataset takes the start of the permutation, more draws with replacement. With
    ``world > 1`` (distributed training) every rank draws the same order and keeps whole
    batches ``rank, rank + world, ...`` of ``batch_size`` items; each rank gets the same number
    of batches, so none waits for another at the end. ``tag_epoch`` yields ``(epoch, k)``
    pairs, so that loader workers that live for the whole run know each item's epoch.
    """

    def __init__(self, n: int, seed: int = 0, weights: np.ndarray | None = None, shuffle: bool = True,
                 rank: int = 0, world: int = 1, batch_size: int = 1, draws: int | None = None,
                 tag_epoch: bool = False):
        self.n, self.seed, self.epoch, self.weights, self.shuffle = n, seed, 0, weights, shuffle
        self.rank, self.world, self.batch_size = rank, world, batch_size
        self.draws, self.tag_epoch = draws or n, tag_epoch

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        if self.world == 1:
            return self.draws
        return (self.draws // self.batch_size) // self.world * self.batch_size

    def _order(self) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.n)[:self.draws]
        rng = np.random.default_rng((self.seed, 1_000_003, self.epoch))
        if self.weights is not None:
            p = self.weights / self.weights.sum()
            return rng.choice(self.n, size=self.draws, replace=True, p=p)
        if self.draws <= self.n:
            return rng.permutation(self.n)[:self.draws]
        return rng.integers(0, self.n, self.draws)

    def __iter__(self):
        order = self._order()
        if self.world > 1:
            b = self.batch_size
            batches = order[:len(self) * self.world].reshape(-1, self.world, b)
            order = batches[:, self.rank].ravel()
        if self.tag_epoch:
            return iter([(self.epoch, k) for k in order.tolist()])
        return iter(order.tolist())


def rare_class_weights(labels: np.ndarray, power: float = 0.5) -> np.ndarray:
    """Per-sample weight: the largest inverse class frequency among its labels, to a power."""
    freq = labels.mean(axis=0).clip(1e-4)
    per_class = (1.0 / freq) ** power
    weights = (labels * per_class).max(axis=1)
    return np.where(weights > 0, weights, per_class.min())


def _worker_init(_):
    leave_interrupts_to_the_parent()
    one_thread_per_task()


def already_collated(batch):
    """``StoreDataset.__getitems__`` returns finished batches."""
    return batch


def worker_options(workers: int, multiprocessing_context: str | None = None, prefetch_factor: int = 4) -> dict:
    """DataLoader arguments for ``workers`` worker processes with the settings above (fork on
    Linux, one thread per worker); shared by :func:`make_loader` and the streaming loader."""
    if workers == 0:
        return {"num_workers": 0}
    return {"num_workers": workers, "worker_init_fn": _worker_init, "prefetch_factor": prefetch_factor,
            "multiprocessing_context": multiprocessing_context or start_method()}


def make_loader(dataset: StoreDataset, batch_size: int, workers: int, sampler: Sampler | None = None,
                pin_memory: bool = False, multiprocessing_context: str | None = None,
                drop_last: bool = False) -> DataLoader:
    """A DataLoader over a :class:`StoreDataset`, whose ``__getitems__`` makes whole batches."""
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, pin_memory=pin_memory,
                      collate_fn=already_collated, drop_last=drop_last,
                      **worker_options(workers, multiprocessing_context))
