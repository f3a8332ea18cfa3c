"""``train``: an SENet on one fold of a dataset store, readable top to bottom.

:func:`train` reads in one screen: check everything and plan the run (nothing is written until
every option, the store, the level, the fold and the weights are known to be good), build the
data and the :class:`TrainState`, resume from ``checkpoints/last.pt`` if asked, then for each
epoch: :func:`train_one_epoch`, :func:`validate`, :func:`write_epoch`.

The run folder (:mod:`.run_folder`) holds everything about a run. Checkpoints are written every
epoch atomically, in an order that a kill at any point leaves consistent: ``best.pt`` and
``thresholds.json`` (on a new best), then the ``metrics.csv`` row, then ``last.pt``; a resume
cuts ``metrics.csv`` and TensorBoard back to the epoch of ``last.pt`` and redoes the rest.
``last.pt`` holds the whole :class:`TrainState` (model, optimizer, schedule, scaler, weight
average, every random generator: CPU, CUDA, NumPy, Python) through one symmetric
``state_dict()``/``load_state_dict()``; crops and order depend only on (seed, epoch, sample),
so a run killed and resumed does the same steps as one that was not.

The step loop never waits for the GPU: the running loss stays on the device and is read (and
checked for NaN/inf, on every rank together under torchrun) every ``log_every`` steps and at
the end of the epoch; the augmentation runs without synchronisation (:class:`.data.Normalizer`).
"""
from __future__ import annotations

import contextlib
import csv
import json
import logging
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ..contract.atomic import Interrupted, replacing, write_bytes, write_json
from ..contract.labels import CLASS_NAMES
from ..contract.errors import OptionError
from ..contract.locks import store_locked
from ..contract.machine import usable_cores
from ..contract.progress import Progress, ProgressCallback, report
from ..contract.store import StoreSpec, open_store
from . import distributed
from .averaging import averaging_kind, make_average, recompute_batchnorm
from .config import TrainConfig
from .data import CombinedDataset, EpochSampler, Normalizer, StoreDataset, make_loader, rare_class_weights
from .checkpoints import load_checkpoint, load_weights, save_checkpoint
from .feed import BatchFeed
from .inference import autocast, predict_probs
from ..contract.duplicates import find_pairs, groups_of
from .losses import make_loss
from .metrics import crossfit_macro_f1, f1_table, macro_f1, per_class_f1, predict_labels, search_thresholds
from .models import create_model, resolve_weights
from .run_folder import (RunError, RunFolder, append_metrics, config_for_run, cut_metrics, plan_folds, read_config,
                         read_metrics, write_config, write_folds)
from .probs_table import write_probs
from .streaming import ShardStream, make_stream_loader

#: steps between reads of the running loss (progress bar, NaN check); each read waits for the GPU
LOG_EVERY = 25
#: steps at the start of an epoch left out of the steady-state images/s
WARMUP_STEPS = 5


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


log = logging.getLogger(__name__)


def fault_point(name: str) -> None:
    """Where a kill would leave the run folder in a new state; tests replace this to crash here."""


# --- the run -------------------------------------------------------------------------------------

def train(cfg: TrainConfig, resume: bool = False, progress: ProgressCallback | None = None, given: set[str] | None = None) -> dict:
    """Train one fold; returns the last epoch's metrics with ``best_valid_macro_f1``.

    ``progress`` gets the run it started or resumed (a message), then the steps of each epoch
    (task ``train``, with the loss and speed) and of its validation (task ``valid``). On ``resume`` the run's
    saved options are used; ``given`` names the options the user gave (default: all of ``cfg``),
    which must agree with them. Under ``torchrun`` every process calls this; see
    :mod:`.distributed` for who does what.
    """
    if not cfg.out:
        raise OptionError("--out is required: the run folder to write (or to --resume)")
    cfg = with_absolute_stores(cfg)
    if cfg.fold == "all":
        from .cross_validation import train_folds

        return train_folds(cfg, resume, progress, given)
    run = RunFolder(Path(cfg.out))
    try:
        with writing_run_folder(cfg.out):
            cfg = config_for_run(run, cfg, resume, given)
            with reading_stores(cfg), distributed.start(cfg.device) as (ranks, device):
                return _train(cfg, run, progress if ranks.is_main else None, ranks, device, resume)
    except KeyboardInterrupt as exc:
        if isinstance(exc, Interrupted):
            raise
        epochs = max(0, len(run.metrics.read_text().splitlines()) - 1) if run.metrics.exists() else 0
        raise Interrupted(f"interrupted: {run.path} keeps its checkpoint after {epochs} finished epoch(s); "
                          f"add --resume to continue" if epochs else
                          f"interrupted before the first epoch finished; nothing to resume in {run.path}") from None


