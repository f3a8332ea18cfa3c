"""A run folder: everything about one training run, and the rules for reusing one.

::

    runs/f0/
      config.yaml          every option of the run, and the channel statistics it normalised with
      folds.csv            Id,fold: multilabel stratified folds of the whole store
      metrics.csv          one row per finished epoch (TensorBoard too, when installed)
      thresholds.json      per-class thresholds of the best epoch and its honest figures
      f1_table.txt         per-class F1 of the best epoch
      curves.png, per_class_f1.png
      checkpoints/last.pt  the whole training state (resume); best.pt: the weights to predict with

Rules (each checked before anything is written, so a failed command leaves the folder as it
was): a new run may not start in a folder that holds one (``--resume`` continues it); a resumed
run takes its saved options, and options given again that differ are an error listing them
(only :data:`FREE_ON_RESUME` may change); ``folds.csv`` must belong to the same store, number of
folds and seed.
"""
from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import yaml

from ..contract.atomic import replacing
from .config import TrainConfig
from .folds import make_folds
from ..contract.errors import HpaError
from ..common.yaml_files import load_yaml

#: options that change how a run is executed, not what it computes; a resume may change them
FREE_ON_RESUME = ("store", "out", "workers", "device")


class RunError(HpaError, ValueError):
    """A run folder that cannot be used as asked; says why and what to do."""


#: the names of a run folder's files, each defined once (:class:`RunFolder` builds every path from these)
CONFIG_NAME = "config.yaml"
FOLDS_NAME = "folds.csv"
METRICS_NAME = "metrics.csv"
THRESHOLDS_NAME = "thresholds.json"
F1_TABLE_NAME = "f1_table.txt"
OOF_NAME = "oof.csv"
CURVES_NAME = "curves.png"
PER_CLASS_NAME = "per_class_f1.png"
EXTERNAL_LEFT_OUT_NAME = "external_left_out.csv"
CHECKPOINTS_NAME = "checkpoints"
TENSORBOARD_NAME = "tensorboard"
#: a cross-validation folder's record of its folds, written last (its presence means finished)
CV_NAME = "cv.json"


@dataclass(frozen=True)
class RunFolder:
    """The paths of a run folder's files (and of a cross-validation folder's, which shares
    config.yaml, folds.csv, oof.csv and thresholds.json with it)."""

    path: Path

    @property
    def last(self) -> Path:
        return self.path / CHECKPOINTS_NAME / "last.pt"

    @property
    def best(self) -> Path:
        return self.path / CHECKPOINTS_NAME / "best.pt"

    @property
    def config(self) -> Path:
        return self.path / CONFIG_NAME

    @property
    def folds(self) -> Path:
        return self.path / FOLDS_NAME

    @property
    def metrics(self) -> Path:
        return self.path / METRICS_NAME

    @property
    def thresholds(self) -> Path:
        return self.path / THRESHOLDS_NAME

    @property
    def f1_table(self) -> Path:
        return self.path / F1_TABLE_NAME

    @property
    def oof(self) -> Path:
        """The fold's out-of-fold probabilities (its validation samples, best epoch), written last."""
        return self.path / OOF_NAME

    @property
    def curves(self) -> Path:
        return self.path / CURVES_NAME

    @property
    def per_class_plot(self) -> Path:
        return self.path / PER_CLASS_NAME

    @property
    def external_left_out(self) -> Path:
        return self.path / EXTERNAL_LEFT_OUT_NAME

    @property
    def tensorboard(self) -> Path:
        return self.path / TENSORBOARD_NAME

    @property
    def cv_record(self) -> Path:
        """A cross-validation folder's ``cv.json``."""
        return self.path / CV_NAME

    def fold(self, k: int) -> RunFolder:
        """Fold ``k``'s run folder inside a cross-validation folder."""
        return RunFolder(self.path / f"fold{k}")

    def check_writable(self) -> None:
        if self.path.exists() and not self.path.is_dir():
            raise RunError(f"--out {self.path} is a file, not a run folder")

    #: what a run folder may hold before its first checkpoint (a run killed early)
    RUN_FILES = {CONFIG_NAME, FOLDS_NAME, METRICS_NAME, CHECKPOINTS_NAME, TENSORBOARD_NAME, EXTERNAL_LEFT_OUT_NAME,
                 THRESHOLDS_NAME, F1_TABLE_NAME, OOF_NAME, CURVES_NAME, PER_CLASS_NAME}

    def check_not_foreign(self, also: frozenset[str] = frozenset()) -> None:
        """A new run goes into a new or empty folder, or one a killed run left: never into a
        folder of other files, which its files would mix into (``also``: more names allowed)."""
        if self.path.is_dir():
            foreign = sorted(p.name for p in self.path.iterdir() if p.name not in self.RUN_FILES | also
                             and not p.name.startswith("."))
            if foreign:
                raise RunError(f"--out {self.path} is not empty and not a run folder (it holds {', '.join(foreign[:3])}"
                               f"{' ...' if len(foreign) > 3 else ''}); choose a new folder")


