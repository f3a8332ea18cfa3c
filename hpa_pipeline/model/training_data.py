"""The data of a training run: datasets, sampler, loader workers, normalisation and loss.

:func:`make_data` builds them once per run from the :class:`.planning.Plan`; the loader
workers (:class:`.feed.BatchFeed`) live until the run ends, and the epoch travels with each item.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..common.machine import usable_cores
from . import distributed
from .config import TrainConfig
from .chunk_decode import GpuDecoding, choose_decoder
from .data import CombinedDataset, EpochSampler, Normalizer, StoreDataset, make_loader, rare_class_weights
from .feed import BatchFeed
from .losses import make_loss
from .planning import Plan
from .run_folder import RunError
from .streaming import ShardStream, StreamLoader, make_stream_loader


@dataclass
class Data:
    train_set: StoreDataset
    valid_set: StoreDataset
    batch_size: int
    sampler: EpochSampler | None
    feeds: tuple[BatchFeed, BatchFeed] | None  # worker processes for the whole run (train, valid)
    stream_loader: StreamLoader | None  # --stream
    normalize: Normalizer  # the training level's statistics, for training and validation alike
    loss_fn: torch.nn.Module
    steps_per_epoch: int
    # --decode gpu: workers read stored bytes, the device decodes (training, validation)
    gpu_decoding: tuple[GpuDecoding, GpuDecoding] | None = None
    decode_line: str = ""  # which decoder the run uses, and why

    def train_batches(self):
        """This epoch's training batches (set the sampler's epoch first)."""
        if self.gpu_decoding is not None:
            return self.gpu_decoding[0].batches(self.sampler, drop_last=True)
        if self.stream_loader is not None:
            return iter(self.stream_loader)
        if self.feeds is not None:
            return self.feeds[0].batches(self.sampler, drop_last=True)
        return iter(make_loader(self.train_set, self.batch_size, 0, self.sampler, drop_last=True))

    def valid_batches(self):
        if self.gpu_decoding is not None:
            return self.gpu_decoding[1].batches(range(len(self.valid_set)))
        if self.feeds is not None:
            return self.feeds[1].batches(range(len(self.valid_set)))
        return iter(make_loader(self.valid_set, self.batch_size, 0))

    @property
    def valid_steps(self) -> int:
        return -(-len(self.valid_set) // self.batch_size)

    def __enter__(self) -> Data:
        return self

    def __exit__(self, *exc) -> None:
        for feed in self.feeds or ():  # the GPU decodings' feeds among them
            feed.close()


def gpu_decoding(cfg: TrainConfig, train_set, valid_set, store_codec: str, device: torch.device,
                 workers: int) -> tuple[tuple[GpuDecoding, GpuDecoding] | None, str]:
    """The GPU feeds of training and validation where ``--decode`` chooses them, and the line
    saying which decoder and why."""
    ruled_out = ((["--stream reads whole shards"] if cfg.stream else [])
                 + (["--external stores are read by the loader workers"]
                    if isinstance(train_set, CombinedDataset) else []))
    direct = not ruled_out and train_set.reader().layout is not None
    chosen, why = choose_decoder(cfg.decode, store_codec, device, direct, ruled_out)
    if chosen == "cpu":
        return None, why
    return (GpuDecoding(train_set, cfg.batch_size, workers, device, store_codec),
            GpuDecoding(valid_set, cfg.batch_size, valid_workers(workers), device, store_codec,
                        slots=VALID_SLOTS)), why


#: batch slots of the validation feed: whole images, in order, read while the GPU is busy
VALID_SLOTS = 4


def valid_workers(workers: int) -> int:
    """Validation's loader workers beside training's ``workers`` (none where training reads in
    this process)."""
    return max(1, workers // 2) if workers else 0


def max_workers() -> int:
    """Loader workers at most with ``--workers auto``: every core but the training process's."""
    return max(1, usable_cores() - 1)


def make_data(cfg: TrainConfig, plan: Plan, ranks: distributed.Ranks, device: torch.device) -> Data:
    """Training and validation batches from worker processes that live for the whole run
    (:class:`.feed.BatchFeed`; the epoch travels with each item), or read in this process
    with ``--workers 0``; ``--stream`` uses its own loader."""
    train_set = StoreDataset(plan.store, cfg.level, plan.train_idx, crop=cfg.crop, train=True, seed=cfg.seed,
                             crop_grid=cfg.crop_grid)
    if plan.external:  # external samples train in every fold, after the competition's
        train_set = CombinedDataset([train_set] + [
            StoreDataset(store, cfg.level, done, crop=cfg.crop, train=True, seed=cfg.seed, crop_grid=cfg.crop_grid)
            for store, done, _ in plan.external])
    train_labels = np.concatenate([plan.labels[plan.train_idx]] + [labels for _, _, labels in plan.external])
    # each rank validates every world-th sample; the predictions are gathered
    valid_set = StoreDataset(plan.store, cfg.val_level or cfg.level, plan.valid_idx[ranks.rank::ranks.world],
                             train=False, seed=cfg.seed)
    sampler = stream_loader = feeds = None
    if cfg.stream:  # whole shards in streaming order: one request per sample (remote stores)
        stream = ShardStream(train_set, cfg.stream_buffer, rank=ranks.rank, world=ranks.world)
        stream_loader = make_stream_loader(stream, cfg.batch_size, cfg.workers, device.type == "cuda")
        batches = len(stream_loader)
    else:
        weights = rare_class_weights(train_labels) if cfg.oversample else None
        sampler = EpochSampler(len(train_set), cfg.seed, weights, rank=ranks.rank, world=ranks.world,
                               batch_size=cfg.batch_size, draws=cfg.epoch_size, tag_epoch=True)
        batches = len(sampler) // cfg.batch_size
    workers = cfg.workers if cfg.workers is not None else min(2, max_workers())  # auto: grown as the wait asks
    decoding, decode_line = gpu_decoding(cfg, train_set, valid_set, plan.store.spec.codec, device, workers)
    if decoding is not None:  # its feeds, for the wait measured and the workers grown (train.py)
        feeds = (decoding[0].feed, decoding[1].feed) if workers else None
    elif sampler is not None and workers:
        feeds = (BatchFeed(train_set, cfg.batch_size, workers, device),
                 BatchFeed(valid_set, cfg.batch_size, valid_workers(workers), device, slots=VALID_SLOTS))
    steps = batches // cfg.accumulate
    if cfg.steps_per_epoch:
        steps = min(steps, cfg.steps_per_epoch)
    if steps < 1:
        raise RunError(f"fold {cfg.fold} has {len(train_set)} training samples: fewer than one batch "
                       f"for each of {ranks.world} process(es)")
    normalize = Normalizer(plan.normalization["mean"], plan.normalization["std"],
                           per_image=cfg.normalize == "image").to(device)
    loss_fn = make_loss(cfg.loss, cfg.focal_gamma, cfg.class_weighting, train_labels, cfg.focal_alpha, cfg.lovasz,
                        cfg.hard_fraction).to(device)
    return Data(train_set, valid_set, cfg.batch_size, sampler, feeds, stream_loader, normalize, loss_fn, steps,
                decoding, decode_line)
