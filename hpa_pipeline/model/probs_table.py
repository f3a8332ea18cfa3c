"""Tables of class probabilities: ``oof.csv`` (out of fold) and ``predict --probs``.

``Id`` then 28 columns named ``0`` ... ``27``, one row per sample, probabilities in [0, 1]
written with 6 decimals. Written whole (a temporary name, then a rename); read back with every
row checked, so a damaged table is one line naming the file and row.
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from ..contract.atomic import replacing
from ..contract.labels import N_CLASSES
from .run_folder import RunError

COLUMNS = ["Id", *map(str, range(N_CLASSES))]


def write_probs(path: str | Path, ids: list[str], probs: np.ndarray) -> Path:
    with replacing(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(COLUMNS)
        for sample_id, row in zip(ids, probs):
            writer.writerow([sample_id, *(f"{p:.6f}" for p in row)])
    return Path(path)


def read_probs(path: str | Path) -> tuple[list[str], np.ndarray]:
    """``(ids, (n, 28) float probabilities)`` of a table; every id once."""
    path = Path(path)
    try:
        with open(path, newline="") as f:
            rows = list(csv.reader(f))
    except FileNotFoundError:
        raise RunError(f"{path}: no such probability table") from None
    except (csv.Error, UnicodeDecodeError) as exc:
        raise RunError(f"{path}: not a readable probability table ({exc})") from None
    if not rows or rows[0] != COLUMNS:
        raise RunError(f"{path}: expected the columns Id,0,...,{N_CLASSES - 1}")
    ids, probs, seen = [], np.empty((len(rows) - 1, N_CLASSES)), set()
    for n, row in enumerate(rows[1:], start=2):
        try:
            values = np.array(row[1:], dtype=np.float64)
        except ValueError:
            values = np.array([])
        if len(row) != N_CLASSES + 1 or values.shape != (N_CLASSES,) or not np.all((values >= 0) & (values <= 1)):
            raise RunError(f"{path} line {n}: expected an id and {N_CLASSES} probabilities in [0, 1]")
        if row[0] in seen:
            raise RunError(f"{path} line {n}: id {row[0]} appears a second time (every sample once)")
        seen.add(row[0])
        ids.append(row[0])
        probs[n - 2] = values
    return ids, probs
