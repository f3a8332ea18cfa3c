"""``duplicates``: near-duplicate samples within and across stores (train, test, external).

Each store's ``phash`` (written by ingest and build-zarr) is compared by the rule of
:mod:`..contract.duplicates`. A store written before hashes were stored has them computed here
from its smallest level. The pairs go to a CSV (``store_a,id_a,store_b,id_b,distance``) with a
summary: how many groups, how many pairs whose labels disagree, and how many test samples
duplicate a training sample (a leak a validation score would not show).
"""
from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..contract.atomic import replacing
from ..contract.duplicates import DEFAULT_MAX_DISTANCE, find_pairs, groups_of
from ..common.progress import Counter, ProgressCallback
from ..contract.store import Store
from .hashing import sample_hashes


@dataclass
class StoreHashes:
    store: str
    ids: list[str]
    hashes: np.ndarray  # (n, 4) uint64; all zero for samples not done
    labels: np.ndarray | None  # (n, 28) bool, None for a test store


@dataclass
class DuplicateReport:
    pairs: list[tuple[str, str, str, str, int]] = field(default_factory=list)
    groups: int = 0  # groups of two or more samples
    label_conflicts: int = 0  # pairs of labelled samples whose labels differ
    test_leaks: int = 0  # pairs of a labelled (training) sample and an unlabelled (test) one
    computed: list[str] = field(default_factory=list)  # stores whose hashes were computed here

    def summary(self) -> str:
        computed = f"; hashes computed from the images of {', '.join(self.computed)}" if self.computed else ""
        return (f"{len(self.pairs)} pairs in {self.groups} groups; {self.label_conflicts} pairs with other labels; "
                f"{self.test_leaks} test samples that duplicate a training sample{computed}")


def read_hashes(path: str, progress: ProgressCallback | None = None) -> tuple[StoreHashes, bool]:
    """A store's hashes (computed from its smallest level where it has none); True when computed."""
    store = Store.open(path)
    done = store.done()
    hashes = store.phash()
    missing = np.flatnonzero(done & ~hashes.any(axis=1))
    if len(missing):
        smallest = min(store.levels())
        reader, counter = store.reader(smallest), Counter(progress, "hash", len(missing))
        counter.start()
        for index in missing:
            hashes[index] = sample_hashes({smallest: reader.read(int(index))})
            counter.add()
    hashes[~done] = 0
    return StoreHashes(str(path), list(store.ids), hashes, store.labels()), bool(len(missing))


def find_duplicates(stores: list[str], max_distance: int = DEFAULT_MAX_DISTANCE,
                    progress: ProgressCallback | None = None) -> DuplicateReport:
    """Every pair of matching samples within each store and across each two of ``stores``."""
    report = DuplicateReport()
    read = []
    for store in stores:
        hashes, computed = read_hashes(store, progress)
        read.append(hashes)
        if computed:
            report.computed.append(store)
    offsets = np.cumsum([0] + [len(h.ids) for h in read])
    every = []
    for a, ha in enumerate(read):
        for b in range(a, len(read)):
            hb = read[b]
            for i, j, d in find_pairs(ha.hashes, None if a == b else hb.hashes, max_distance):
                report.pairs.append((ha.store, ha.ids[i], hb.store, hb.ids[j], int(d)))
                every.append((offsets[a] + i, offsets[b] + j))
                _count(report, ha, int(i), hb, int(j))
    groups = groups_of(int(offsets[-1]), np.array(every, dtype=np.int64).reshape(-1, 2))
    report.groups = int(sum(np.bincount(groups) > 1))
    return report


def _count(report: DuplicateReport, ha: StoreHashes, i: int, hb: StoreHashes, j: int) -> None:
    if ha.labels is not None and hb.labels is not None and not np.array_equal(ha.labels[i], hb.labels[j]):
        report.label_conflicts += 1
    if (ha.labels is None) != (hb.labels is None):
        report.test_leaks += 1


def write_pairs(path: str | Path, report: DuplicateReport) -> Path:
    with replacing(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["store_a", "id_a", "store_b", "id_b", "distance"])
        writer.writerows(report.pairs)
    return Path(path)
