"""A store as a PyTorch dataset for your own training loop (``from hpa_pipeline import StoreDataset``).

``hpa-pipe train`` reads crops as raw integers with an augmentation vector, and applies both
on the GPU a batch at a time (:class:`.data.StoreDataset`, :class:`.feed.BatchFeed`). A
researcher with a loop of their own wants what every torchvision dataset gives instead, with
a plain ``DataLoader``::

    from torch.utils.data import DataLoader
    from hpa_pipeline import StoreDataset

    data = StoreDataset("data/train.zarr", level=512, crop=256)
    for images, targets in DataLoader(data, batch_size=32, shuffle=True, num_workers=4):
        ...  # images: (32, 4, 256, 256) float32, normalised and augmented; targets: (32, 28) float32

Each item is a random crop (or the whole image with ``crop=None``), flipped, rotated and
jittered as training does, normalised by the store's channel statistics at that level, with
its 28 labels as floats. Only finished samples are served. Every epoch draws new crops, in
every worker, with no call: a worker's random generator is seeded from PyTorch's per-worker
seed, which PyTorch draws afresh for each epoch (so ``torch.manual_seed`` makes runs
repeatable). ``set_epoch(e)`` instead fixes each sample's crop by ``(seed, e, sample)``, as
``hpa-pipe train`` does. ``raw=True`` gives the items ``hpa-pipe train`` reads: ``(uint8 or
uint16 image, labels, sample index, augmentation vector)``, for :class:`.data.Normalizer`.
"""
from __future__ import annotations

import numpy as np
import torch

from ..contract.errors import OptionError
from ..contract.store import Store
from .data import IDENTITY, StoreDataset as CropReader, draw_augmentation


def _sample_indices(indices, n_samples: int) -> np.ndarray:
    """``indices`` as sample numbers of a store of ``n_samples``; one outside it is a mistake
    (it would otherwise be left out as if unfinished, and an empty dataset fail later)."""
    chosen = np.asarray(indices, dtype=np.int64).reshape(-1)
    outside = chosen[(chosen < 0) | (chosen >= n_samples)]
    if outside.size:
        raise OptionError(f"indices {outside[:5].tolist()} are outside the store's {n_samples} samples "
                          f"(0 to {n_samples - 1})")
    return chosen


class StoreDataset(CropReader):
    """The finished samples of a store as ``(image, target)`` items for a plain ``DataLoader``.

    ``store``: a path, URL or open :class:`~hpa_pipeline.contract.store.Store`; ``level``: the
    image size to read (default: the store's largest); ``crop``: random crops of that size
    (None: whole images); ``indices``: the samples to use (default: every finished one; an
    unfinished one given here is left out too); ``augment``: flips, rotations and channel
    jitter (default: with crops); ``raw``: the training command's items instead.
    """

    def __init__(self, store, level: int | None = None, crop: int | None = None, indices=None,
                 augment: bool | None = None, raw: bool = False, seed: int = 0, jitter: float = 0.1,
                 crop_grid: int = 1):
        opened = store if isinstance(store, Store) else Store.open(store)
        done = np.flatnonzero(opened.done())
        given = done if indices is None else np.unique(_sample_indices(indices, len(opened.ids)))
        chosen = np.intersect1d(given, done)
        self.augment = crop is not None if augment is None else augment
        super().__init__(opened, level or opened.sizes[0], chosen, crop=crop, train=crop is not None or self.augment,
                         seed=seed, jitter=jitter, crop_grid=crop_grid)
        self.raw, self.left_out = raw, len(given) - len(chosen)
        self._epoch_set, self._rng, self._rng_seed = False, None, None
        self._normalize = self.normalizer()

    def set_epoch(self, epoch: int) -> None:
        """Fix the crops of ``epoch`` (each sample's from ``(seed, epoch, sample)``)."""
        super().set_epoch(epoch)
        self._epoch_set = True

    def draw(self, index: int, epoch: int | None = None) -> tuple[int, int, np.ndarray]:
        if self._epoch_set:
            y, x, augmentation = super().draw(index, epoch)
        else:
            rng = self._worker_rng()
            y = x = 0
            if self.crop is not None:
                y, x = rng.integers(0, (self.level - self.crop) // self.crop_grid + 1, 2) * self.crop_grid
            augmentation = draw_augmentation(rng, self.jitter)
        return int(y), int(x), (augmentation if self.augment else IDENTITY)

    def _worker_rng(self) -> np.random.Generator:
        """This process's generator, made again when PyTorch's seed for it changes (a new
        epoch's workers, or ``torch.manual_seed`` in this process)."""
        seed = torch.initial_seed()
        if self._rng is None or seed != self._rng_seed:
            self._rng, self._rng_seed = np.random.default_rng((self.seed, seed)), seed
        return self._rng

    def __getitem__(self, k):
        image, labels, index, augmentation = super().__getitem__(k)
        if self.raw:
            return image, labels, index, augmentation
        return self._normalize(image[None], augmentation[None])[0], labels

    def __getitems__(self, items: list) -> list:
        """One item each: PyTorch's default collate stacks them."""
        return [self[k] for k in items]

    def __getstate__(self):
        state = super().__getstate__()
        state["_rng"] = None
        return state