def read_config(path: Path) -> tuple[TrainConfig, dict | None]:
    """A run's ``config.yaml``: its options and the normalisation it trained with (None for runs
    written before it was saved)."""
    if not path.exists():
        raise RunError(f"{path.parent}: no config.yaml (is this a run folder?)")
    try:
        values = load_yaml(path.read_text()) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise RunError(f"{path}: not a readable run configuration ({str(exc).splitlines()[0][:200]})") from None
    if not isinstance(values, dict):
        raise RunError(f"{path}: not a run configuration (a YAML mapping of options)")
    normalization = values.pop("normalization", None)
    known = {f.name for f in fields(TrainConfig)}
    try:
        cfg = TrainConfig.from_dict({k: v for k, v in values.items() if k in known})
    except (TypeError, ValueError) as exc:
        raise RunError(f"{path}: a saved option is not valid ({exc})") from None
    if normalization:  # a cross-validation folder's config.yaml saves none ({})
        normalization = bring_up_normalization(normalization, cfg)
        check_normalization(normalization, cfg, path)
    return cfg, normalization


def bring_up_normalization(normalization: dict, cfg: TrainConfig) -> dict:
    """A run's saved statistics as this version writes them: the one place that knows what
    older runs lacked (the dtype, before 16-bit stores: uint8; the store's levels: read from
    the store, where it still is)."""
    normalization = {"dtype": "uint8", **normalization}
    if "sizes" not in normalization and cfg.store:
        from ..contract.store import Store

        try:
            normalization["sizes"] = list(Store.open(cfg.store).sizes)
        except HpaError:
            pass  # the store is gone: whatever needs the levels says so
    return normalization


def is_number(value) -> bool:
    """A finite int or float (not a bool): what a saved statistic or threshold must be."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and bool(np.isfinite(value))


def are_level_sizes(sizes) -> bool:
    """A non-empty list of whole pixel sizes, as a store's levels are saved."""
    return isinstance(sizes, list) and bool(sizes) and all(
        isinstance(v, int) and not isinstance(v, bool) and 0 < v <= 1 << 16 for v in sizes)


def check_normalization(normalization, cfg: TrainConfig, path: Path) -> None:
    """The statistics a run saved, as everything downstream (predict, export, classify) uses
    them: four finite means, four finite positive stds, a known dtype, the levels of its store
    with the run's levels among them. A run folder from elsewhere gets one line, not NaN output."""
    from ..contract.spec import DTYPES

    def bad(field: str, why: str) -> RunError:
        return RunError(f"{path}: normalization.{field} {why}")

    if not isinstance(normalization, dict):
        raise bad("", "is not a mapping of mean, std, dtype and sizes")
    for field in ("mean", "std"):
        values = normalization.get(field)
        if not isinstance(values, list) or len(values) != 4 or not all(is_number(v) for v in values):
            raise bad(field, f"must be 4 finite numbers (one per channel), not {values!r}")
    if min(normalization["std"]) <= 0:
        raise bad("std", f"must be above 0 (it divides the pixels), not {normalization['std']}")
    if normalization["dtype"] not in DTYPES:
        raise bad("dtype", f"must be one of {', '.join(DTYPES)}, not {normalization['dtype']!r}")
    sizes = normalization.get("sizes")
    if sizes is not None:
        if not are_level_sizes(sizes):
            raise bad("sizes", f"must be the store's level sizes in pixels, not {sizes!r}")
        for name, level in (("level", cfg.level), ("val_level", cfg.val_level)):
            if level and level not in sizes:
                raise RunError(f"{path}: {name} {level} is not one of the store's levels {sizes}")


