"""Macro F1 (the competition's score), per-class F1 and per-class threshold search.

``macro_f1`` matches ``sklearn.metrics.f1_score(y, p, average="macro", zero_division=0)``: a class
with no true and no predicted positives scores 0, as scikit-learn's default does.
"""
from __future__ import annotations

import numpy as np

from ..contract.labels import CLASS_NAMES


def per_class_f1(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """``(28,)`` F1 of each class from boolean ``(n, 28)`` truth and predictions."""
    y_true, y_pred = y_true.astype(bool), y_pred.astype(bool)
    tp = (y_true & y_pred).sum(0).astype(np.float64)
    fp = (~y_true & y_pred).sum(0)
    fn = (y_true & ~y_pred).sum(0)
    denom = 2 * tp + fp + fn
    return np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    return float(per_class_f1(y_true, y_pred).mean())


def predict_labels(probs: np.ndarray, thresholds: np.ndarray | float) -> np.ndarray:
    """Labels above threshold; a row with none gets its most probable class (design.md)."""
    pred = probs > thresholds
    empty = ~pred.any(axis=1)
    pred[empty, probs[empty].argmax(axis=1)] = True
    return pred


def search_thresholds(y_true: np.ndarray, probs: np.ndarray, grid=None) -> np.ndarray:
    """Per-class thresholds that maximise each class's F1 on a validation fold.

    Classes without positives keep 0.5; ties go to the threshold nearest 0.5.
    """
    grid = np.linspace(0.05, 0.95, 91) if grid is None else np.asarray(grid)
    thresholds = np.full(y_true.shape[1], 0.5)
    for c in range(y_true.shape[1]):
        truth = y_true[:, c].astype(bool)
        if not truth.any():
            continue
        pred = probs[:, c][None, :] > grid[:, None]  # (grid, n)
        tp = (pred & truth).sum(1)
        fp = (pred & ~truth).sum(1)
        fn = truth.sum() - tp
        f1 = 2 * tp / np.maximum(2 * tp + fp + fn, 1)
        best = np.flatnonzero(f1 == f1.max())
        thresholds[c] = grid[best[np.argmin(np.abs(grid[best] - 0.5))]]
    return thresholds


def f1_table(y_true: np.ndarray, y_pred: np.ndarray) -> str:
    """A per-class table: id, name, support, F1; the macro F1 last."""
    f1 = per_class_f1(y_true, y_pred)
    lines = [f"{'class':>5}  {'name':<30} {'support':>7}  {'F1':>6}"]
    for c, name in enumerate(CLASS_NAMES):
        lines.append(f"{c:>5}  {name:<30} {int(y_true[:, c].sum()):>7}  {f1[c]:6.3f}")
    lines.append(f"{'':>5}  {'macro F1':<30} {len(y_true):>7}  {f1.mean():6.3f}")
    return "\n".join(lines)
