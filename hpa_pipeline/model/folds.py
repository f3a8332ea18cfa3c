"""Multilabel stratified K folds (iterative stratification, Sechidis et al. 2011), saved in a run."""
from __future__ import annotations

import numpy as np


def make_folds(labels: np.ndarray, k: int = 5, seed: int = 0) -> np.ndarray:
    """``(n,)`` fold number of each sample, with every class spread evenly over the folds."""
    from iterstrat.ml_stratifiers import MultilabelStratifiedKFold

    if k < 2:
        raise ValueError("at least 2 folds are needed")
    folds = np.full(len(labels), -1, dtype=np.int64)
    splitter = MultilabelStratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    for fold, (_, valid) in enumerate(splitter.split(np.zeros(len(labels)), labels.astype(int))):
        folds[valid] = fold
    return folds
