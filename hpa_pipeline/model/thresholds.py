"""Per-class thresholds from out-of-fold probabilities, as the competition's top solutions chose them.

``f1``     per class, the threshold that maximises F1 on the table under the empty-row rule
           (:func:`.metrics.search_thresholds`), optionally scaled (2nd place scaled by 0.7);
``ratio``  per class, the threshold at which the share of rows predicted positive equals the
           class's share in the training labels (1st and 3rd place). ``predict`` matches the
           shares again on the set it predicts (:func:`rematched`): averaging folds shrinks
           test probabilities, so thresholds fixed on the out-of-fold table predict too few;
``fixed``  0.5 for every class.

Every strategy is applied with the empty-row rule (a row with no label gets its most probable
class; :func:`.metrics.predict_labels`). Each strategy's macro F1 is also reported cross-fitted
(chosen on one half of the table, scored on the other), so that the figure a user quotes is
not scored on the rows it was chosen on.
"""
from __future__ import annotations

from functools import partial

import numpy as np

from ..contract.errors import OptionError
from .metrics import (crossfit_macro_f1, label_table, macro_f1, predict_labels, probability_table,
                      search_thresholds)
from .names import RATIO_ON, STRATEGIES


def f1_thresholds(truth: np.ndarray, probs: np.ndarray, scale: float = 1.0) -> np.ndarray:
    return np.clip(search_thresholds(truth, probs) * scale, 0.0, 1.0)


def ratio_thresholds(truth: np.ndarray, probs: np.ndarray, shares: np.ndarray | None = None) -> np.ndarray:
    """Thresholds that predict each class for its share of rows: ``shares`` (the training
    labels'), by default the table's own truth."""
    shares = truth.mean(axis=0) if shares is None else np.asarray(shares, dtype=np.float64)
    thresholds = np.ones(probs.shape[1])
    for c, share in enumerate(shares):
        if share > 0:
            thresholds[c] = float(np.quantile(probs[:, c], 1.0 - share))
    return np.clip(thresholds, 0.0, 1.0)


def fixed_thresholds(truth: np.ndarray, probs: np.ndarray) -> np.ndarray:
    return np.full(probs.shape[1], 0.5)


def chooser(strategy: str, scale: float = 1.0, shares: np.ndarray | None = None):
    """``choose(truth, probs) -> thresholds`` of a strategy."""
    if strategy == "f1":
        return partial(f1_thresholds, scale=scale)
    if strategy == "ratio":
        return partial(ratio_thresholds, shares=shares)
    if strategy == "fixed":
        return fixed_thresholds
    raise OptionError(f"unknown threshold strategy {strategy!r}; choose from {STRATEGIES}")


def choose_thresholds(truth: np.ndarray, probs: np.ndarray, strategy: str = "f1", scale: float = 1.0,
                      shares: np.ndarray | None = None, seed: int = 0) -> dict:
    """The strategy's thresholds on the whole table, with the macro F1 of every strategy: in
    sample, and cross-fitted (the honest figure)."""
    truth = label_table("truth", truth)
    probs = probability_table("probs", probs, like=truth)
    thresholds = chooser(strategy, scale, shares)(truth, probs)
    scores = {}
    for name in STRATEGIES:
        choose = chooser(name, scale, shares)
        scores[name] = {"macro_f1_in_sample": macro_f1(truth, predict_labels(probs, choose(truth, probs))),
                        "macro_f1_crossfit": crossfit_macro_f1(truth, probs, seed, chooser(name, scale))}
    return {"strategy": strategy, "scale": scale if strategy == "f1" else None, "thresholds": thresholds.tolist(),
            "shares": None if shares is None else np.asarray(shares, dtype=np.float64).tolist(),
            "oof_macro_f1": scores[strategy]["macro_f1_in_sample"],
            "oof_macro_f1_crossfit": scores[strategy]["macro_f1_crossfit"], "strategies": scores}


def rematched(record: dict, probs: np.ndarray, ratio_on: str = "predicted") -> tuple[np.ndarray, str]:
    """The thresholds to label ``probs`` with, and a line saying which. A ``ratio`` record with
    its training shares is matched again on ``probs`` (``ratio_on="predicted"``); any other
    record, or ``ratio_on="oof"``, gives its thresholds as they are."""
    if ratio_on not in RATIO_ON:
        raise OptionError(f"--ratio-on must be one of {', '.join(RATIO_ON)}, not {ratio_on!r}")
    fixed = np.asarray(record["thresholds"], dtype=np.float64)
    shares = record.get("shares")
    if record.get("strategy") != "ratio" or shares is None or ratio_on == "oof":
        return fixed, f"thresholds: {record.get('strategy') or 'as saved'}, as chosen on the validation samples"
    return (ratio_thresholds(None, probs, np.asarray(shares, dtype=np.float64)),
            f"thresholds: ratio, matched on the {len(probs)} predicted samples to each class's training share")
