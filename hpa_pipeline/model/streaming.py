"""Training crops in shard order with a shuffle buffer, for stores behind a URL (``s3://...``).

:class:`.data.StoreDataset` reads each crop where it lies: from a local disk, a few ``pread``
calls; from an object store, an index request plus a ranged GET per inner chunk, each a
network round trip. :class:`ShardStream` instead fetches each sample's whole shard in one
request (zarr reads a shard it needs entirely in a single GET), keeps ``buffer`` whole images
per worker, and hands out a random one of them whenever a new one arrives: streaming order,
shuffled within the buffer, on top of a per-epoch shuffled sample order.

Each sample still gives exactly one item per epoch, with the same crop and augmentation as
:class:`.data.StoreDataset` draws for it (both use ``(seed, epoch, sample)``); only the order
differs. Samples are dealt to ranks (torchrun) and then to DataLoader workers, each rank
getting the same count, so that distributed ranks run the same number of steps. Each worker
makes its own batches, so up to ``batch_size - 1`` items per worker are left out of an epoch
(``drop_last``); the next epoch's order differs.
"""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, default_collate, get_worker_info

from .data import StoreDataset, worker_options


class ShardStream(IterableDataset):
    """Items ``(image, labels, sample index, augmentation)`` like :class:`.data.StoreDataset`'s."""

    def __init__(self, dataset: StoreDataset, buffer: int = 16, rank: int = 0, world: int = 1):
        if not dataset.train or dataset.crop is None:
            raise ValueError("ShardStream streams training crops: give it a train dataset with a crop")
        self.dataset, self.buffer, self.rank, self.world = dataset, max(1, buffer), rank, world

    def set_epoch(self, epoch: int) -> None:
        self.dataset.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.dataset) // self.world

    def _my_samples(self) -> np.ndarray:
        """This rank's and this worker's positions in the dataset, in this epoch's order."""
        d = self.dataset
        order = np.random.default_rng((d.seed, 2_000_003, d.epoch)).permutation(len(d))
        mine = order[self.rank::self.world][:len(self)]
        info = get_worker_info()
        return mine if info is None else mine[info.id::info.num_workers]

    def _item(self, k: int, image: np.ndarray):
        d = self.dataset
        index = int(d.indices[k])
        y, x, augmentation = d.draw(index)
        crop = np.ascontiguousarray(image[:, y:y + d.crop, x:x + d.crop])
        return (torch.from_numpy(crop), torch.from_numpy(d.labels_of(index)), index,
                torch.from_numpy(augmentation))

    def __iter__(self):
        d = self.dataset
        info = get_worker_info()
        rng = np.random.default_rng((d.seed, 3_000_017, d.epoch, self.rank, info.id if info else 0))
        held: list[tuple[int, np.ndarray]] = []
        for k in self._my_samples():
            held.append((int(k), d.reader().read(int(d.indices[k]))))  # the whole shard: one request
            if len(held) >= self.buffer:
                yield self._item(*held.pop(int(rng.integers(len(held)))))
        while held:
            yield self._item(*held.pop(int(rng.integers(len(held)))))


def make_stream_loader(stream: ShardStream, batch_size: int, workers: int, pin_memory: bool = False) -> DataLoader:
    """A DataLoader over a :class:`ShardStream` (fork workers, one thread each, like make_loader)."""
    return DataLoader(stream, batch_size=batch_size, pin_memory=pin_memory, collate_fn=default_collate,
                      drop_last=True, **worker_options(workers, prefetch_factor=2))
