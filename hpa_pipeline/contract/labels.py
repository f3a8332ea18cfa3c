"""The 28 HPA classes, the four filters, and strict parsing of the competition's CSV files.

Shared by every stage (the store contract: Labels). Parsing is strict on purpose: a label
outside 0-27, an empty target or a non-numeric token is an error that names the CSV row,
because a silently dropped label is a silently wrong model.
"""
from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from .errors import HpaError
from .atomic import replacing

CLASS_NAMES: tuple[str, ...] = (
    "Nucleoplasm", "Nuclear membrane", "Nucleoli", "Nucleoli fibrillar center",
    "Nuclear speckles", "Nuclear bodies", "Endoplasmic reticulum", "Golgi apparatus",
    "Peroxisomes", "Endosomes", "Lysosomes", "Intermediate filaments", "Actin filaments",
    "Focal adhesion sites", "Microtubules", "Microtubule ends", "Cytokinetic bridge",
    "Mitotic spindle", "Microtubule organizing center", "Centrosome", "Lipid droplets",
    "Plasma membrane", "Cell junctions", "Mitochondria", "Aggresome", "Cytosol",
    "Cytoplasmic bodies", "Rods & rings",
)
N_CLASSES = len(CLASS_NAMES)

#: Channel order of every store and model input (the store contract). The filter names are the
#: suffixes of the competition's file names ``<id>_<filter>.tif``.
FILTERS: tuple[str, ...] = ("red", "green", "blue", "yellow")

#: Image file and archive member names: ``<id>_<filter>.<tif|tiff|png|jpg|jpeg>``, the suffix in
#: any case, the filter in lower case (the store contract matches on the file name, never on its folder).
MEMBER_NAME = re.compile(r"^(?P<id>.+)_(?P<filter>red|green|blue|yellow)\.(?i:tiff?|png|jpe?g)$")

#: Label counts of the real train.csv (31,072 samples), used to draw realistic label sets
#: when no real train.csv is given.
REAL_CLASS_COUNTS: tuple[int, ...] = (
    12885, 1254, 3621, 1561, 1858, 2513, 1008, 2822, 53, 45, 28, 1093, 688, 537,
    1066, 21, 530, 210, 902, 1482, 172, 3777, 802, 2965, 322, 8228, 328, 11,
)
REAL_N_SAMPLES = 31072


class LabelError(HpaError, ValueError):
    """A CSV row whose id or target breaks the label rules of the store contract."""


@dataclass(frozen=True)
class SampleTable:
    """Ids in file order and, for train.csv, their label sets.

    ``labels`` is ``None`` for ``sample_submission.csv`` (ids only).
    """

    ids: tuple[str, ...]
    labels: tuple[tuple[int, ...], ...] | None

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def has_labels(self) -> bool:
        return self.labels is not None

    def label_matrix(self) -> np.ndarray:
        """``(n, 28)`` bool one-hot matrix of the label sets."""
        if self.labels is None:
            raise LabelError("this table has no labels (a sample_submission.csv)")
        return labels_to_matrix(self.labels)


#: What a sample id may be: letters, digits, ``_``, ``-`` and ``.``, starting with a letter or a
#: digit, at most 200 characters. It admits the competition's UUIDs
#: (``00070df0-bbc3-11e8-b2bc-ac1f6b6435d0``) and HPA v18's ``10580_1610_C1_1``, and nothing that
#: could leave a folder when an id becomes a file name (``/``, ``\\``, ``..``, a leading dot).
SAMPLE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,199}$")


def check_sample_id(sample_id: str, where: str) -> None:
    """:class:`LabelError` naming ``where`` unless ``sample_id`` matches :data:`SAMPLE_ID`."""
    if not isinstance(sample_id, str) or not SAMPLE_ID.match(sample_id) or ".." in sample_id:
        raise LabelError(f"{where}: id {sample_id!r} is not a sample id (letters, digits, '_', '-' and '.', "
                         f"starting with a letter or digit, at most 200 characters)")


def parse_target(text: object, where: str) -> tuple[int, ...]:
    """Parse a space-separated target such as ``"16 0"`` into sorted unique class ids.

    ``where`` names the row in the error message, e.g. ``"train.csv row 12 (id abc)"``.
    """
    if not isinstance(text, str) or not text.strip():
        raise LabelError(f"{where}: empty target")
    out = set()
    for token in text.split():
        if not (token.isascii() and token.isdigit()):  # "²" and "٣" are digits to str.isdigit
            raise LabelError(f"{where}: label {token!r} is not a non-negative integer")
        value = int(token)
        if value >= N_CLASSES:
            raise LabelError(f"{where}: label {value} is outside 0-{N_CLASSES - 1}")
        out.add(value)
    return tuple(sorted(out))


def format_target(classes) -> str:
    """Inverse of :func:`parse_target`: ascending, space-separated."""
    return " ".join(str(int(c)) for c in sorted(set(int(c) for c in classes)))