def write_config(run: RunFolder, cfg: TrainConfig, normalization: dict) -> None:
    with replacing(run.config) as tmp:
        values = {**asdict(cfg), "external": list(cfg.external), "normalization": normalization}
        tmp.write_text(yaml.safe_dump(values, sort_keys=False))


def config_for_run(run: RunFolder, cfg: TrainConfig, resume: bool,
                   given: set[str] | dict[str, str] | None = None, started: bool | None = None) -> TrainConfig:
    """The options a run goes on with.

    A new run: ``cfg``, refused when the folder already holds a run. A resumed run: the saved
    options, with the :data:`FREE_ON_RESUME` ones taken from ``cfg``; any other option in
    ``given`` (default: every option) that differs from the saved value is an error naming
    each difference. ``given`` may map each name to where it came from (``"given"``, ``"the
    recipe's"``), which the message says. Saved options bind only once the run has ``started``
    (default: an epoch is finished, ``checkpoints/last.pt``): a run that failed before that is
    started anew, whatever it saved.
    """
    run.check_writable()
    if not resume:
        if run.last.exists() or run.best.exists():
            raise RunError(f"{run.path} already holds a run (checkpoints/); continue it with --resume, "
                           f"or choose another --out")
        run.check_not_foreign()
        return cfg
    if not run.config.exists() or not (run.last.exists() if started is None else started):
        return cfg  # nothing to resume yet (no finished epoch): a new run, with the options given now
    saved, _ = read_config(run.config)
    sources = given if isinstance(given, dict) else dict.fromkeys(
        {f.name for f in fields(TrainConfig)} if given is None else given, "given")
    differences = [f"--{name.replace('_', '-')}: saved {getattr(saved, name)!r}, {sources[name]} "
                   f"{getattr(cfg, name)!r}"
                   for name in sorted(set(sources) - set(FREE_ON_RESUME)) if getattr(saved, name) != getattr(cfg, name)]
    if differences:
        more = ("; for more epochs of a finished run, start a new one from its weights: --init-from "
                f"{run.path} --out NEW" if any(d.startswith("--epochs") for d in differences) else "")
        raise RunError(f"--resume continues {run.path} with its saved options; these differ:\n  "
                       + "\n  ".join(differences)
                       + f"\n(leave them out to resume, or start a new run in another --out{more})")
    # the free options the user gave (a moved --store, other --workers); the saved ones otherwise
    free = {name: getattr(cfg, name) for name in FREE_ON_RESUME if name in sources or name == "out"}
    return TrainConfig(**{**asdict(saved), **free})


def plan_folds(run: RunFolder, ids: list[str], labels: np.ndarray, k: int, seed: int,
               groups: np.ndarray | None = None) -> np.ndarray:
    """The run's fold of each sample: read from ``folds.csv`` when it exists (it must match the
    store's ids, ``k`` and the seed of the saved config), else made (duplicate ``groups`` kept
    together); nothing is written here."""
    if not run.folds.exists() or not run.last.exists():  # made anew until an epoch is finished
        return make_folds(labels, k, seed, groups)
    rows = list(csv.DictReader(run.folds.open()))
    if [r["Id"] for r in rows] != list(ids):
        raise RunError(f"{run.folds} belongs to another store (ids differ); use another --out")
    folds = np.array([int(r["fold"]) for r in rows])
    saved_seed = read_config(run.config)[0].seed if run.config.exists() else seed
    if int(folds.max()) + 1 != k or saved_seed != seed:
        raise RunError(f"{run.folds} was made with --folds {int(folds.max()) + 1} --seed {saved_seed}, "
                       f"not --folds {k} --seed {seed}; use another --out")
    return folds


