"""Macro F1 (the competition's score), per-class F1 and per-class threshold search.

``macro_f1`` matches ``sklearn.metrics.f1_score(y, p, average="macro", zero_division=0)``: a class
with no true and no predicted positives scores 0, as scikit-learn's default does.
"""
from __future__ import annotations

import numpy as np

from ..contract.labels import CLASS_NAMES


def _check_shape(name: str, table: np.ndarray, like: np.ndarray | None) -> None:
    """``table`` is ``(samples, classes)``, of ``like``'s shape when given."""
    if table.ndim != 2 or (like is not None and table.shape != like.shape):
        want = f"{like.shape}, as the truth's" if like is not None else "(samples, classes)"
        raise ValueError(f"{name} has shape {table.shape}; expected {want}")


def label_table(name: str, table, like: np.ndarray | None = None) -> np.ndarray:
    """``table`` as a boolean ``(n, classes)`` array, checked: a 0/1 table (probabilities are
    labelled first, by :func:`predict_labels`), of ``like``'s shape when given."""
    table = np.asarray(table)
    _check_shape(name, table, like)
    if table.dtype != bool and not np.isin(table, (0, 1)).all():
        raise ValueError(f"{name} holds values other than 0 and 1: label probabilities first "
                         "(predict_labels(probs, thresholds))")
    return table.astype(bool)


def probability_table(name: str, probs, like: np.ndarray | None = None) -> np.ndarray:
    """``probs`` as a float ``(n, classes)`` array of finite values, of ``like``'s shape when given."""
    probs = np.asarray(probs, dtype=np.float64)
    _check_shape(name, probs, like)
    if not np.isfinite(probs).all():
        raise ValueError(f"{name} holds NaN or infinite values")
    return probs


def per_class_f1(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """``(28,)`` F1 of each class from boolean ``(n, 28)`` truth and predictions."""
    y_true = label_table("y_true", y_true)
    y_pred = label_table("y_pred", y_pred, like=y_true)
    tp = (y_true & y_pred).sum(0).astype(np.float64)
    fp = (~y_true & y_pred).sum(0)
    fn = (y_true & ~y_pred).sum(0)
    denom = 2 * tp + fp + fn
    return np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    return float(per_class_f1(y_true, y_pred).mean())


def predict_labels(probs: np.ndarray, thresholds: np.ndarray | float) -> np.ndarray:
    """Labels above threshold; a row with none gets its most probable class (the store contract)."""
    probs = probability_table("probs", probs)
    thresholds = np.asarray(thresholds, dtype=np.float64)
    if thresholds.ndim > 1 or (thresholds.ndim == 1 and thresholds.shape[0] != probs.shape[1]):
        raise ValueError(f"{thresholds.shape[0] if thresholds.ndim == 1 else thresholds.shape} thresholds "
                         f"for {probs.shape[1]} classes")
    pred = probs > thresholds
    empty = ~pred.any(axis=1)
    pred[empty, probs[empty].argmax(axis=1)] = True
    return pred


def search_thresholds(y_true: np.ndarray, probs: np.ndarray, grid=None, rounds: int = 2) -> np.ndarray:
    """Per-class thresholds that maximise macro F1 under the submission rule.

    Labels are ``probs > threshold``, and a row with none gets its most probable class
    (:func:`predict_labels`, as ``predict`` and the scoring do). Class c's labels are therefore
    ``(p_c > t_c) | fallback_c``, where ``fallback_c`` marks rows whose most probable class is c
    and whose other classes are all at or below their thresholds; the search takes each class in
    turn with the others fixed (coordinate ascent, ``rounds`` passes), since moving one threshold
    changes which rows fall back.

    Every threshold that changes the labels is tried: 0 and each distinct probability of the
    class (a rare class's best threshold often lies far below 0.05). ``grid``: try only those
    values instead. Ties go to the threshold nearest 0.5, then the lower one; classes without
    positives keep 0.5.
    """
    y_true = y_true.astype(bool)
    thresholds = np.full(y_true.shape[1], 0.5)
    top = probs.argmax(axis=1)
    for _ in range(rounds):
        for c in np.flatnonzero(y_true.any(axis=0)):
            above = probs > thresholds
            above[:, c] = False
            fallback = (top == c) & ~above.any(axis=1)  # (n,)
            candidates = np.unique(np.concatenate([[0.0], probs[:, c]])) if grid is None else np.asarray(grid)
            f1 = _f1_at(candidates, probs[:, c], y_true[:, c], fallback)
            best = np.flatnonzero(f1 == f1.max())
            nearest = np.abs(candidates[best] - 0.5)
            thresholds[c] = candidates[best[np.flatnonzero(nearest == nearest.min())[0]]]
    return thresholds


def _f1_at(candidates: np.ndarray, p: np.ndarray, truth: np.ndarray, fallback: np.ndarray) -> np.ndarray:
    """F1 of one class at each candidate threshold (``p > t`` or a fallback row), counted with
    sorted probabilities: O(n log n), not a (candidates x rows) table."""
    free = ~fallback
    positives = np.sort(p[free & truth])
    negatives = np.sort(p[free & ~truth])
    fallback_tp = int((fallback & truth).sum())
    fallback_fp = int((fallback & ~truth).sum())
    tp = fallback_tp + len(positives) - np.searchsorted(positives, candidates, side="right")
    fp = fallback_fp + len(negatives) - np.searchsorted(negatives, candidates, side="right")
    fn = int(truth.sum()) - tp
    return 2 * tp / np.maximum(2 * tp + fp + fn, 1)


def crossfit_macro_f1(y_true: np.ndarray, probs: np.ndarray, seed: int = 0, choose=None) -> float:
    """Macro F1 of tuned thresholds, scored out of sample.

    The table is split in two halves at random; thresholds chosen on one half (``choose(truth,
    probs)``, default :func:`search_thresholds`) label the other, and the reverse; the macro F1
    of all those labels is the figure. Choosing and scoring on the same samples
    (``valid_macro_f1_tuned_in_sample``) overstates it, most for classes with a few positives
    per fold.
    """
    choose = choose or search_thresholds
    n = len(y_true)
    if n < 2:
        return float("nan")
    half = np.random.default_rng(seed).permutation(n) < n // 2
    pred = np.zeros_like(y_true, dtype=bool)
    for search, score in ((half, ~half), (~half, half)):
        pred[score] = predict_labels(probs[score], choose(y_true[search], probs[search]))
    return macro_f1(y_true, pred)


def f1_table(y_true: np.ndarray, y_pred: np.ndarray) -> str:
    """A per-class table: id, name, support, F1; the macro F1 last."""
    f1 = per_class_f1(y_true, y_pred)
    lines = [f"{'class':>5}  {'name':<30} {'support':>7}  {'F1':>6}"]
    for c, name in enumerate(CLASS_NAMES):
        support = int(y_true[:, c].sum())
        marked = "" if support else "  (no samples: counts as 0 in the macro F1)"
        lines.append(f"{c:>5}  {name:<30} {support:>7}  {f1[c]:6.3f}{marked}")
    lines.append(f"{'':>5}  {'macro F1':<30} {len(y_true):>7}  {f1.mean():6.3f}")
    return "\n".join(lines)