def read_sample_table(csv_path: str | Path) -> SampleTable:
    """Read ``train.csv`` (``Id,Target``) or ``sample_submission.csv`` (``Id,Predicted``).

    The file order fixes the sample order of the store. Duplicate or empty ids and bad
    targets raise :class:`LabelError` naming the line of the file (the header is line 1), as
    an editor numbers it.
    A ``Predicted`` column is ignored: it is a placeholder in sample_submission.csv.
    """
    csv_path = Path(csv_path)
    table = read_csv_table(csv_path)
    if "Id" not in table.columns:
        raise LabelError(f"{csv_path}: no 'Id' column (columns: {list(table.columns)})")
    has_labels = "Target" in table.columns
    ids, labels, seen = [], [], {}
    for row, sample_id, target in zip(table.lines, table["Id"],
                                      table["Target"] if has_labels else [None] * len(table)):
        sample_id = sample_id.strip()
        where = f"{csv_path.name} line {row} (id {sample_id or '<empty>'})"
        if not sample_id:
            raise LabelError(f"{where}: empty id")
        check_sample_id(sample_id, where)
        if sample_id in seen:
            raise LabelError(f"{where}: duplicate id, first seen on line {seen[sample_id]}")
        seen[sample_id] = row
        ids.append(sample_id)
        if has_labels:
            labels.append(parse_target(target, where))
    if not ids:
        raise LabelError(f"{csv_path}: no samples (only a header)")
    return SampleTable(tuple(ids), tuple(labels) if has_labels else None)


class CsvTable:
    """A CSV read as strings: ``columns``, ``table[column]`` (a list of cells), ``len(table)``
    and ``lines``, the line of the file each row starts on (for messages).

    The standard library's reader, not pandas: importing pandas took a third of every
    preprocessing command's start-up, for files of two columns.
    """

    def __init__(self, columns: list[str], rows: list[list[str]], lines: list[int] | None = None):
        self.columns, self.rows = columns, rows
        self.lines = lines if lines is not None else list(range(2, len(rows) + 2))

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, column: str) -> list[str]:
        k = self.columns.index(column)
        return [row[k] if k < len(row) else "" for row in self.rows]


def check_source_matches(table: SampleTable, found: Collection[str], csv: str | Path, source: str | Path) -> None:
    """Refuse a CSV none of whose ids the source holds, while it holds samples of its own.

    Why: every sample would fail one by one, and the store made for the CSV's ids would then
    refuse the right CSV ("holds other ids"), leaving the user a store to delete. A source
    with no samples at all fails every sample as before (the report says "not in archive").
    """
    if not found or not table.ids or not set(found).isdisjoint(table.ids):
        return
    example = sorted(found)[0]
    raise LabelError(f"none of the {len(table)} ids of {Path(csv).name} is in {Path(source).name} "
                     f"({len(found)} samples there, e.g. {example}): is this the CSV for it?")


def read_csv_table(csv_path: Path) -> CsvTable:
    """All cells as strings; an empty, unreadable or non-CSV file is a :class:`LabelError`."""
    import csv

    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            rows, lines, line = [], [], 1
            for row in reader:
                if row:  # blank lines are skipped
                    rows.append(row)
                    lines.append(line)
                line = reader.line_num + 1  # the next row starts after this one (quoted fields span lines)
    except UnicodeDecodeError as exc:
        raise LabelError(f"{csv_path}: not a readable CSV (not UTF-8 text: {exc.reason})") from None
    except csv.Error as exc:
        raise LabelError(f"{csv_path}: not a readable CSV ({exc})") from None
    except OSError as exc:
        raise LabelError(f"{csv_path}: cannot read ({exc.strerror})") from None
    if not rows:
        raise LabelError(f"{csv_path}: empty file (expected a header such as Id,Target)")
    header = [name.strip() for name in rows[0]]
    for number, row in zip(lines[1:], rows[1:]):
        if len(row) > len(header):
            raise LabelError(f"{csv_path.name} line {number}: {len(row)} fields, the header has {len(header)}")
    return CsvTable(header, rows[1:], lines[1:])


def labels_to_matrix(label_sets) -> np.ndarray:
    """``(n, 28)`` bool one-hot matrix from an iterable of class-id tuples."""
    label_sets = list(label_sets)
    matrix = np.zeros((len(label_sets), N_CLASSES), dtype=bool)
    for i, classes in enumerate(label_sets):
        matrix[i, list(classes)] = True
    return matrix


def write_labels_csv(path: str | Path, ids, label_sets, column: str = "Target") -> None:
    """Write ``Id,<column>`` rows with ascending space-separated labels."""
    import csv

    with replacing(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["Id", column])
        writer.writerows([sample_id, format_target(c)] for sample_id, c in zip(ids, label_sets))
