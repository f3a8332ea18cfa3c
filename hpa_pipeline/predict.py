"""``predict`` (a Kaggle submission from one or more runs) and ``evaluate`` (macro F1 of a submission).

Submission format (design.md): ``Id,Predicted``, one row per id of the test store in its order
(the order of sample_submission.csv), labels ascending and space-separated; a row with nothing
above its class threshold gets its most probable class.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml

from .labels import N_CLASSES, LabelError, format_target, parse_target, read_sample_table
from .metrics import f1_table, macro_f1, predict_labels
from .models import create_model
from .store import open_store


class SubmissionError(ValueError):
    """A malformed submission: names the row and what is wrong."""


def tta_views(images: torch.Tensor, n: int):
    """The first ``n`` of the 8 dihedral views (identity, flips, 90° rotations) of a batch."""
    if not 1 <= n <= 8:
        raise ValueError("tta must be between 1 and 8")
    for k in range(n):
        view = torch.rot90(images, k % 4, dims=(2, 3))
        yield torch.flip(view, dims=(3,)) if k >= 4 else view


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
    from .train import TrainConfig, predict_probs

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


def write_submission(path: str | Path, ids: list[str], labels: np.ndarray) -> Path:
    frame = pd.DataFrame({"Id": ids, "Predicted": [format_target(np.flatnonzero(row)) for row in labels]})
    frame.to_csv(path, index=False)
    validate_submission(path, ids)
    return Path(path)


def read_submission(path: str | Path) -> tuple[list[str], np.ndarray]:
    """Ids and ``(n, 28)`` bool labels of a submission; every malformed row is an error naming it."""
    path = Path(path)
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    if list(frame.columns) != ["Id", "Predicted"]:
        raise SubmissionError(f"{path}: columns are {list(frame.columns)}, expected ['Id', 'Predicted']")
    labels = np.zeros((len(frame), N_CLASSES), bool)
    seen = {}
    for row, (sample_id, predicted) in enumerate(zip(frame["Id"], frame["Predicted"]), start=1):
        where = f"{path.name} row {row} (id {sample_id or '<empty>'})"
        if sample_id in seen:
            raise SubmissionError(f"{where}: duplicate id, first in row {seen[sample_id]}")
        seen[sample_id] = row
        try:
            labels[row - 1, list(parse_target(predicted, where))] = True
        except LabelError as exc:
            raise SubmissionError(str(exc)) from None
    return list(frame["Id"]), labels


def check_ids(path: str | Path, ids: list[str], expected_ids, source: str) -> None:
    """Every id of a submission is one of ``expected_ids`` and none of them is missing."""
    expected = set(expected_ids)
    for row, sample_id in enumerate(ids, start=1):
        if sample_id not in expected:
            raise SubmissionError(f"{Path(path).name} row {row}: id {sample_id} is not in {source}")
    if len(ids) != len(expected):
        present = set(ids)
        missing = [i for i in expected_ids if i not in present]
        raise SubmissionError(f"{Path(path).name}: {len(missing)} ids of {source} missing, e.g. {missing[:3]}")


def validate_submission(path: str | Path, expected_ids: list[str]) -> None:
    """Same ids as expected, in the same order, each row well formed."""
    ids, _ = read_submission(path)
    check_ids(path, ids, expected_ids, "the test store")
    if ids != list(expected_ids):
        raise SubmissionError(f"{Path(path).name}: rows are not in the order of the sample submission")


def evaluate(submission: str | Path, labels_csv: str | Path) -> tuple[float, str]:
    """Macro F1 of a submission against a labels CSV (``Id,Target``), and the per-class table."""
    truth_table = read_sample_table(labels_csv)
    if not truth_table.has_labels:
        raise SubmissionError(f"{labels_csv}: no Target column to score against")
    ids, predicted = read_submission(submission)
    check_ids(submission, ids, truth_table.ids, Path(labels_csv).name)
    index = {sample_id: i for i, sample_id in enumerate(truth_table.ids)}
    truth = truth_table.label_matrix()[[index[i] for i in ids]]
    return macro_f1(truth, predicted), f1_table(truth, predicted)


def constant_baseline(labels_csv: str | Path) -> float:
    """Macro F1 of predicting the most frequent class for every sample: the floor to beat."""
    truth = read_sample_table(labels_csv).label_matrix()
    constant = np.zeros_like(truth)
    constant[:, truth.sum(0).argmax()] = True
    return macro_f1(truth, constant)
