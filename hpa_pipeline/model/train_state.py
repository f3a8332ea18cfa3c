"""Everything a checkpoint holds (:class:`TrainState`), and how a run's state is made.

``state_dict()`` and ``load_state_dict()`` are written side by side and are each other's
inverse: model, optimizer, schedule, scaler, weight average and every random generator (CPU,
CUDA, NumPy, Python), so a run killed and resumed does the same steps as one that was not.
"""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from ..contract.errors import OptionError
from . import distributed
from .averaging import averaging_kind, make_average
from .checkpoints import load_checkpoint, load_weights
from .config import TrainConfig
from .models import create_model
from .run_folder import RunError, RunFolder


def make_schedule(cfg: TrainConfig, optimizer, total_steps: int, steps_per_epoch: int):
    """Linear warm-up then cosine decay to 0 (``SequentialLR``), or ``OneCycleLR``."""
    warmup = max(1, int(cfg.warmup_epochs * steps_per_epoch))
    if cfg.schedule == "onecycle":
        # OneCycleLR needs at least two steps in each phase
        pct = min(0.5, max(warmup, 2) / max(total_steps, 4))
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.lr, total_steps=max(total_steps, 4),
                                                   pct_start=pct)
    warm = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=1 / warmup, total_iters=warmup)
    decay = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, total_steps - warmup))
    return torch.optim.lr_scheduler.SequentialLR(optimizer, [warm, decay], milestones=[warmup])


def rng_states() -> dict:
    """Every generator's state in tensors and plain values (what a safe checkpoint may hold)."""
    kind, key, pos, has_gauss, cached = np.random.get_state()
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": {"kind": str(kind), "key": torch.from_numpy(key.astype(np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
            "python": random.getstate()}


def set_rng_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    if states.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    n = states["numpy"]
    np.random.set_state((n["kind"], n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    random.setstate(states["python"])


class TrainState:
    """Everything a checkpoint holds. ``state_dict()`` and ``load_state_dict()`` are written side
    by side and are each other's inverse, so nothing is saved without being restored."""

    def __init__(self, model, optimizer, schedule, scaler, average, averaging: str | None):
        self.model, self.optimizer, self.schedule, self.scaler = model, optimizer, schedule, scaler
        self.average, self.averaging = average, averaging  # averaging: "ema", "swa" or None
        self.epoch, self.step, self.best = -1, 0, -1.0  # epoch: the last finished one

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "schedule": self.schedule.state_dict(), "scaler": self.scaler.state_dict(),
                "average": self.average.state_dict() if self.average is not None else None,
                "epoch": self.epoch, "step": self.step, "best": self.best, "rng": rng_states()}

    def load_state_dict(self, state: dict, path: Path | None = None) -> None:
        """Restore what :meth:`state_dict` saved; a checkpoint that does not fit names ``path``."""
        missing = {"model", "optimizer", "schedule", "scaler", "epoch", "step", "best", "rng"} - set(state)
        if missing:
            raise RunError(f"{path}: not a training checkpoint of this project (no {', '.join(sorted(missing))})")
        load_weights(self.model, state["model"], path)
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        self.scaler.load_state_dict(state["scaler"])
        if self.average is not None:
            self.average.load_state_dict(state["average"])
        self.epoch, self.step, self.best = state["epoch"], state["step"], state["best"]
        set_rng_states(state["rng"])

    def eval_model(self) -> torch.nn.Module:
        """The weights validation and ``best.pt`` use: the average's, once it has averaged any."""
        if self.average is None or (self.averaging == "swa" and int(self.average.n_averaged) == 0):
            return self.model
        return self.average.module


def check_precision(cfg: TrainConfig, device: torch.device) -> None:
    """``--amp bf16`` needs a GPU with bfloat16 (Ampere or later); a V100 or T4 gets one line."""
    if device.type == "cuda" and cfg.amp == "bf16" and not torch.cuda.is_bf16_supported():
        raise OptionError(f"--amp bf16: {torch.cuda.get_device_name(device)} has no bfloat16; use --amp fp16 "
                          f"(with loss scaling) or --amp none")


def make_state(cfg: TrainConfig, steps_per_epoch: int, device: torch.device) -> TrainState:
    model = create_model(cfg.arch, cfg.backend, cfg.weights, drop_rate=cfg.drop_rate, head=cfg.head).to(device)
    if cfg.init_from:  # another run's best weights (then a new optimiser and schedule)
        start = RunFolder(Path(cfg.init_from))
        load_weights(model, load_checkpoint(start.best, device).get("model", {}), start.best)
    if cfg.sync_bn and distributed.ranks_from_env().active:
        if device.type != "cuda":
            raise RunError("--sync-bn needs CUDA (PyTorch's SyncBatchNorm has no CPU kernel)")
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if cfg.channels_last and device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    schedule = make_schedule(cfg, optimizer, steps_per_epoch * cfg.epochs, steps_per_epoch)
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda" and cfg.amp == "fp16")
    return TrainState(model, optimizer, schedule, scaler, make_average(model, cfg.ema, cfg.swa_epochs),
                      averaging_kind(cfg.ema, cfg.swa_epochs))
