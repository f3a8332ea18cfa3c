"""The coordinator's per-sample bookkeeping of a build, and the channel statistics from it.

Only preprocessing writes a store, so this lives here; the arrays' names and the store itself
are the contract's (:class:`..contract.store.Store`).
"""
from __future__ import annotations

import numpy as np

from ..contract.store import CHANNEL_SUMS, DONE, PHASH, SOURCE_DTYPE, SOURCE_SHAPE, Store


class SampleBook:
    """The coordinator's view of the per-sample arrays: read once, updated in memory, flushed by chunk.

    ``mark_done`` stages results; ``flush`` writes the touched chunks of ``source_shape``,
    ``source_dtype``, ``channel_sums`` and ``phash`` first and ``done`` last, so ``done`` never
    runs ahead.
    """

    def __init__(self, store: Store):
        self.store = store
        self.done = store.done()
        self.source_shape = store.array(SOURCE_SHAPE)[:]
        self.source_dtype = store.array(SOURCE_DTYPE)[:]
        self.channel_sums = store.channel_sums()
        self.phash = store.phash()
        self.chunk = store.array(DONE).chunks[0]
        self._dirty: set[int] = set()

    def mark_done(self, index: int, source_shape, source_bits: int, sums: np.ndarray,
                  hashes: np.ndarray | None = None) -> None:
        self.source_shape[index] = source_shape
        self.source_dtype[index] = source_bits
        self.channel_sums[index] = sums
        if hashes is not None:
            self.phash[index] = hashes
        self.done[index] = True
        self._dirty.add(index // self.chunk)

    def flush(self) -> None:
        arrays = {SOURCE_SHAPE: self.source_shape, SOURCE_DTYPE: self.source_dtype, CHANNEL_SUMS: self.channel_sums,
                  **({PHASH: self.phash} if self.store.has_phash else {}), DONE: self.done}
        for name, values in arrays.items():  # done last
            array = self.store.array(name)
            for c in sorted(self._dirty):
                block = slice(c * self.chunk, min((c + 1) * self.chunk, len(self.done)))
                array[block] = values[block]
        self._dirty.clear()

    def mark_not_done(self, index: int) -> None:
        """Stage sample ``index`` as not done (``verify --repair``: its shards were damaged)."""
        self.source_shape[index] = 0
        self.source_dtype[index] = 0
        self.channel_sums[index] = 0
        self.phash[index] = 0
        self.done[index] = False
        self._dirty.add(index // self.chunk)

    def statistics(self, sizes: list[int]) -> dict:
        """Per-level, per-channel mean and std over the done samples (for normalisation)."""
        return channel_statistics(self.done, self.channel_sums, sizes)


def channel_statistics(done: np.ndarray, channel_sums: np.ndarray, sizes: list[int]) -> dict:
    """``attributes["hpa"]["statistics"]``: per level, per channel mean and std over the done
    samples, from their ``channel_sums`` (``verify`` recomputes it to check the stored one)."""
    stats = {}
    n = int(done.sum())
    if n == 0:
        return stats
    totals = channel_sums[done].sum(axis=0)  # (L, 4, 2)
    for k, s in enumerate(sizes):
        count = n * s * s
        mean = totals[k, :, 0] / count
        std = np.sqrt(np.maximum(totals[k, :, 1] / count - mean**2, 0))
        stats[str(s)] = {"mean": mean.round(4).tolist(), "std": std.round(4).tolist(), "n_samples": n}
    return stats
