"""Planning a training run: everything checked, nothing written.

:func:`plan_run` opens the train store once, checks its labels and levels, the fold, the
weights and the run folder, draws the folds (keeping near-duplicates together) and sorts out
the ``--external`` stores (their duplicates of validation samples, or of training samples with
other labels, are left out). A failed check raises before the run folder is touched.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..contract.duplicates import find_pairs, groups_of
from ..contract.store import Store
from .config import TrainConfig
from .models import resolve_weights
from .run_folder import RunError, RunFolder, plan_folds, read_config


@dataclass
class Plan:
    """What the checks found: the store's ids and labels, the folds, the normalisation."""

    ids: list[str]
    labels: np.ndarray  # (n, 28) float32
    folds: np.ndarray  # (n,) fold of each sample
    train_idx: np.ndarray
    valid_idx: np.ndarray
    normalization: dict  # {"level", "mean", "std", "dtype"}: the training level's channel statistics
    external: list  # (store, done sample indices, their labels) of each --external store
    external_left_out: list  # (store, id, why) of the external samples left out as duplicates
    store: Store  # the train store, opened once: the datasets read through it

    @property
    def training_shares(self) -> np.ndarray:
        """Each class's share among the training samples of the store (what ``ratio`` matches)."""
        return (self.labels[self.train_idx] > 0.5).mean(axis=0)


def plan_run(cfg: TrainConfig, run: RunFolder) -> Plan:
    """Check the store, its labels and levels, the fold, the weights and the run folder; raise a
    clear error on the first problem, before anything is written."""
    store = open_labelled_store(cfg.store, {"--level": cfg.level, "--val-level": cfg.val_level or cfg.level},
                                "--store")
    resolve_weights(cfg.arch, cfg.weights)  # a missing weights file fails now, not after set-up
    if cfg.init_from and not RunFolder(Path(cfg.init_from)).best.exists():
        raise RunError(f"--init-from {cfg.init_from}: no checkpoints/best.pt there (give a run folder; for a "
                       f"cross-validation, one of its fold<k> folders)")
    done = store.done()
    labels = store.labels().astype(np.float32)
    hashes = store_hashes(store) if cfg.group_duplicates else None
    groups = None if hashes is None else groups_of(len(done), find_pairs(hashes, None, cfg.duplicate_distance))
    folds = plan_folds(run, store.ids, labels, cfg.folds, cfg.seed, groups)
    train_idx = np.flatnonzero((folds != cfg.fold) & done)
    valid_idx = np.flatnonzero((folds == cfg.fold) & done)
    if len(valid_idx) == 0:
        raise RunError(f"fold {cfg.fold} of {cfg.store} has no finished samples to validate on")
    level_stats = store.statistics[cfg.level]
    normalization = {"level": cfg.level, "mean": list(level_stats.mean), "std": list(level_stats.std),
                     "dtype": store.dtype, "sizes": list(store.sizes)}
    check_same_training_data(run, cfg.store, normalization)
    main = MainStore(list(store.ids), hashes, labels, folds == cfg.fold, cfg.duplicate_distance)
    external = [plan_external(path, cfg.level, set(store.ids), store.dtype, main) for path in cfg.external]
    return Plan(list(store.ids), labels, folds, train_idx, valid_idx, normalization,
                [e[:3] for e in external], [row for e in external for row in e[3]], store)


def check_same_training_data(run: RunFolder, store: str, normalization: dict) -> None:
    """A resumed run goes on with the data it started on: the same dtype and the same channel
    statistics at its level (a store of other content under the same ids is refused by name)."""
    if not run.config.exists() or not run.last.exists():  # nothing trained yet: nothing to stay with
        return
    _, saved = read_config(run.config)
    if not saved:
        return
    if saved["dtype"] != normalization["dtype"]:
        raise RunError(f"--store {store} is {normalization['dtype']}, but {run.path} trained on "
                       f"{saved['dtype']} images; resume with the store it trained on")
    if not np.allclose(saved["mean"], normalization["mean"]) or not np.allclose(saved["std"], normalization["std"]):
        raise RunError(f"--store {store}: its level-{normalization['level']} statistics differ from those "
                       f"{run.path} trained with (mean {normalization['mean']} vs {saved['mean']}): another store, "
                       f"or one changed since; resume with the data it trained on, or start a new run")