def with_absolute_stores(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with its local stores as absolute paths: a run folder names its data wherever it is
    used from (predict, export, thresholds run in other folders)."""
    from dataclasses import replace

    from ..contract.locations import is_url

    def absolute(store: str) -> str:
        return store if not store or is_url(store) else str(Path(store).resolve())

    return replace(cfg, store=absolute(cfg.store), external=tuple(absolute(s) for s in cfg.external))


def writing_run_folder(out: str):
    """The run folder's lock, for the run's life: one training writes a run folder (under
    torchrun the first process takes it for all; :mod:`..contract.locks`)."""
    if distributed.ranks_from_env().is_main:
        return store_locked(out, what="run folder")
    return contextlib.nullcontext()


@contextlib.contextmanager
def reading_stores(cfg: TrainConfig):
    """A reader's lock on the train store and each external one: no ingest changes them meanwhile."""
    with contextlib.ExitStack() as stack:
        for store in (cfg.store, *cfg.external):
            stack.enter_context(store_locked(store, shared=True))
        yield


def start_message(run: RunFolder, last_epoch: int, epochs: int, step: int, resume: bool) -> str:
    """What the run starts from: its last finished epoch, or a new run (also under --resume)."""
    if last_epoch >= epochs - 1:
        return (f"{run.path} is finished ({epochs}/{epochs} epochs); nothing to train. For more epochs, start a "
                f"new run from its weights: --init-from {run.path} --out NEW")
    if last_epoch >= 0:
        return f"resuming {run.path} at epoch {last_epoch + 2}/{epochs} (step {step})"
    if resume:
        return f"--resume: no finished epoch in {run.path} yet; starting a new run there"
    return f"new run in {run.path}"


def _train(cfg: TrainConfig, run: RunFolder, progress, ranks: distributed.Ranks, device: torch.device,
           resume: bool) -> dict:
    started = time.perf_counter()
    plan = plan_run(cfg, run)  # every check; nothing written yet
    check_precision(cfg, device)
    torch.manual_seed(cfg.seed)
    log.debug("training %s on %s (%s); run folder %s", cfg.arch, device, cfg.amp, run.path)
    with make_data(cfg, plan, ranks, device) as data:  # loader workers live until the run ends
        state = make_state(cfg, plan, data, device)
        if run.last.exists():
            state.load_state_dict(load_checkpoint(run.last, device), run.last)
        if ranks.is_main:
            prepare_run_folder(run, cfg, plan, state)
        distributed.barrier(ranks)
        step = make_step(cfg, state.model, data.loss_fn, ranks, device)
        board = _tensorboard(run, state.epoch + 2) if ranks.is_main else None
        summary = {"best_valid_macro_f1": state.best, "step": state.step}
        startup_s = time.perf_counter() - started
        # say which: a mistyped --resume --out starts a new run, and must not do so silently
        report(progress, Progress("train", message=start_message(run, state.epoch, cfg.epochs, state.step, resume)))
        report(progress, Progress("train", message=samples_message(cfg, plan, len(plan.ids))))
        for epoch in range(state.epoch + 1, cfg.epochs):
            speed = train_one_epoch(cfg, epoch, state, step, data, ranks, device, progress)
            evaluation = validate(cfg, epoch, state, data, ranks, device, progress)
            row = {"epoch": epoch + 1, "step": state.step, "lr": state.schedule.get_last_lr()[0],
                   "train_loss": speed.pop("train_loss"), **evaluation.scores, **speed,
                   "startup_s": round(startup_s, 3)}
            state.epoch, is_best = epoch, evaluation.scores["valid_macro_f1"] > state.best
            state.best = max(state.best, evaluation.scores["valid_macro_f1"])
            if ranks.is_main:
                write_epoch(run, cfg, plan, state, row, evaluation, is_best, board)
                log.debug("epoch %d: checkpoint %s%s", epoch + 1, run.last, " (the best so far)" if is_best else "")
            distributed.barrier(ranks)  # no rank runs ahead of a checkpoint it may have to resume from
            summary, startup_s = {**row, "best_valid_macro_f1": state.best}, 0.0
        if state.epoch == cfg.epochs - 1 and not run.oof.exists():  # finished: its out-of-fold table
            write_out_of_fold(run, cfg, plan, state, data, ranks, device, progress)
    if ranks.is_main and run.metrics.exists():
        plot_run(run)
    return summary


def write_out_of_fold(run: RunFolder, cfg: TrainConfig, plan: Plan, state: TrainState, data: Data, ranks, device,
                      progress) -> None:
    """``oof.csv``: the validation fold's probabilities from the best epoch's weights, with
    ``--tta`` views; what cross-validation puts together and chooses thresholds from."""
    best = load_checkpoint(run.best, device)
    model = state.eval_model()
    load_weights(model, best["model"], run.best)
    total = data.valid_steps

    def step(done):
        report(progress, Progress("valid", done, total, "step", "out-of-fold table"))

    probs, indices, _ = predict_probs(model, data.valid_batches(), data.normalize, device, cfg.amp,
                                      cfg.channels_last, tta=cfg.tta, on_batch=step)
    probs, indices = distributed.gather_arrays((probs, indices), ranks)
    if ranks.is_main:
        order = np.argsort(indices)
        write_probs(run.oof, [plan.ids[i] for i in indices[order]], probs[order])
    distributed.barrier(ranks)


# --- planning: everything checked before anything is written --------------------------------

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


def plan_run(cfg: TrainConfig, run: RunFolder) -> Plan:
    """Check the store, its labels and levels, the fold, the weights and the run folder; raise a
    clear error on the first problem, before anything is written."""
    root, meta = open_labelled_store(cfg.store, {"--level": cfg.level, "--val-level": cfg.val_level or cfg.level},
                                     "--store")
    stats = meta["statistics"]
    resolve_weights(cfg.arch, cfg.weights)  # a missing weights file fails now, not after set-up
    if cfg.init_from and not RunFolder(Path(cfg.init_from)).best.exists():
        raise RunError(f"--init-from {cfg.init_from}: no checkpoints/best.pt there (give a run folder; for a "
                       f"cross-validation, one of its fold<k> folders)")
    done = root["done"][:]
    labels = root["labels"][:].astype(np.float32)
    hashes = store_hashes(root) if cfg.group_duplicates else None
    groups = None if hashes is None else groups_of(len(done), find_pairs(hashes, None, cfg.duplicate_distance))
    folds = plan_folds(run, meta["ids"], labels, cfg.folds, cfg.seed, groups)
    train_idx = np.flatnonzero((folds != cfg.fold) & done)
    valid_idx = np.flatnonzero((folds == cfg.fold) & done)
    if len(valid_idx) == 0:
        raise RunError(f"fold {cfg.fold} of {cfg.store} has no finished samples to validate on")
    level_stats = stats[str(cfg.level)]
    dtype = meta["spec"]["dtype"]
    normalization = {"level": cfg.level, "mean": list(level_stats["mean"]), "std": list(level_stats["std"]),
                     "dtype": dtype, "sizes": list(StoreSpec(**meta["spec"]).sizes)}
    check_same_training_data(run, cfg.store, normalization)
    main = MainStore(list(meta["ids"]), hashes, labels, folds == cfg.fold, cfg.duplicate_distance)
    external = [plan_external(store, cfg.level, set(meta["ids"]), dtype, main) for store in cfg.external]
    return Plan(list(meta["ids"]), labels, folds, train_idx, valid_idx, normalization,
                [e[:3] for e in external], [row for e in external for row in e[3]])


def check_same_training_data(run: RunFolder, store: str, normalization: dict) -> None:
    """A resumed run goes on with the data it started on: the same dtype and the same channel
    statistics at its level (a store of other content under the same ids is refused by name)."""
    if not run.config.exists() or not run.last.exists():  # nothing trained yet: nothing to stay with
        return
    _, saved = read_config(run.config)
    if not saved:
        return
    if saved.get("dtype", normalization["dtype"]) != normalization["dtype"]:
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


def open_labelled_store(store: str, levels: dict[str, int], role: str):
    """The store's root and attributes; it must have labels and each level (with statistics)."""
    root = open_store(store)
    meta = root.attrs["hpa"]
    if not meta["has_labels"]:
        raise RunError(f"{role} {store} has no labels: train needs a train store")
    stats = meta.get("statistics", {})
    for name, level in levels.items():
        if str(level) not in stats:
            raise RunError(f"{role} {store} has no level {level} with statistics ({name}); "
                           f"levels: {sorted(map(int, stats))}")
    return root, meta


def store_hashes(root) -> np.ndarray | None:
    """A store's ``(n, 4)`` perceptual hashes, zero for samples not done; None for a store
    written before hashes were stored (no duplicates are then known)."""
    if "phash" not in root:
        return None
    hashes = root["phash"][:]
    hashes[~root["done"][:]] = 0
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


def plan_external(store: str, level: int, main_ids: set[str], dtype: str, main: MainStore) -> tuple:
    """An external store's finished samples and labels, less its duplicates of validation
    samples and its disagreeing duplicates (:func:`external_left_out`); with the rows
    ``(store, id, reason)`` left out. It must have labels, the level and the main store's dtype,
    and share no id with it (a sample in both would leak into validation)."""
    root, meta = open_labelled_store(store, {"--level": level}, "--external")
    if meta["spec"]["dtype"] != dtype:
        raise RunError(f"--external {store} is {meta['spec']['dtype']} and --store is {dtype}: their pixel values "
                       f"are on other scales; build both with the same --dtype")
    shared = main_ids.intersection(meta["ids"])
    if shared:
        raise RunError(f"--external {store} shares {len(shared)} id(s) with --store (e.g. {sorted(shared)[0]}): "
                       f"they would be in validation and in training")
    labels = root["labels"][:].astype(np.float32)
    left = external_left_out(store_hashes(root), labels, main) if main.hashes is not None else {}
    done = np.array([i for i in np.flatnonzero(root["done"][:]) if int(i) not in left], dtype=np.int64)
    rows = [(str(store), meta["ids"][i], why) for i, why in sorted(left.items())]
    return str(store), done, labels[done], rows


def prepare_run_folder(run: RunFolder, cfg: TrainConfig, plan: Plan, state: TrainState) -> None:
    """Rank 0, after every check: the config and folds, and metrics cut back to ``last.pt``."""
    (run.path / "checkpoints").mkdir(parents=True, exist_ok=True)
    write_config(run, cfg, plan.normalization)
    if not run.folds.exists():
        write_folds(run, plan.ids, plan.folds)
    if plan.external_left_out:
        with replacing(run.path / "external_left_out.csv") as tmp, tmp.open("w", newline="") as f:
            writer = csv.writer(f, lineterminator="\n")
            writer.writerow(["store", "Id", "why"])
            writer.writerows(plan.external_left_out)
    if state.epoch < 0:
        run.metrics.unlink(missing_ok=True)
    cut_metrics(run, state.epoch + 1)


# --- data ---------------------------------------------------------------------------------------

@dataclass
class Data:
    train_set: StoreDataset
    valid_set: StoreDataset
    batch_size: int
    sampler: EpochSampler | None
    feeds: tuple[BatchFeed, BatchFeed] | None  # worker processes for the whole run (train, valid)
    stream_loader: torch.utils.data.DataLoader | None  # --stream
    normalize: Normalizer  # the training level's statistics, for training and validation alike
    loss_fn: torch.nn.Module
    steps_per_epoch: int

    def train_batches(self):
        """This epoch's training batches (set the sampler's epoch first)."""
        if self.stream_loader is not None:
            return iter(self.stream_loader)
        if self.feeds is not None:
            return self.feeds[0].batches(self.sampler, drop_last=True)
        return iter(make_loader(self.train_set, self.batch_size, 0, self.sampler, drop_last=True))

    def valid_batches(self):
        if self.feeds is not None:
            return self.feeds[1].batches(range(len(self.valid_set)))
        return iter(make_loader(self.valid_set, self.batch_size, 0))

    @property
    def valid_steps(self) -> int:
        return -(-len(self.valid_set) // self.batch_size)

    def __enter__(self) -> Data:
        return self

    def __exit__(self, *exc) -> None:
        for feed in self.feeds or ():
            feed.close()


def max_workers() -> int:
    """Loader workers at most with ``--workers auto``: every core but the training process's."""
    return max(1, usable_cores() - 1)


def make_data(cfg: TrainConfig, plan: Plan, ranks: distributed.Ranks, device: torch.device) -> Data:
    """Training and validation batches from worker processes that live for the whole run
    (:class:`.feed.BatchFeed`; the epoch travels with each item), or read in this process
    with ``--workers 0``; ``--stream`` uses its own loader."""
    train_set = StoreDataset(cfg.store, cfg.level, plan.train_idx, crop=cfg.crop, train=True, seed=cfg.seed,
                             crop_grid=cfg.crop_grid)
    if plan.external:  # external samples train in every fold, after the competition's
        train_set = CombinedDataset([train_set] + [
            StoreDataset(store, cfg.level, done, crop=cfg.crop, train=True, seed=cfg.seed, crop_grid=cfg.crop_grid)
            for store, done, _ in plan.external])
    train_labels = np.concatenate([plan.labels[plan.train_idx]] + [labels for _, _, labels in plan.external])
    # each rank validates every world-th sample; the predictions are gathered
    valid_set = StoreDataset(cfg.store, cfg.val_level or cfg.level, plan.valid_idx[ranks.rank::ranks.world],
                             train=False, seed=cfg.seed)
    sampler = stream_loader = feeds = None
    if cfg.stream:  # whole shards in streaming order: one request per sample (remote stores)
        stream = ShardStream(train_set, cfg.stream_buffer, rank=ranks.rank, world=ranks.world)
        stream_loader = make_stream_loader(stream, cfg.batch_size, cfg.workers, device.type == "cuda")
        batches = len(stream_loader)
    else:
        weights = rare_class_weights(train_labels) if cfg.oversample else None
        sampler = EpochSampler(len(train_set), cfg.seed, weights, rank=ranks.rank, world=ranks.world,
                               batch_size=cfg.batch_size, draws=cfg.epoch_size, tag_epoch=True)
        batches = len(sampler) // cfg.batch_size
        if cfg.workers != 0:
            workers = cfg.workers or min(2, max_workers())  # auto: grown as the measured wait asks
            feeds = (BatchFeed(train_set, cfg.batch_size, workers, device),
                     BatchFeed(valid_set, cfg.batch_size, max(1, workers // 2), device, slots=4))
    steps = batches // cfg.accumulate
    if cfg.steps_per_epoch:
        steps = min(steps, cfg.steps_per_epoch)
    if steps < 1:
        raise RunError(f"fold {cfg.fold} has {len(train_set)} training samples: fewer than one batch "
                       f"for each of {ranks.world} process(es)")
    normalize = Normalizer(plan.normalization["mean"], plan.normalization["std"],
                           per_image=cfg.normalize == "image").to(device)
    loss_fn = make_loss(cfg.loss, cfg.focal_gamma, cfg.class_weighting, train_labels).to(device)
    return Data(train_set, valid_set, cfg.batch_size, sampler, feeds, stream_loader, normalize, loss_fn, steps)


# --- the training state ---------------------------------------------------------------------------

def make_schedule(cfg: TrainConfig, optimizer, total_steps: int, steps_per_epoch: int):
    """Linear warm-up then cosine decay to 0 (``SequentialLR``), or ``OneCycleLR``."""
    warmup = max(1, int(cfg.warmup_epochs * steps_per_epoch))
    if cfg.schedule == "onecycle":
        # OneCycleLR needs at least two steps in each phase
        pct = min(0.5, max(warmup, 2) / max(total_steps, 4))
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.lr, total_steps=max(total_steps, 4),
                                                   pct_start=pct)
    warm = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=1 / warmup, total_iters=warmup)
    decay = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, total_steps - warmup))
    return torch.optim.lr_scheduler.SequentialLR(optimizer, [warm, decay], milestones=[warmup])


def rng_states() -> dict:
    """Every generator's state in tensors and plain values (what a safe checkpoint may hold)."""
    kind, key, pos, has_gauss, cached = np.random.get_state()
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": {"kind": str(kind), "key": torch.from_numpy(key.astype(np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
            "python": random.getstate()}


