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

Workers batch their own items: an error a worker meets (a damaged shard) travels to the
training process as the error itself, not as PyTorch's re-raised traceback text.
"""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, default_collate, get_worker_info

from ..contract.errors import HpaError, sendable
from .data import StoreDataset, worker_options
from .feed import raise_from_worker


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


class _Failed:
    """What a worker hands on in place of a batch when it met a user's error."""

    def __init__(self, error: HpaError | str):
        self.error = error


class _WorkerBatches(IterableDataset):
    """A :class:`ShardStream`'s items collated into batches inside each worker (``drop_last``)."""

    def __init__(self, stream: ShardStream, batch_size: int):
        self.stream, self.batch_size = stream, batch_size

    def __len__(self) -> int:
        return len(self.stream) // self.batch_size

    def __iter__(self):
        items = []
        try:
            for item in self.stream:
                items.append(item)
                if len(items) == self.batch_size:
                    yield default_collate(items)
                    items = []
        except HpaError as exc:
            yield _Failed(sendable(exc))


class StreamLoader:
    """Batches of a :class:`ShardStream` from DataLoader workers; a worker's error is raised here."""

    def __init__(self, loader: DataLoader):
        self.loader = loader

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        batches, failed = iter(self.loader), None
        for batch in batches:
            if isinstance(batch, _Failed):
                failed = batch.error
                break
            yield batch
        stop = getattr(batches, "_shutdown_workers", None)  # now, not when a traceback is collected
        if failed is not None and stop is not None:
            stop()
        if failed is not None:
            raise_from_worker(failed)


def make_stream_loader(stream: ShardStream, batch_size: int, workers: int, pin_memory: bool = False) -> StreamLoader:
    """A loader over a :class:`ShardStream` (fork workers, one thread each, like make_loader)."""
    return StreamLoader(DataLoader(_WorkerBatches(stream, batch_size), batch_size=None, pin_memory=pin_memory,
                                   **worker_options(workers, prefetch_factor=2)))
