"""Cross-validation: every fold in turn, then the out-of-fold table, thresholds and macro F1.

A cross-validation folder (``train --fold all --out CV``)::

    CV/config.yaml      the options (each fold's run folder has its own copy, with its fold)
    CV/fold<k>/         a run folder per fold, as ``train --fold k`` writes it, with its oof.csv
    CV/folds.csv        Id,fold of every sample of the store
    CV/oof.csv          Id,0..27: each sample's probabilities from the fold that did not train on it
    CV/thresholds.json  thresholds chosen on the whole out-of-fold table, and every strategy's
                        out-of-fold macro F1 (in sample and cross-fitted)
    CV/cv.json          written last: the folds, the strategy, the out-of-fold macro F1

Folds that ran apart (one per GPU or machine, ``train --fold k``) are combined the same way by
:func:`combine_runs` (``hpa-pipe thresholds``), which refuses runs whose folds disagree.
"""
from __future__ import annotations

import csv
from dataclasses import replace
from pathlib import Path

import numpy as np

from ..contract.atomic import Interrupted, write_json
from ..contract.locks import store_locked
from ..common.progress import Progress, ProgressCallback, report
from ..contract.store import Store
from .config import TrainConfig
from .probs_table import read_probs, write_probs
from .run_folder import RunError, RunFolder, config_for_run, read_config, write_config, write_fold_table
from .thresholds import choose_thresholds
from .train import with_checked_paths

def train_folds(cfg: TrainConfig, resume: bool, progress: ProgressCallback | None,
                given: set[str] | dict[str, str] | None) -> dict:
    """Train fold 0 .. folds-1 of ``cfg`` into ``<out>/fold<k>/`` (a fold with its out-of-fold
    table is finished and skipped on ``resume``), then put the folds together."""
    cfg = with_checked_paths(cfg, "cross-validation folder")
    out = Path(cfg.out)
    with store_locked(out, what="cross-validation folder"):
        cfg = _cv_config(out, cfg, resume, given)
        for k in range(cfg.folds):
            run = RunFolder(out).fold(k)
            if run.oof.exists():
                report(progress, Progress("train", message=f"fold {k + 1}/{cfg.folds}: finished, kept"))
                continue
            report(progress, Progress("train", message=f"fold {k + 1}/{cfg.folds}"))
            _train_fold(replace(cfg, fold=k, out=str(run.path)), out, progress, given)
        result = combine_runs([RunFolder(out).fold(k).path for k in range(cfg.folds)], cfg.threshold_strategy,
                              cfg.threshold_scale, cfg.seed, write_to=out)
    return {"best_valid_macro_f1": result["oof_macro_f1_crossfit"], "oof_macro_f1": result["oof_macro_f1"],
            "oof_macro_f1_crossfit": result["oof_macro_f1_crossfit"], "step": 0, "cross_validation": str(out),
            "n_samples": result["n_samples"]}


def _train_fold(cfg: TrainConfig, out: Path, progress, given) -> None:
    """One fold; an interrupt says what the whole cross-validation keeps."""
    from .train import train

    run = RunFolder(Path(cfg.out))
    try:
        train(cfg, resume=run.last.exists(), progress=progress, given=given)  # a fold not begun is new
    except Interrupted as exc:
        finished = [k for k in range(cfg.folds) if RunFolder(out).fold(k).oof.exists()]
        kept = (f"fold(s) {', '.join(str(k + 1) for k in finished)} of {cfg.folds} finished and kept"
                if finished else f"no fold of {cfg.folds} finished yet")
        raise Interrupted(f"interrupted: {out} keeps its work ({kept}; fold {cfg.fold + 1}: "
                          f"{str(exc).removeprefix('interrupted: ')}); continue with the same command and "
                          f"--resume") from None


def _started(out: Path, folds: int) -> bool:
    """Whether any fold of the cross-validation in ``out`` has finished an epoch."""
    return any(run.last.exists() or run.oof.exists() for run in (RunFolder(out).fold(k) for k in range(folds)))


def _cv_config(out: Path, cfg: TrainConfig, resume: bool, given) -> TrainConfig:
    """The options of the cross-validation: new (refused where a fold has trained already), or
    the saved ones on ``resume`` (with the options that may change). Until a fold finishes an
    epoch, the options given now replace what a failed first run saved."""
    folder = RunFolder(out)
    started = folder.config.exists() and _started(out, read_config(folder.config)[0].folds)
    if not resume and started:
        raise RunError(f"{out} already holds a cross-validation; continue it with --resume, or choose another --out")
    folder.check_writable()
    if not started:  # a new cross-validation, or one whose first run failed before any epoch
        folder.check_not_foreign(also=frozenset(folder.fold(k).path.name for k in range(cfg.folds)))
    saved = config_for_run(folder, cfg, resume, given, started=True) if started else cfg
    saved = replace(saved, fold="all")
    out.mkdir(parents=True, exist_ok=True)
    write_config(folder, saved, {})
    return saved


