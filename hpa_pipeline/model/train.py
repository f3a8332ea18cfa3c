"""``train``: an SENet on one fold of a dataset store, readable top to bottom.

:func:`train` reads in one screen: check everything and plan the run (:mod:`.planning`:
nothing is written until every option, the store, the level, the fold and the weights are
known to be good), build the data (:mod:`.training_data`) and the :class:`.train_state.TrainState`,
resume from ``checkpoints/last.pt`` if asked, then for each epoch: :func:`train_one_epoch`,
:func:`validate`, :func:`write_epoch`. A cross-validation (:mod:`.cross_validation`) calls this
once per fold; this never calls it.

The run folder (:mod:`.run_folder`) holds everything about a run. Checkpoints are written every
epoch atomically, in an order that a kill at any point leaves consistent: ``best.pt`` and
``thresholds.json`` (on a new best), then the ``metrics.csv`` row, then ``last.pt``; a resume
cuts ``metrics.csv`` and TensorBoard back to the epoch of ``last.pt`` and redoes the rest.
Crops and order depend only on (seed, epoch, sample), so a run killed and resumed does the
same steps as one that was not.

The step loop never waits for the GPU: the running loss stays on the device and is read (and
checked for NaN/inf, on every rank together under torchrun) every ``log_every`` steps and at
the end of the epoch; the augmentation runs without synchronisation (:class:`.data.Normalizer`).
"""
from __future__ import annotations

import contextlib
import csv
import logging
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from ..common.progress import Progress, ProgressCallback, report
from ..contract.atomic import Interrupted, replacing, write_bytes, write_json
from ..contract.errors import EXIT_DIVERGED, HpaError, OptionError
from ..contract.labels import CLASS_NAMES
from ..contract.locations import is_url
from ..contract.locks import store_locked
from . import distributed
from .averaging import recompute_batchnorm
from .checkpoints import load_checkpoint, load_weights, save_checkpoint
from .config import TrainConfig
from .inference import TestCrops, autocast, predict_probs
from .metrics import crossfit_macro_f1, f1_table, macro_f1, per_class_f1, predict_labels
from .thresholds import chooser
from .planning import Plan, plan_run, samples_message
from .plots import plot_run
from .probs_table import write_probs
from .run_folder import RunFolder, append_metrics, config_for_run, cut_metrics, write_config, write_folds
from .train_state import TrainState, check_precision, make_state
from .training_data import Data, make_data, max_workers

#: steps between reads of the running loss (progress bar, NaN check); each read waits for the GPU
LOG_EVERY = 25
#: steps at the start of an epoch left out of the steady-state images/s
WARMUP_STEPS = 5


class TrainingDiverged(HpaError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""

    exit_code = EXIT_DIVERGED
    label = "stopped"


log = logging.getLogger(__name__)


def fault_point(name: str) -> None:
    """Where a kill would leave the run folder in a new state; tests replace this to crash here."""


# --- the run -------------------------------------------------------------------------------------

def train(cfg: TrainConfig, resume: bool = False, progress: ProgressCallback | None = None,
          given: set[str] | dict[str, str] | None = None) -> dict:
    """Train one fold; returns the last epoch's metrics with ``best_valid_macro_f1``.

    ``progress`` gets the run it started or resumed (a message), then the steps of each epoch
    (task ``train``, with the loss and speed) and of its validation (task ``valid``). On ``resume`` the run's
    saved options are used; ``given`` names the options the user gave (default: all of ``cfg``),
    which must agree with them. Under ``torchrun`` every process calls this; see
    :mod:`.distributed` for who does what.
    """
    if cfg.fold == "all":
        raise OptionError("fold 'all' is a cross-validation: call cross_validation.train_folds (train --fold all)")
    cfg = with_checked_paths(cfg, "run folder")
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


def with_checked_paths(cfg: TrainConfig, folder: str) -> TrainConfig:
    """``cfg``, which must name its ``--out`` (the ``folder`` to write), with its local stores as
    absolute paths: a run folder names its data wherever it is used from (predict, export,
    thresholds run in other folders)."""
    if not cfg.out:
        raise OptionError(f"--out is required: the {folder} to write (or to --resume)")

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
        state = make_state(cfg, data.steps_per_epoch, device)
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
        log.info("%s", data.decode_line)
        if cfg.decode != "auto" or data.gpu_decoding is not None or device.type == "cuda":
            report(progress, Progress("train", message=data.decode_line))
        for epoch in range(state.epoch + 1, cfg.epochs):
            speed = train_one_epoch(cfg, epoch, state, step, data, ranks, device, progress)
            evaluation = validate(cfg, epoch, state, data, ranks, device, progress, plan.training_shares)
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
                                      cfg.channels_last, tta=cfg.tta, on_batch=step, crops=TestCrops.of_run(cfg))
    probs, indices = distributed.gather_arrays((probs, indices), ranks)
    if ranks.is_main:
        order = np.argsort(indices)
        write_probs(run.oof, [plan.ids[i] for i in indices[order]], probs[order])
    distributed.barrier(ranks)


