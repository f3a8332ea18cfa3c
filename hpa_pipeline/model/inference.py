"""Inference: a run's weights, sigmoid probabilities with test-time augmentation, and ``predict``.

``train`` (validation every epoch) and ``predict`` (the submission) share :func:`predict_probs`,
so a model is always evaluated the same way.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import yaml

from ..contract.store import open_store
from .config import TrainConfig
from .metrics import predict_labels
from .models import create_model


def tta_views(images: torch.Tensor, n: int):
    """The first ``n`` of the 8 dihedral views (identity, flips, 90° rotations) of a batch."""
    if not 1 <= n <= 8:
        raise ValueError("tta must be between 1 and 8")
    for k in range(n):
        view = torch.rot90(images, k % 4, dims=(2, 3))
        yield torch.flip(view, dims=(3,)) if k >= 4 else view


def autocast(cfg: TrainConfig, device: torch.device):
    if device.type != "cuda" or cfg.amp == "none":
        return torch.autocast(device.type, enabled=False)
    return torch.autocast("cuda", dtype=torch.bfloat16 if cfg.amp == "bf16" else torch.float16)


@torch.no_grad()
def predict_probs(model, loader, device, cfg: TrainConfig, tta: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Sigmoid probabilities ``(n, 28)`` (averaged over ``tta`` flips/rotations) and sample indices."""
    model.eval()
    normalize = loader.dataset.normalizer().to(device)
    probs, indices = [], []
    for images, _, index, _ in loader:
        images = normalize(images.to(device, non_blocking=True))
        if cfg.channels_last and device.type == "cuda":
            images = images.contiguous(memory_format=torch.channels_last)
        total = 0
        with autocast(cfg, device):
            for view in tta_views(images, tta):
                total = total + torch.sigmoid(model(view).float())
        probs.append((total / tta).cpu().numpy())
        indices.append(index.numpy())
    return np.concatenate(probs), np.concatenate(indices)



def load_run(run: str | Path, device) -> tuple[torch.nn.Module, dict, np.ndarray]:
    """The best weights of a run, its config and its per-class thresholds."""
    run = Path(run)
    best = run / "checkpoints" / "best.pt"
    if not best.exists():
        raise FileNotFoundError(f"{run}: no checkpoints/best.pt (has this run finished an epoch?)")
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    state = torch.load(best, map_location=device, weights_only=False)
    model = create_model(cfg["arch"], cfg["backend"]).to(device)
    model.load_state_dict(state["model"])
    thresholds = np.array(json.loads((run / "thresholds.json").read_text())["thresholds"])
    return model, cfg, thresholds


def predict(store: str | Path, runs: list[str | Path], tta: int = 1, batch_size: int = 16, workers: int = 2,
            device: str = "auto", level: int | None = None) -> tuple[list[str], np.ndarray, np.ndarray]:
    """``(ids, mean probabilities (n, 28), predicted labels (n, 28) bool)`` over the whole store.

    Probabilities are averaged over runs (e.g. folds) and TTA views; thresholds are the mean of
    the runs' thresholds. Samples not done in the store are an error: a submission needs all.
    """
    from .data import StoreDataset, make_loader
    from .distributed import pick_device

    root = open_store(store)
    meta = root.attrs["hpa"]
    done = root["done"][:]
    if not done.all():
        missing = [meta["ids"][i] for i in np.flatnonzero(~done)[:5]]
        raise ValueError(f"{store}: {int((~done).sum())} samples not written (e.g. {missing}); "
                         f"finish the ingest (see report.json) before predicting")
    dev = pick_device(device)
    total, thresholds = 0.0, []
    for run in runs:
        model, cfg, run_thresholds = load_run(run, dev)
        config = TrainConfig.from_dict({k: v for k, v in cfg.items()})
        dataset = StoreDataset(str(store), level or config.val_level or config.level, np.arange(len(done)))
        loader = make_loader(dataset, batch_size, workers)
        probs, indices = predict_probs(model, loader, dev, config, tta=tta)
        order = np.argsort(indices)
        total = total + probs[order]
        thresholds.append(run_thresholds)
    probs = total / len(runs)
    labels = predict_labels(probs, np.mean(thresholds, axis=0))
    return list(meta["ids"]), probs, labels
