"""Kaggle submissions: writing, reading and checking them, and ``evaluate`` (macro F1).

Submission format (the store contract): ``Id,Predicted``, one row per id of the test store in its order
(the order of sample_submission.csv), labels ascending and space-separated; a row with nothing
above its class threshold gets its most probable class.

No torch here: ``hpa-pipe evaluate`` starts without it.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..contract.labels import (N_CLASSES, LabelError, parse_target, read_csv_table, read_sample_table,
                               write_labels_csv)
from .metrics import f1_table, macro_f1, predict_labels
from ..contract.errors import HpaError
from ..contract.atomic import replacing


class SubmissionError(HpaError, ValueError):
    """A malformed submission: names the row and what is wrong."""


def write_submission(path: str | Path, ids: list[str], labels: np.ndarray) -> Path:
    """Write the submission under a temporary name, check it, then rename it over ``path``: a
    full disk or a kill leaves the earlier submission as it was."""
    with replacing(path) as tmp:
        write_labels_csv(tmp, ids, [np.flatnonzero(row) for row in labels], column="Predicted")
        validate_submission(tmp, ids)
    return Path(path)


def read_submission(path: str | Path) -> tuple[list[str], np.ndarray]:
    """Ids and ``(n, 28)`` bool labels of a submission; every malformed row is an error naming
    its line."""
    path = Path(path)
    try:
        table = read_csv_table(path)
    except LabelError as exc:
        raise SubmissionError(str(exc)) from None
    if list(table.columns) == ["Id", *map(str, range(N_CLASSES))]:
        raise SubmissionError(f"{path} is a probability table (Id, 0 ... {N_CLASSES - 1}), not a submission; "
                              "give the thresholds that label it with --thresholds (e.g. the run's "
                              "thresholds.json)")
    if list(table.columns) != ["Id", "Predicted"]:
        raise SubmissionError(f"{path}: columns are {list(table.columns)}, expected ['Id', 'Predicted']")
    labels = np.zeros((len(table), N_CLASSES), bool)
    seen = {}
    for row, (line, sample_id, predicted) in enumerate(zip(table.lines, table["Id"], table["Predicted"])):
        where = f"{path.name} line {line} (id {sample_id or '<empty>'})"
        if sample_id in seen:
            raise SubmissionError(f"{where}: duplicate id, first on line {seen[sample_id]}")
        seen[sample_id] = line
        try:
            labels[row, list(parse_target(predicted, where))] = True
        except LabelError as exc:
            raise SubmissionError(str(exc)) from None
    return list(table["Id"]), labels


def check_ids(path: str | Path, ids: list[str], expected_ids, source: str) -> None:
    """Every id of a submission is one of ``expected_ids``, once, and none of them is missing."""
    repeated = first_repeated(ids)
    if repeated is not None:
        raise SubmissionError(f"{Path(path).name}: id {repeated} appears more than once")
    expected = set(expected_ids)
    for sample_id in ids:
        if sample_id not in expected:
            raise SubmissionError(f"{Path(path).name}: id {sample_id} is not in {source}")
    if len(ids) != len(expected):
        present = set(ids)
        missing = [i for i in expected_ids if i not in present]
        raise SubmissionError(f"{Path(path).name}: {len(missing)} ids of {source} missing, e.g. {missing[:3]}")


def first_repeated(ids: list[str]) -> str | None:
    """The first id that appears a second time, or None."""
    seen = set()
    for sample_id in ids:
        if sample_id in seen:
            return sample_id
        seen.add(sample_id)
    return None


def validate_submission(path: str | Path, expected_ids: list[str]) -> None:
    """Same ids as expected, in the same order, each row well formed."""
    ids, _ = read_submission(path)
    check_ids(path, ids, expected_ids, "the test store")
    if ids != list(expected_ids):
        raise SubmissionError(f"{Path(path).name}: rows are not in the order of the sample submission")


def evaluate(submission: str | Path, labels_csv: str | Path, thresholds: str | Path | None = None) -> tuple[float, str]:
    """Macro F1 of a submission against a labels CSV (``Id,Target``), and the per-class table.

    With ``thresholds`` (a ``thresholds.json``), ``submission`` is a probability table (``oof.csv``,
    ``predict --probs``) labelled by them under the empty-row rule, as ``predict`` would."""
    truth_table = read_sample_table(labels_csv)
    if not truth_table.has_labels:
        raise SubmissionError(f"{labels_csv}: no Target column to score against")
    if thresholds is not None:
        from .inference import read_thresholds
        from .probs_table import read_probs

        ids, probs = read_probs(submission)
        predicted = predict_labels(probs, read_thresholds(Path(thresholds)))
    else:
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
