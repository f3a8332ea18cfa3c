"""``train``: an SENet on one fold of a dataset store, readable top to bottom.

A run folder holds everything about a run: ``config.yaml``, ``folds.csv`` (multilabel stratified
folds of the whole store), ``checkpoints/last.pt`` (and ``best.pt``, by validation macro F1),
``metrics.csv`` (one row per epoch, also in ``tensorboard/`` when TensorBoard is installed),
``thresholds.json`` (per-class thresholds searched on the
validation fold), ``f1_table.txt``, ``curves.png`` and ``per_class_f1.png``.

Checkpoints are written every epoch atomically (temporary file, then rename) with the model,
optimizer, scheduler, AMP scaler, EMA weights, RNG states, epoch and step; ``resume=True``
continues after the last finished epoch, and since crops and order depend only on (seed, epoch),
a run killed and resumed does the same steps as one that was not.
"""
from __future__ import annotations

import contextlib
import csv
import json
import math
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml

from ..contract.atomic import replacing, write_json
from . import distributed
from .data import EpochSampler, StoreDataset, make_loader, rare_class_weights
from .config import TrainConfig
from .folds import make_folds
from ..contract.labels import CLASS_NAMES
from .metrics import f1_table, macro_f1, per_class_f1, predict_labels, search_thresholds
from .models import create_model
from ..contract.store import open_store
from .inference import autocast, predict_probs
from .streaming import ShardStream, make_stream_loader


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


# --- losses -------------------------------------------------------------------------------

def focal_loss(logits, targets, gamma: float, pos_weight=None):
    bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none", pos_weight=pos_weight)
    p_t = torch.exp(-bce)
    return ((1 - p_t) ** gamma * bce).mean()


def make_loss(cfg: TrainConfig, train_labels: np.ndarray, device):
    pos_weight = None
    if cfg.class_weighting:
        freq = train_labels.mean(0).clip(1e-3)
        pos_weight = torch.tensor(np.sqrt((1 - freq) / freq), dtype=torch.float32, device=device)
    if cfg.loss == "focal":
        return lambda logits, y: focal_loss(logits, y, cfg.focal_gamma, pos_weight)
    if cfg.loss == "bce":
        return lambda logits, y: F.binary_cross_entropy_with_logits(logits, y, pos_weight=pos_weight)
    raise ValueError(f"unknown loss {cfg.loss!r}; choose bce or focal")


def make_schedule(cfg: TrainConfig, optimizer, total_steps: int, steps_per_epoch: int):
    warmup = max(1, int(cfg.warmup_epochs * steps_per_epoch))
    if cfg.schedule == "onecycle":
        # OneCycleLR needs at least two steps in each phase
        pct = min(0.5, max(warmup, 2) / max(total_steps, 4))
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.lr, total_steps=max(total_steps, 4),
                                                   pct_start=pct)

    def cosine(step):
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    if cfg.schedule != "cosine":
        raise ValueError(f"unknown schedule {cfg.schedule!r}; choose cosine or onecycle")
    return torch.optim.lr_scheduler.LambdaLR(optimizer, cosine)


class EMA:
    """Exponential moving average of the weights, evaluated instead of the raw weights."""

    def __init__(self, model, decay: float):
        self.decay = decay
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model):
        for k, v in model.state_dict().items():
            if v.dtype.is_floating_point:
                self.shadow[k].mul_(self.decay).add_(v.detach(), alpha=1 - self.decay)
            else:
                self.shadow[k].copy_(v)


class SWA:
    """Stochastic weight averaging: the equal-weight mean of the weights at the end of each of
    the last ``swa_epochs`` epochs (what the competition's 3rd-place solution averaged). The
    averaged BatchNorm running statistics do not belong to the averaged weights, so they are
    recomputed on training batches (:func:`recompute_batchnorm`) before the average is used.
    """

    def __init__(self):
        self.shadow: dict | None = None
        self.n = 0

    @torch.no_grad()
    def update(self, model):
        state = model.state_dict()
        if self.shadow is None:
            self.shadow = {k: v.detach().clone() for k, v in state.items()}
        else:
            for k, v in state.items():
                if v.dtype.is_floating_point:
                    self.shadow[k].add_(v.detach() - self.shadow[k], alpha=1 / (self.n + 1))
                else:
                    self.shadow[k].copy_(v)
        self.n += 1