def set_rng_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    if states.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    n = states["numpy"]
    np.random.set_state((n["kind"], n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    random.setstate(states["python"])


class TrainState:
    """Everything a checkpoint holds. ``state_dict()`` and ``load_state_dict()`` are written side
    by side and are each other's inverse, so nothing is saved without being restored."""

    def __init__(self, model, optimizer, schedule, scaler, average, averaging: str | None):
        self.model, self.optimizer, self.schedule, self.scaler = model, optimizer, schedule, scaler
        self.average, self.averaging = average, averaging  # averaging: "ema", "swa" or None
        self.epoch, self.step, self.best = -1, 0, -1.0  # epoch: the last finished one

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "schedule": self.schedule.state_dict(), "scaler": self.scaler.state_dict(),
                "average": self.average.state_dict() if self.average is not None else None,
                "epoch": self.epoch, "step": self.step, "best": self.best, "rng": rng_states()}

    def load_state_dict(self, state: dict, path: Path | None = None) -> None:
        """Restore what :meth:`state_dict` saved; a checkpoint that does not fit names ``path``."""
        missing = {"model", "optimizer", "schedule", "scaler", "epoch", "step", "best", "rng"} - set(state)
        if missing:
            raise RunError(f"{path}: not a training checkpoint of this project (no {', '.join(sorted(missing))})")
        load_weights(self.model, state["model"], path)
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        self.scaler.load_state_dict(state["scaler"])
        if self.average is not None:
            self.average.load_state_dict(state["average"])
        self.epoch, self.step, self.best = state["epoch"], state["step"], state["best"]
        set_rng_states(state["rng"])

    def eval_model(self) -> torch.nn.Module:
        """The weights validation and ``best.pt`` use: the average's, once it has averaged any."""
        if self.average is None or (self.averaging == "swa" and int(self.average.n_averaged) == 0):
            return self.model
        return self.average.module


def check_precision(cfg: TrainConfig, device: torch.device) -> None:
    """``--amp bf16`` needs a GPU with bfloat16 (Ampere or later); a V100 or T4 gets one line."""
    if device.type == "cuda" and cfg.amp == "bf16" and not torch.cuda.is_bf16_supported():
        raise OptionError(f"--amp bf16: {torch.cuda.get_device_name(device)} has no bfloat16; use --amp fp16 "
                          f"(with loss scaling) or --amp none")


def make_state(cfg: TrainConfig, plan: Plan, data: Data, device: torch.device) -> TrainState:
    model = create_model(cfg.arch, cfg.backend, cfg.weights, drop_rate=cfg.drop_rate).to(device)
    if cfg.init_from:  # another run's best weights (then a new optimiser and schedule)
        start = RunFolder(Path(cfg.init_from))
        load_weights(model, load_checkpoint(start.best, device).get("model", {}), start.best)
    if cfg.sync_bn and distributed.ranks_from_env().active:
        if device.type != "cuda":
            raise RunError("--sync-bn needs CUDA (PyTorch's SyncBatchNorm has no CPU kernel)")
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if cfg.channels_last and device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    schedule = make_schedule(cfg, optimizer, data.steps_per_epoch * cfg.epochs, data.steps_per_epoch)
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda" and cfg.amp == "fp16")
    return TrainState(model, optimizer, schedule, scaler, make_average(model, cfg.ema, cfg.swa_epochs),
                      averaging_kind(cfg.ema, cfg.swa_epochs))


# --- one epoch ----------------------------------------------------------------------------------

class LossOfBatch(torch.nn.Module):
    """The whole forward step, ``loss(model(images), targets)``: what DDP wraps and
    ``--compile`` compiles."""

    def __init__(self, model, loss_fn):
        super().__init__()
        self.model, self.loss_fn = model, loss_fn

    def forward(self, images, targets):
        return self.loss_fn(self.model(images).float(), targets)


def make_step(cfg: TrainConfig, model, loss_fn, ranks: distributed.Ranks, device: torch.device):
    """The training step module: DDP around it under torchrun (after weights are loaded: DDP
    copies rank 0's to every rank), then ``torch.compile`` with ``--compile``."""
    step = LossOfBatch(model, loss_fn)
    if ranks.active:
        step = torch.nn.parallel.DistributedDataParallel(
            step, device_ids=[device.index] if device.type == "cuda" else None)
    return torch.compile(step) if cfg.compile else step


def _no_sync_unless(step, sync: bool):
    """DDP's ``no_sync()`` (skip the gradient all-reduce) unless ``sync``."""
    ddp = getattr(step, "_orig_mod", step)
    return contextlib.nullcontext() if sync or not hasattr(ddp, "no_sync") else ddp.no_sync()


def train_one_epoch(cfg: TrainConfig, epoch: int, state: TrainState, step, data: Data, ranks, device,
                    progress) -> dict:
    """One epoch of optimizer steps; returns its loss and honest speed figures."""
    if data.sampler is not None:
        data.sampler.set_epoch(epoch)
    data.train_set.set_epoch(epoch)  # streaming and in-process (workers=0) reading
    state.model.train()
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed-size crops: pick the fastest kernels once
    loss_sum, seen, steady = torch.zeros((), device=device), 0, None
    started = time.perf_counter()
    label = f"epoch {epoch + 1}/{cfg.epochs}"
    report(progress, Progress("train", 0, data.steps_per_epoch, "step", label))  # the part's rate starts here
    state.optimizer.zero_grad(set_to_none=True)
    for micro, (images, targets, _, augmentation) in enumerate(data.train_batches()):
        step_in_epoch = micro // cfg.accumulate
        if step_in_epoch >= data.steps_per_epoch:
            break
        images = data.normalize(images.to(device, non_blocking=True), augmentation.to(device, non_blocking=True))
        targets = targets.to(device, non_blocking=True)
        if cfg.channels_last and device.type == "cuda":
            images = images.contiguous(memory_format=torch.channels_last)
        last_micro = (micro + 1) % cfg.accumulate == 0
        with _no_sync_unless(step, last_micro or not ranks.active):  # DDP averages on the last micro-batch
            with autocast(cfg.amp, device):
                loss = step(images, targets)
            state.scaler.scale(loss / cfg.accumulate).backward()
        loss_sum += loss.detach() * len(images)
        seen += len(images)
        if last_micro:
            optimizer_step(state)
            done = step_in_epoch + 1
            if done == WARMUP_STEPS or done % LOG_EVERY == 0 or done == data.steps_per_epoch:
                mean = check_finite(loss_sum / seen, epoch, state, ranks)  # waits for the GPU here only
                if done == WARMUP_STEPS:
                    steady = (time.perf_counter(), seen)
                    if data.feeds is not None:
                        data.feeds[0].start_measuring()
                elif cfg.workers is None and data.feeds is not None and steady is not None:
                    data.feeds[0].autoscale(max_workers())  # --workers auto: more if the loop waited
                img_s = ranks.world * seen / (time.perf_counter() - started)
                report(progress, Progress("train", done, data.steps_per_epoch, "step", label,
                                          {"loss": f"{mean:.4f}", "img_s": f"{img_s:.1f}"}))
    mean_loss = check_finite(loss_sum / max(seen, 1), epoch, state, ranks)
    ended = time.perf_counter()
    loss_total, seen_total = distributed.sum_over_ranks([mean_loss * seen, seen], ranks, device)
    if steady is not None and seen > steady[1]:
        img_s = ranks.world * (seen - steady[1]) / (ended - steady[0])
    else:  # too short an epoch for a steady state
        img_s = ranks.world * seen / (ended - started)
    return {"train_loss": loss_total / max(seen_total, 1), "train_img_s": round(img_s, 2),
            "train_s": round(ended - started, 3)}


def optimizer_step(state: TrainState) -> None:
    state.scaler.step(state.optimizer)
    state.scaler.update()
    state.optimizer.zero_grad(set_to_none=True)
    state.schedule.step()
    state.step += 1
    if state.averaging == "ema":  # after every step; SWA averages at the end of epochs (validate)
        state.average.update(state.model, step=state.step)


def check_finite(mean_loss: torch.Tensor, epoch: int, state: TrainState, ranks) -> float:
    """The running mean loss as a number; every rank stops together when any is not finite."""
    if not distributed.all_finite(mean_loss, ranks):
        raise TrainingDiverged(
            f"loss is {float(mean_loss)} at epoch {epoch + 1}, step {state.step} (rank {ranks.rank}; stops every "
            f"rank); the last good checkpoint is kept. Lower --lr or use --amp bf16/none.")
    return float(mean_loss)


# --- validation -----------------------------------------------------------------------------------

@dataclass
class Evaluation:
    scores: dict
    truth: np.ndarray
    probs: np.ndarray
    thresholds: np.ndarray


def validate(cfg: TrainConfig, epoch: int, state: TrainState, data: Data, ranks, device, progress) -> Evaluation:
    """Whole images of the validation fold (training level by default), with the training loss
    and three macro F1 figures: at 0.5, tuned out of sample (cross-fit), tuned in sample."""
    started = time.perf_counter()
    if state.averaging == "swa" and epoch >= cfg.epochs - cfg.swa_epochs:  # the last N epochs' weights
        state.average.update_parameters(state.model)
        recompute_batchnorm(state.average.module, data.train_batches(), data.normalize, device, cfg.swa_bn_batches)
        distributed.broadcast_buffers(state.average.module, ranks)  # every rank validates with rank 0's statistics
    total = data.valid_steps

    def step(done):
        report(progress, Progress("valid", done, total, "step", f"epoch {epoch + 1}/{cfg.epochs}"))

    probs, indices, loss = predict_probs(state.eval_model(), data.valid_batches(), data.normalize, device, cfg.amp,
                                         cfg.channels_last, loss_fn=data.loss_fn, on_batch=step)
    loss_total, count = distributed.sum_over_ranks([loss * len(indices), len(indices)], ranks, device)
    probs, indices = distributed.gather_arrays((probs, indices), ranks)
    truth = data.valid_set.labels[indices] > 0.5
    thresholds = search_thresholds(truth, probs)
    scores = {"valid_loss": loss_total / max(count, 1),
              "valid_macro_f1": macro_f1(truth, predict_labels(probs, 0.5)),
              "valid_macro_f1_tuned_crossfit": crossfit_macro_f1(truth, probs, cfg.seed),
              "valid_macro_f1_tuned_in_sample": macro_f1(truth, predict_labels(probs, thresholds)),
              "valid_s": round(time.perf_counter() - started, 3)}
    return Evaluation(scores, truth, probs, thresholds)


# --- writing ----------------------------------------------------------------------------------------

def write_epoch(run: RunFolder, cfg: TrainConfig, plan: Plan, state: TrainState, row: dict,
                evaluation: Evaluation, is_best: bool, board) -> None:
    """Rank 0's end of an epoch, in kill-safe order: best.pt and thresholds (on a new best), the
    metrics row, then last.pt."""
    started = time.perf_counter()
    if is_best:
        save_checkpoint({"model": state.eval_model().state_dict(), "config": asdict(cfg), "epoch": state.epoch,
                     "normalization": plan.normalization}, run.best)
        tuned = predict_labels(evaluation.probs, evaluation.thresholds)
        write_json(run.thresholds, {
            "thresholds": evaluation.thresholds.tolist(), "class_names": list(CLASS_NAMES), "epoch": row["epoch"],
            "level": cfg.val_level or cfg.level, "fold": cfg.fold, "n_valid": int(len(evaluation.truth)),
            **{k: v for k, v in row.items() if k.startswith("valid_macro_f1")},
            "support": evaluation.truth.sum(0).astype(int).tolist(),
            "per_class_f1": per_class_f1(evaluation.truth, tuned).tolist()})
        heading = (f"Per-class F1 of the validation fold at epoch {row['epoch']} (best), with the thresholds of "
                   f"thresholds.json (searched on this fold: in sample)\n")
        write_bytes(run.path / "f1_table.txt", (heading + f1_table(evaluation.truth, tuned) + "\n").encode())
    fault_point("after_best")
    row = {**row, "checkpoint_s": round(time.perf_counter() - started, 3)}
    append_metrics(run, row)
    if board is not None:
        for key, value in row.items():
            if key not in ("epoch", "step"):
                board.add_scalar(key, value, row["epoch"])
        board.flush()
    fault_point("after_metrics")
    save_checkpoint(state.state_dict(), run.last)
    fault_point("after_last")


def _tensorboard(run: RunFolder, first_epoch: int):
    """A TensorBoard writer in ``run/tensorboard`` when the tensorboard package is installed;
    ``purge_step`` drops events a killed run wrote after its last checkpoint. Its steps are
    epochs counted from 1, as in metrics.csv."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(run.path / "tensorboard"), purge_step=first_epoch if first_epoch > 1 else None)


def save_figure(fig, path: Path) -> None:
    """A matplotlib figure as a PNG, written whole or not at all."""
    with replacing(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")


def plot_run(run: RunFolder) -> None:
    """``curves.png`` (loss and macro F1 per epoch) and ``per_class_f1.png``."""

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    rows = read_metrics(run)
    epochs = [int(r["epoch"]) for r in rows]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.plot(epochs, [float(r["train_loss"]) for r in rows], label="train (augmented crops)")
    a.plot(epochs, [float(r["valid_loss"]) for r in rows], label="validation (whole images)")
    a.set(xlabel="epoch", ylabel="training loss function", title="loss (the same function on both)")
    a.legend()
    b.plot(epochs, [float(r["valid_macro_f1"]) for r in rows], label="threshold 0.5")
    b.plot(epochs, [float(r["valid_macro_f1_tuned_crossfit"]) for r in rows], label="tuned, out of sample")
    b.plot(epochs, [float(r["valid_macro_f1_tuned_in_sample"]) for r in rows], ":", label="tuned, in sample")
    b.set(xlabel="epoch", ylabel="macro F1", title="validation macro F1")
    b.legend()
    for axis in (a, b):
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    save_figure(fig, run.path / "curves.png")
    plt.close(fig)
    if run.thresholds.exists():
        result = json.loads(run.thresholds.read_text())
        per_class, support = result["per_class_f1"], result.get("support", [1] * len(CLASS_NAMES))
        fig, ax = plt.subplots(figsize=(10, 6))
        scored = [s > 0 for s in support]
        ax.barh(range(len(CLASS_NAMES)), per_class, color=["C0" if s else "none" for s in scored])
        for c, has_samples in enumerate(scored):
            if not has_samples:
                ax.text(0.01, c, "no validation samples", va="center", fontsize=7, color="grey")
        ax.set_yticks(range(len(CLASS_NAMES)), [f"{i} {n} ({s})" for i, (n, s) in enumerate(zip(CLASS_NAMES, support))],
                      fontsize=7)
        ax.invert_yaxis()
        ax.set(xlabel=f"F1 (tuned thresholds, best epoch {result['epoch']}); (n) = validation samples",
               xlim=(0, 1))
        fig.tight_layout()
        save_figure(fig, run.path / "per_class_f1.png")
        plt.close(fig)