def samples_message(cfg: TrainConfig, plan: Plan, n_samples: int) -> str:
    """How many samples the run uses, and how many of the store it leaves out (not done)."""
    used = len(plan.train_idx) + len(plan.valid_idx)
    external = sum(len(done) for _, done, _ in plan.external)
    left_out = n_samples - used
    return (f"training on {len(plan.train_idx)} samples" + (f" (+{external} external)" if external else "")
            + f", validating on {len(plan.valid_idx)} (fold {cfg.fold})"
            + (f"; {left_out} samples of {cfg.store} are not done (failed or missing: see its report.json) and "
               f"are left out" if left_out else "")
            + (f"; {len(plan.external_left_out)} external samples left out as duplicates (listed in "
               f"external_left_out.csv)" if plan.external_left_out else ""))


def open_labelled_store(path: str, levels: dict[str, int], role: str) -> Store:
    """The store at ``path``; it must have labels and each level (with statistics)."""
    store = Store.open(path)
    if not store.has_labels:
        raise RunError(f"{role} {path} has no labels: train needs a train store")
    stats = store.statistics
    for name, level in levels.items():
        if level not in stats:
            raise RunError(f"{role} {path} has no level {level} with statistics ({name}); "
                           f"levels: {sorted(stats)}")
    return store


def store_hashes(store: Store) -> np.ndarray | None:
    """A store's ``(n, 4)`` perceptual hashes, zero for samples not done; None for a store
    written before hashes were stored (no duplicates are then known)."""
    if not store.has_phash:
        return None
    hashes = store.phash()
    hashes[~store.done()] = 0
    return hashes


@dataclass
class MainStore:
    """What the external stores are checked against: the train store's hashes and labels, and
    which of its samples validate in this fold."""

    ids: list[str]
    hashes: np.ndarray | None
    labels: np.ndarray
    validating: np.ndarray
    max_distance: int


def external_left_out(hashes: np.ndarray | None, labels: np.ndarray, main: MainStore) -> dict[int, str]:
    """External samples to leave out, with why: a duplicate of a validation sample (it would
    leak it into training), or of a training sample whose labels differ (the competition's
    label wins over the external one)."""
    if hashes is None or main.hashes is None:
        return {}
    left = {}
    for i, j, _ in find_pairs(hashes, main.hashes, main.max_distance):
        if main.validating[j]:
            left[int(i)] = f"duplicates validation sample {main.ids[j]}"
        elif not np.array_equal(labels[i] > 0.5, main.labels[j] > 0.5):
            left.setdefault(int(i), f"duplicates training sample {main.ids[j]} with other labels (the "
                                    f"competition's labels win)")
    return left


def plan_external(path: str, level: int, main_ids: set[str], dtype: str, main: MainStore) -> tuple:
    """An external store's finished samples and labels, less its duplicates of validation
    samples and its disagreeing duplicates (:func:`external_left_out`); with the rows
    ``(store, id, reason)`` left out. It must have labels, the level and the main store's dtype,
    and share no id with it (a sample in both would leak into validation)."""
    store = open_labelled_store(path, {"--level": level}, "--external")
    if store.dtype != dtype:
        raise RunError(f"--external {path} is {store.dtype} and --store is {dtype}: their pixel values "
                       f"are on other scales; build both with the same --dtype")
    shared = main_ids.intersection(store.ids)
    if shared:
        raise RunError(f"--external {path} shares {len(shared)} id(s) with --store (e.g. {sorted(shared)[0]}): "
                       f"they would be in validation and in training")
    labels = store.labels().astype(np.float32)
    left = external_left_out(store_hashes(store), labels, main) if main.hashes is not None else {}
    done = np.array([i for i in np.flatnonzero(store.done()) if int(i) not in left], dtype=np.int64)
    rows = [(str(path), store.ids[i], why) for i, why in sorted(left.items())]
    return store, done, labels[done], rows