@torch.no_grad()
def recompute_batchnorm(model, loader, normalize, device, max_batches: int) -> None:
    """Fresh BatchNorm running statistics for ``model`` from up to ``max_batches`` training
    batches (``torch.optim.swa_utils.update_bn``, on this loader's uint8 batches)."""
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    momenta = {m: m.momentum for m in norms}
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches seen
    model.train()
    for i, (images, _, _, augmentation) in enumerate(loader):
        if i >= max_batches:
            break
        model(normalize(images.to(device, non_blocking=True), augmentation.to(device, non_blocking=True)))
    for m, momentum in momenta.items():
        m.momentum = momentum
    model.eval()


# --- helpers --------------------------------------------------------------------------------

def save_atomic(obj, path: Path) -> None:
    with replacing(path) as tmp:  # streamed to disk: a checkpoint can be GBs
        torch.save(obj, tmp)


def load_or_make_folds(run: Path, ids: list[str], labels: np.ndarray, k: int, seed: int,
                       write: bool = True) -> np.ndarray:
    path = run / "folds.csv"
    if path.exists():
        rows = list(csv.DictReader(path.open()))
        if [r["Id"] for r in rows] != ids:
            raise ValueError(f"{path} belongs to another store (ids differ)")
        return np.array([int(r["fold"]) for r in rows])
    folds = make_folds(labels, k, seed)
    if not write:
        return folds
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["Id", "fold"])
        writer.writerows(zip(ids, folds.tolist()))
    return folds


# --- the run ----------------------------------------------------------------------------------

def train(cfg: TrainConfig, resume: bool = False, progress=None) -> dict:
    """Train one fold; returns the final validation summary. ``progress(dict)`` per step.

    Under ``torchrun`` every process calls this; see :mod:`.distributed` for who does what.
    """
    with distributed.start(cfg.device) as (ranks, device):
        return _train(cfg, resume, progress if ranks.is_main else None, ranks, device)