def prepare_run_folder(run: RunFolder, cfg: TrainConfig, plan: Plan, state: TrainState) -> None:
    """Rank 0, after every check: the config and folds, and metrics cut back to ``last.pt``."""
    (run.path / "checkpoints").mkdir(parents=True, exist_ok=True)
    write_config(run, cfg, plan.normalization)
    if not run.folds.exists() or state.epoch < 0:
        write_folds(run, plan.ids, plan.folds)
    if plan.external_left_out:
        with replacing(run.external_left_out) as tmp, tmp.open("w", newline="") as f:
            writer = csv.writer(f, lineterminator="\n")
            writer.writerow(["store", "Id", "why"])
            writer.writerows(plan.external_left_out)
    if state.epoch < 0:
        run.metrics.unlink(missing_ok=True)
    cut_metrics(run, state.epoch + 1)


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
    shares: np.ndarray  # the training samples' share of each class (``ratio`` matches them)


def validate(cfg: TrainConfig, epoch: int, state: TrainState, data: Data, ranks, device, progress,
             shares: np.ndarray) -> Evaluation:
    """Whole images of the validation fold (training level by default), with the training loss
    and three macro F1 figures: at 0.5, and with thresholds of the run's strategy (``shares``:
    the training samples' share of each class, for ``ratio``) tuned out of sample (cross-fit)
    and in sample."""
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
    if not np.isfinite(probs).all():
        raise TrainingDiverged(f"the model's validation outputs are NaN or infinite at epoch {epoch + 1} (its "
                               "training loss was not); the last good checkpoint is kept. Lower --lr or use "
                               "--amp bf16/none.")
    truth = data.valid_set.labels[indices] > 0.5
    thresholds = chooser(cfg.threshold_strategy, cfg.threshold_scale, shares)(truth, probs)
    scores = {"valid_loss": loss_total / max(count, 1),
              "valid_macro_f1": macro_f1(truth, predict_labels(probs, 0.5)),
              "valid_macro_f1_tuned_crossfit": crossfit_macro_f1(
                  truth, probs, cfg.seed, chooser(cfg.threshold_strategy, cfg.threshold_scale)),
              "valid_macro_f1_tuned_in_sample": macro_f1(truth, predict_labels(probs, thresholds)),
              "valid_s": round(time.perf_counter() - started, 3)}
    return Evaluation(scores, truth, probs, thresholds, shares)


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
            "thresholds": evaluation.thresholds.tolist(), "strategy": cfg.threshold_strategy,
            "scale": cfg.threshold_scale if cfg.threshold_strategy == "f1" else None,
            "shares": evaluation.shares.tolist(), "class_names": list(CLASS_NAMES), "epoch": row["epoch"],
            "level": cfg.val_level or cfg.level, "fold": cfg.fold, "n_valid": int(len(evaluation.truth)),
            **{k: v for k, v in row.items() if k.startswith("valid_macro_f1")},
            "support": evaluation.truth.sum(0).astype(int).tolist(),
            "per_class_f1": per_class_f1(evaluation.truth, tuned).tolist()})
        heading = (f"Per-class F1 of the validation fold at epoch {row['epoch']} (best), with the thresholds of "
                   f"thresholds.json ({cfg.threshold_strategy}, chosen on this fold: in sample)\n")
        write_bytes(run.f1_table, (heading + f1_table(evaluation.truth, tuned) + "\n").encode())
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
    return SummaryWriter(str(run.tensorboard), purge_step=first_epoch if first_epoch > 1 else None)