def _read_folds(path: Path) -> dict[str, int]:
    try:
        return {row["Id"]: int(row["fold"]) for row in csv.DictReader(path.open(newline=""))}
    except FileNotFoundError:
        raise RunError(f"{path}: missing (is this a run folder?)") from None
    except (KeyError, ValueError, csv.Error) as exc:
        raise RunError(f"{path}: not a readable folds table ({exc})") from None


def _checked_runs(runs: list[str | Path]) -> tuple[list[RunFolder], list[TrainConfig], dict[str, int]]:
    """The fold runs, their options and their common folds; runs of other splits, or two runs
    of one fold, are refused."""
    runs = [RunFolder(Path(r)) for r in runs]
    configs = [read_config(r.config)[0] for r in runs]
    folds = _read_folds(runs[0].folds)
    for run in runs[1:]:
        if _read_folds(run.folds) != folds:
            raise RunError(f"{run.path}: its folds differ from {runs[0].path}'s (another store, --folds or --seed); "
                           f"only folds of one split can be put together")
    seen = [c.fold for c in configs]
    if len(set(seen)) != len(seen):
        raise RunError(f"two runs validate the same fold ({sorted(seen)}); give each fold once")
    return runs, configs, folds


def combined_table(runs: list[str | Path]) -> tuple[list[str], np.ndarray]:
    """The runs' out-of-fold tables as one, in the store's sample order."""
    runs, configs, folds = _checked_runs(runs)
    return _combined(runs, Store.open(configs[0].store).ids, folds, configs)


def _combined(runs: list[RunFolder], store_ids: list[str], folds: dict[str, int] | None = None,
              configs: list[TrainConfig] | None = None) -> tuple[list[str], np.ndarray]:
    """The runs' out-of-fold tables as one; each table must hold its fold's validation samples
    (``folds``, where given) and ids of the store, so no sample counts twice or is left out."""
    tables = [read_probs(r.oof) for r in runs]
    position = {sample_id: k for k, sample_id in enumerate(store_ids)}
    for run, (table_ids, _), cfg in zip(runs, tables, configs or [None] * len(runs)):
        unknown = [i for i in table_ids if i not in position]
        if unknown:
            raise RunError(f"{run.oof}: id {unknown[0]} is not in the store the run trained on")
        if folds is not None and cfg is not None:
            wanted = {i for i, k in folds.items() if k == cfg.fold}
            extra = [i for i in table_ids if i not in wanted]
            if extra:
                raise RunError(f"{run.oof}: id {extra[0]} is not in fold {cfg.fold}'s validation samples")
    ids = [i for table_ids, _ in tables for i in table_ids]
    probs = np.concatenate([p for _, p in tables])
    order = np.argsort([position[i] for i in ids])
    return [ids[k] for k in order], probs[order]


def combine_runs(runs: list[str | Path], strategy: str = "f1", scale: float = 1.0, seed: int = 0,
                 write_to: str | Path | None = None) -> dict:
    """Put the out-of-fold tables of fold runs together and choose thresholds on the whole;
    with ``write_to``, also write its ``oof.csv``, ``folds.csv``, ``thresholds.json`` and ``cv.json``."""
    runs, configs, folds = _checked_runs(runs)
    store = Store.open(configs[0].store)
    store_ids = store.ids
    ids, probs = _combined(runs, store_ids, folds, configs)
    labels = store.labels()
    position = {sample_id: k for k, sample_id in enumerate(store_ids)}
    truth = labels[[position[i] for i in ids]]
    shares = labels[store.done()].mean(axis=0)  # the training labels' share of each class (ratio)
    result = choose_thresholds(truth, probs, strategy, scale, shares, seed)
    result.update({"runs": [str(r.path) for r in runs], "folds": sorted(c.fold for c in configs),
                   "n_samples": len(ids), "n_folds": 1 + max(folds.values()), "store": configs[0].store})
    if write_to is not None:
        _write_cross_validation(Path(write_to), runs, ids, probs, folds, store_ids, result)
    return result


def _write_cross_validation(out: Path, runs, ids, probs, folds, store_ids, result) -> None:
    folder = RunFolder(out)
    write_probs(folder.oof, ids, probs)
    write_fold_table(folder.folds, ((i, folds[i]) for i in store_ids if i in folds))
    write_json(folder.thresholds, result)
    write_json(folder.cv_record, {"runs": [r.path.name for r in runs], "strategy": result["strategy"],
                               "oof_macro_f1": result["oof_macro_f1"],
                               "oof_macro_f1_crossfit": result["oof_macro_f1_crossfit"]})