def _train(cfg: TrainConfig, resume: bool, progress, ranks: distributed.Ranks, device: torch.device) -> dict:
    run = Path(cfg.out)
    main = ranks.is_main
    if main:
        (run / "checkpoints").mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)

    root = open_store(cfg.store)
    meta = root.attrs["hpa"]
    if not meta["has_labels"]:
        raise ValueError(f"{cfg.store} has no labels: train needs a train store")
    done = root["done"][:]
    labels = root["labels"][:].astype(np.float32)
    if main:  # the other ranks read the folds rank 0 wrote (or found)
        load_or_make_folds(run, meta["ids"], labels, cfg.folds, cfg.seed)
        (run / "config.yaml").write_text(yaml.safe_dump(asdict(cfg), sort_keys=False))
    distributed.barrier(ranks)
    folds = load_or_make_folds(run, meta["ids"], labels, cfg.folds, cfg.seed, write=False)
    train_idx = np.flatnonzero((folds != cfg.fold) & done)
    valid_idx = np.flatnonzero((folds == cfg.fold) & done)

    train_set = StoreDataset(cfg.store, cfg.level, train_idx, crop=cfg.crop, train=True, seed=cfg.seed,
                             crop_grid=cfg.crop_grid)
    # each rank validates every world-th sample; the predictions are gathered
    valid_set = StoreDataset(cfg.store, cfg.val_level or cfg.level, valid_idx[ranks.rank::ranks.world],
                             train=False, seed=cfg.seed)
    pin = device.type == "cuda"
    sampler = None
    if cfg.stream:  # whole shards in streaming order: one request per sample (remote stores)
        stream = ShardStream(train_set, cfg.stream_buffer, rank=ranks.rank, world=ranks.world)
        train_loader = make_stream_loader(stream, cfg.batch_size, cfg.workers, pin)
    else:
        weights = rare_class_weights(labels[train_idx]) if cfg.oversample else None
        sampler = EpochSampler(len(train_set), cfg.seed, weights, rank=ranks.rank, world=ranks.world,
                               batch_size=cfg.batch_size)
        train_loader = make_loader(train_set, cfg.batch_size, cfg.workers, sampler, pin, drop_last=True)
    valid_loader = make_loader(valid_set, cfg.batch_size, cfg.workers, None, pin)
    steps_per_epoch = len(train_loader) // cfg.accumulate
    if cfg.steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, cfg.steps_per_epoch)
    if steps_per_epoch < 1:
        raise ValueError(f"fold {cfg.fold} has {len(train_set)} training samples: fewer than one batch "
                         f"for each of {ranks.world} process(es)")

    normalize = train_set.normalizer().to(device)
    model = create_model(cfg.arch, cfg.backend, cfg.weights).to(device)
    if cfg.sync_bn and ranks.active:
        if device.type != "cuda":
            raise ValueError("--sync-bn needs CUDA (PyTorch's SyncBatchNorm has no CPU kernel)")
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if cfg.channels_last and device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    schedule = make_schedule(cfg, optimizer, steps_per_epoch * cfg.epochs, steps_per_epoch)
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda" and cfg.amp == "fp16")
    ema = EMA(model, cfg.ema) if cfg.ema > 0 else None
    swa = SWA() if cfg.swa_epochs > 0 else None
    averaging = ema is not None or swa is not None
    eval_model = create_model(cfg.arch, cfg.backend).to(device) if averaging else model
    loss_fn = make_loss(cfg, labels[train_idx], device)

    start_epoch, global_step, best = 0, 0, -1.0
    last = run / "checkpoints" / "last.pt"
    if resume and last.exists():
        state = torch.load(last, map_location=device, weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        scaler.load_state_dict(state["scaler"])
        if ema is not None and state.get("ema") is not None:
            ema.shadow = state["ema"]
        if swa is not None and state.get("swa") is not None:
            swa.shadow, swa.n = state["swa"]["shadow"], state["swa"]["n"]
        torch.set_rng_state(state["rng"]["torch"])
        start_epoch, global_step, best = state["epoch"] + 1, state["step"], state["best"]
    # after loading: DDP copies rank 0's weights to every rank when it wraps the model
    wrapped = torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None) if ranks.active else model
    step_model = torch.compile(wrapped) if cfg.compile else wrapped

    metrics_path = run / "metrics.csv"
    if main and start_epoch == 0 and metrics_path.exists():
        metrics_path.unlink()
    board = _tensorboard(run) if main else None
    summary = {}
    for epoch in range(start_epoch, cfg.epochs):
        if sampler is not None:
            sampler.set_epoch(epoch)
        train_set.set_epoch(epoch)
        model.train()
        seen, loss_sum, started = 0, 0.0, time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        for micro, (images, targets, _, augmentation) in enumerate(train_loader):
            if micro // cfg.accumulate >= steps_per_epoch:
                break
            images = normalize(images.to(device, non_blocking=True), augmentation.to(device, non_blocking=True))
            targets = targets.to(device, non_blocking=True)
            if cfg.channels_last and device.type == "cuda":
                images = images.contiguous(memory_format=torch.channels_last)
            last_micro = (micro + 1) % cfg.accumulate == 0
            # DDP averages gradients on the last micro-batch of a step only
            with _no_sync_unless(wrapped, last_micro or not ranks.active):
                with autocast(cfg, device):
                    loss = loss_fn(step_model(images).float(), targets)
                if not distributed.all_finite(loss, ranks):
                    raise TrainingDiverged(
                        f"loss is {loss.item()} at epoch {epoch}, step {global_step} (rank {ranks.rank}; stops "
                        f"every rank); the last good checkpoint ({last if last.exists() else 'none yet'}) is kept. "
                        f"Lower --lr or use --amp bf16/none.")
                scaler.scale(loss / cfg.accumulate).backward()
            if last_micro:
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                schedule.step()
                global_step += 1
                if ema is not None:
                    ema.update(model)
            seen += len(images)
            loss_sum += loss.item() * len(images)
            if progress:
                progress({"epoch": epoch, "step": global_step, "loss": loss.item(),
                          "img_s": ranks.world * seen / (time.perf_counter() - started)})
        loss_sum, seen = distributed.sum_over_ranks([loss_sum, seen], ranks, device)
        train_loss, train_img_s = loss_sum / max(seen, 1), seen / (time.perf_counter() - started)

        if ema is not None:  # validate the averaged weights
            eval_model.load_state_dict(ema.shadow)
        if swa is not None and epoch >= cfg.epochs - cfg.swa_epochs:
            swa.update(model)
            eval_model.load_state_dict(swa.shadow)
            recompute_batchnorm(eval_model, train_loader, normalize, device, cfg.swa_bn_batches)
            distributed.broadcast_buffers(eval_model, ranks)  # every rank validates with rank 0's statistics
        elif swa is not None:
            eval_model.load_state_dict(model.state_dict())
        probs, indices = distributed.gather_arrays(predict_probs(eval_model, valid_loader, device, cfg), ranks)
        truth = labels[indices] > 0.5
        thresholds = search_thresholds(truth, probs)
        f1_05 = macro_f1(truth, predict_labels(probs, 0.5))
        f1_tuned = macro_f1(truth, predict_labels(probs, thresholds))
        valid_loss = float(F.binary_cross_entropy(torch.from_numpy(probs).clamp(1e-6, 1 - 1e-6),
                                                  torch.from_numpy(truth.astype(np.float32))))
        row = {"epoch": epoch, "step": global_step, "lr": schedule.get_last_lr()[0], "train_loss": train_loss,
               "valid_loss": valid_loss, "valid_macro_f1": f1_05, "valid_macro_f1_tuned": f1_tuned,
               "train_img_s": train_img_s}
        is_best = f1_05 > best
        best = max(best, f1_05)
        if main:
            _write_epoch(run, cfg, row, board, is_best, truth, probs, thresholds, indices, eval_model.state_dict(), {
                "model": model.state_dict(), "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
                "scaler": scaler.state_dict(), "ema": ema.shadow if ema else None,
                "swa": {"shadow": swa.shadow, "n": swa.n} if swa and swa.n else None, "epoch": epoch,
                "step": global_step, "best": best, "config": asdict(cfg),
                "rng": {"torch": torch.get_rng_state()}})
        distributed.barrier(ranks)  # no rank runs ahead of a checkpoint it may have to resume from
        summary = {**row, "best_valid_macro_f1": best}
    if main and metrics_path.exists():
        plot_run(run)
    return summary or {"best_valid_macro_f1": best, "step": global_step}


