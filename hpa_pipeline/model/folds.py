"""Multilabel stratified K folds (iterative stratification, Sechidis et al. 2011), saved in a run.

With ``groups`` (near-duplicates: :mod:`..contract.duplicates`), each group of two or more
samples is stratified as one sample with the union of its labels, and all its members get that
fold: a group never straddles training and validation, so a duplicate cannot leak a validation
sample into training. Without groups (or with none larger than one) the folds are exactly those
of the plain stratification.
"""
from __future__ import annotations

import numpy as np


def make_folds(labels: np.ndarray, k: int = 5, seed: int = 0, groups: np.ndarray | None = None) -> np.ndarray:
    """``(n,)`` fold number of each sample, with every class spread evenly over the folds."""
    from iterstrat.ml_stratifiers import MultilabelStratifiedKFold

    if k < 2:
        raise ValueError("at least 2 folds are needed")
    labels = np.asarray(labels) > 0.5
    groups = np.arange(len(labels)) if groups is None else np.asarray(groups)
    keys, member_of = np.unique(groups, return_inverse=True)
    if len(keys) == len(labels):  # no group of two or more: the plain stratification, sample by sample
        units, unit_labels = np.arange(len(labels)), labels
    else:
        units = member_of
        unit_labels = np.zeros((len(keys), labels.shape[1]), bool)
        np.logical_or.at(unit_labels, member_of, labels)
    folds_of_units = np.full(len(unit_labels), -1, dtype=np.int64)
    splitter = MultilabelStratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    for fold, (_, valid) in enumerate(splitter.split(np.zeros(len(unit_labels)), unit_labels.astype(int))):
        folds_of_units[valid] = fold
    return folds_of_units[units]