def write_folds(run: RunFolder, ids: list[str], folds: np.ndarray) -> None:
    write_fold_table(run.folds, zip(ids, folds.tolist()))


def write_fold_table(path: Path, rows) -> None:
    """``Id,fold`` rows as a CSV, written whole: a run's ``folds.csv`` and a cross-validation's."""
    with replacing(path) as tmp, tmp.open("w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["Id", "fold"])
        writer.writerows(rows)


def read_metrics(run: RunFolder) -> list[dict]:
    """The rows of ``metrics.csv`` (none before the first epoch), each checked: an epoch number
    and numbers in every column; a damaged row is a :class:`RunError` naming the file and row."""
    if not run.metrics.exists():
        return []
    try:
        rows = list(csv.DictReader(run.metrics.open(newline="")))
    except (csv.Error, UnicodeDecodeError) as exc:
        raise RunError(f"{run.metrics}: not a readable metrics table ({exc})") from None
    for n, row in enumerate(rows, start=2):
        try:
            int(row["epoch"])
            [float(v) for v in row.values()]
        except (KeyError, TypeError, ValueError):
            raise RunError(f"{run.metrics} line {n}: a damaged row ({dict(row)!r:.200}); delete that line (and "
                           f"the ones after it) and resume to redo those epochs") from None
    return rows


def write_metrics(run: RunFolder, rows: list[dict]) -> None:
    """``metrics.csv`` with ``rows``, written whole (a temporary name, then a rename)."""
    with replacing(run.metrics) as tmp, tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[-1]))
        writer.writeheader()
        writer.writerows(rows)


def append_metrics(run: RunFolder, row: dict) -> None:
    write_metrics(run, [*read_metrics(run), row])


def cut_metrics(run: RunFolder, epochs_done: int) -> None:
    """Drop rows after the first ``epochs_done`` epochs (written by a run killed before its
    checkpoint). Rows count epochs from 1, as every line a user sees does; the rows of a run
    begun by a version that counted from 0 are renumbered first."""
    rows = read_metrics(run)
    counted_from_zero = bool(rows) and int(rows[0]["epoch"]) == 0
    if counted_from_zero:
        rows = [{**r, "epoch": str(int(r["epoch"]) + 1)} for r in rows]
    kept = [r for r in rows if int(r["epoch"]) <= epochs_done]
    if len(kept) != len(rows) or counted_from_zero:
        write_metrics(run, kept) if kept else run.metrics.unlink()


def is_unfinished_cross_validation(path: str | Path) -> bool:
    """Whether ``path`` holds a cross-validation's options (``fold: all``) but no ``cv.json`` yet."""
    folder = RunFolder(Path(path))
    if not folder.config.is_file() or folder.cv_record.exists():
        return False
    try:
        return read_config(folder.config)[0].fold == "all"
    except RunError:
        return False


def is_cross_validation(path: str | Path) -> bool:
    """Whether ``path`` is a finished cross-validation folder (it holds ``cv.json``)."""
    return RunFolder(Path(path)).cv_record.is_file()


def fold_runs(path: str | Path) -> list[Path]:
    """The fold run folders of a finished cross-validation folder: each a folder directly inside
    it, named once (``cv.json`` may come from anywhere; its runs are checked, not followed)."""
    file = RunFolder(Path(path)).cv_record
    try:
        runs = json.loads(file.read_text())["runs"]
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise RunError(f"{file}: not a cross-validation record ({type(exc).__name__}: {exc})") from None
    if not isinstance(runs, list) or not runs or not all(isinstance(r, str) for r in runs):
        raise RunError(f"{file}: runs must be a list of the fold folders' names")
    for name in runs:
        if Path(name).name != name or name in (".", ".."):
            raise RunError(f"{file}: run {name!r} is not a folder inside {path} (a fold's folder name, such as fold0)")
        if not (Path(path) / name).is_dir():
            raise RunError(f"{file}: run {name!r}: no such folder in {path}")
    if len(set(runs)) != len(runs):
        raise RunError(f"{file}: a run is named twice ({sorted(runs)}); each fold counts once")
    return [Path(path) / name for name in runs]