def _no_sync_unless(model, sync: bool):
    """DDP's ``no_sync()`` (skip the gradient all-reduce) unless ``sync``."""
    return contextlib.nullcontext() if sync else model.no_sync()


def _write_epoch(run: Path, cfg: TrainConfig, row: dict, board, is_best: bool, truth, probs, thresholds,
                 indices, weights_for_predict: dict, state: dict) -> None:
    """Rank 0's end of an epoch: metrics row, ``last.pt``, and on a new best ``best.pt`` (the
    validated weights: averaged ones with EMA or SWA) and thresholds."""
    _append_row(run / "metrics.csv", row)
    if board is not None:
        for key, value in row.items():
            if key not in ("epoch", "step"):
                board.add_scalar(key, value, row["epoch"])
        board.flush()
    save_atomic(state, run / "checkpoints" / "last.pt")
    if is_best:
        save_atomic({"model": weights_for_predict, "config": asdict(cfg), "epoch": row["epoch"]},
                    run / "checkpoints" / "best.pt")
        tuned = predict_labels(probs, thresholds)
        write_json(run / "thresholds.json", {
            "thresholds": thresholds.tolist(), "class_names": list(CLASS_NAMES), "epoch": row["epoch"],
            "valid_macro_f1": row["valid_macro_f1"], "valid_macro_f1_tuned": row["valid_macro_f1_tuned"],
            "fold": cfg.fold, "n_valid": int(len(indices)), "per_class_f1": per_class_f1(truth, tuned).tolist()})
        (run / "f1_table.txt").write_text(f1_table(truth, tuned) + "\n")


def _tensorboard(run: Path):
    """A TensorBoard writer in ``run/tensorboard`` when the tensorboard package is installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(run / "tensorboard"))


def _append_row(path: Path, row: dict) -> None:
    new = not path.exists()
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(row))
        if new:
            writer.writeheader()
        writer.writerow(row)


def plot_run(run: Path) -> None:
    """``curves.png`` (loss and macro F1 per epoch) and ``per_class_f1.png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(csv.DictReader((run / "metrics.csv").open()))
    epochs = [int(r["epoch"]) for r in rows]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.plot(epochs, [float(r["train_loss"]) for r in rows], label="train")
    a.plot(epochs, [float(r["valid_loss"]) for r in rows], label="valid")
    a.set(xlabel="epoch", ylabel="loss", title="loss")
    a.legend()
    b.plot(epochs, [float(r["valid_macro_f1"]) for r in rows], label="threshold 0.5")
    b.plot(epochs, [float(r["valid_macro_f1_tuned"]) for r in rows], label="tuned thresholds")
    b.set(xlabel="epoch", ylabel="macro F1", title="validation macro F1")
    b.legend()
    fig.tight_layout()
    fig.savefig(run / "curves.png", dpi=100)
    plt.close(fig)
    thresholds = run / "thresholds.json"
    if thresholds.exists():
        per_class = json.loads(thresholds.read_text())["per_class_f1"]
        fig, ax = plt.subplots(figsize=(10, 6))
        ax.barh(range(len(CLASS_NAMES)), per_class)
        ax.set_yticks(range(len(CLASS_NAMES)), [f"{i} {n}" for i, n in enumerate(CLASS_NAMES)], fontsize=7)
        ax.invert_yaxis()
        ax.set(xlabel="F1 (tuned thresholds, best epoch)", xlim=(0, 1))
        fig.tight_layout()
        fig.savefig(run / "per_class_f1.png", dpi=100)
        plt.close(fig)
