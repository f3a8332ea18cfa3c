"""The training feed on the CPU: what delivering batches costs the training process, old path vs new.

Same run, same uncompressed store (512² crops of the 1024 level, batches of 32), 2 worker
processes, 3 epochs of 12 batches plus a validation pass of 6 whole-image batches after each,
consumed by a step that does nothing but look at the batch, so that the figures are the feed's
alone (on this 2-core machine a real step would compete with the workers for the cores):

- old: what ``train`` did before: a new ``DataLoader`` iterator (fork workers) per epoch and
  per validation, batches crossing to the training process as new shared-memory tensors;
- new: :class:`hpa_pipeline.model.feed.BatchFeed`: workers started once, filling a ring of
  shared slots in place (``preadv`` straight into the slot), two integers per batch.

Reported: delivered images/s, the training process's own CPU time per delivered batch
(``time.process_time``: every thread of this process, none of the workers'), worker start-ups
per run, and the copies of each image between the shard file and the batch the step reads (by
construction; ``tests/test_feed.py`` shows the preadv path). The GPU figures are
``benchmarks/bench_gpu.py``'s.
"""
from __future__ import annotations

import multiprocessing
import time

import numpy as np
import torch

from hpa_pipeline.contract.store import StoreSpec
from hpa_pipeline.model.data import EpochSampler, StoreDataset, make_loader
from hpa_pipeline.model.feed import BatchFeed
from hpa_pipeline.prep.build_zarr import build_zarr

from .common import BENCH_DATA, full_size_tiffs, report

CROP, BATCH, WORKERS, EPOCHS, TRAIN_BATCHES, VALID_BATCHES = 512, 32, 2, 3, 12, 6
STARTS = multiprocessing.Value("i", 0)


def _count_start(_):
    from hpa_pipeline.model.data import _worker_init

    with STARTS.get_lock():
        STARTS.value += 1
    _worker_init(_)


def consume(batches, normalize, limit: int) -> int:
    """A step that only reads one pixel of each batch; returns images seen."""
    seen = 0
    for k, (images, _, _, _) in enumerate(batches):
        if k >= limit:
            break
        int(images[-1, -1, -1, -1])
        seen += len(images)
    return seen


def run_old(train_set, valid_set, sampler, normalize) -> tuple[int, float, float]:
    STARTS.value = 0
    seen, wall, cpu = 0, time.perf_counter(), time.process_time()
    for epoch in range(EPOCHS):
        sampler.set_epoch(epoch)
        train_set.set_epoch(epoch)
        loader = make_loader(train_set, BATCH, WORKERS, sampler, drop_last=True)
        loader.worker_init_fn = _count_start
        seen += consume(loader, normalize, TRAIN_BATCHES)
        valid = make_loader(valid_set, BATCH // 4, WORKERS)
        valid.worker_init_fn = _count_start
        consume(((b[0], b[1], b[2], torch.zeros(len(b[0]), 0)) for b in valid), normalize, VALID_BATCHES)
    return seen, time.perf_counter() - wall, time.process_time() - cpu


def run_new(train_set, valid_set, sampler, normalize) -> tuple[int, float, float, int]:
    seen, wall, cpu = 0, time.perf_counter(), time.process_time()
    train_feed = BatchFeed(train_set, BATCH, WORKERS)
    valid_feed = BatchFeed(valid_set, BATCH // 4, WORKERS, slots=4)
    try:
        for epoch in range(EPOCHS):
            sampler.set_epoch(epoch)
            seen += consume(train_feed.batches(sampler, drop_last=True), normalize, TRAIN_BATCHES)
            consume(((b[0], b[1], b[2], torch.zeros(len(b[0]), 0)) for b in valid_feed.batches(range(len(valid_set)))),
                    normalize, VALID_BATCHES)
        starts = train_feed.worker_starts + valid_feed.worker_starts
    finally:
        train_feed.close()
        valid_feed.close()
    return seen, time.perf_counter() - wall, time.process_time() - cpu, starts


def run() -> dict:
    torch.set_num_threads(1)
    data, tiff = full_size_tiffs()
    store = BENCH_DATA / "feed_none.zarr"
    if not (store / "report.json").exists():
        build_zarr(tiff, data / "train.csv", store, StoreSpec(codec="none", chunk=256))
    n = 48
    train_set = StoreDataset(str(store), 1024, np.arange(n), crop=CROP, train=True)
    valid_set = StoreDataset(str(store), 1024, np.arange(n))
    normalize = train_set.normalizer()
    sampler = EpochSampler(n, draws=TRAIN_BATCHES * BATCH, tag_epoch=True)
    figures = {"setup": f"{EPOCHS} epochs x {TRAIN_BATCHES} batches of {BATCH} {CROP}² crops + {VALID_BATCHES} "
                        f"validation batches of {BATCH // 4} whole 1024² images, {WORKERS} workers, --codec none"}
    old_seen, old_wall, old_cpu = run_old(train_set, valid_set, sampler, normalize)
    new_seen, new_wall, new_cpu, new_starts = run_new(train_set, valid_set, sampler, normalize)
    batches = EPOCHS * (TRAIN_BATCHES + VALID_BATCHES)
    figures.update({
        "old (DataLoader per epoch): delivered training img/s": round(old_seen / old_wall, 1),
        "new (BatchFeed): delivered training img/s": round(new_seen / new_wall, 1),
        "old: training-process CPU ms per delivered batch": round(1000 * old_cpu / batches, 2),
        "new: training-process CPU ms per delivered batch": round(1000 * new_cpu / batches, 2),
        "old: worker start-ups per run": STARTS.value,
        "new: worker start-ups per run": new_starts,
        "old: copies per image, shard file -> batch the step reads (CPU / CUDA)":
            "3 / 5 (pread -> bytes, -> worker array, -> new shared memory [, -> pinned, -> GPU])",
        "new: copies per image, shard file -> batch the step reads (CPU / CUDA)":
            "1 / 2 (preadv -> shared slot [pinned once], -> GPU on a side stream)",
        "ratio: delivered img/s new / old": round((new_seen / new_wall) / (old_seen / old_wall), 2),
        "ratio: training-process CPU per batch old / new": round(old_cpu / max(new_cpu, 1e-9), 2),
    })
    return report("feed", figures)


if __name__ == "__main__":
    run()
