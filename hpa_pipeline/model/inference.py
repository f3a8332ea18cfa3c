"""Inference: a run's weights, sigmoid probabilities with test-time augmentation, and ``predict``.

``train`` (validation every epoch) and ``predict`` (the submission) share :func:`predict_probs`,
so a model is always evaluated the same way: whole images of the run's validation level (its
training level unless ``--val-level`` said otherwise), normalised with the *training* store's
channel statistics that the run saved. A test store's own statistics are never used, so a
sample's prediction does not depend on which other samples share its store.
"""
from __future__ import annotations

import contextlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..common.progress import Progress, ProgressCallback, report
from ..contract.locks import store_locked
from ..contract.store import Store
from .checkpoints import load_checkpoint, load_weights
from .config import TrainConfig
from .data import Normalizer, dihedral
from .metrics import predict_labels
from .models import create_model
from .run_folder import RunError, RunFolder, fold_runs, is_cross_validation, read_config
from .thresholds import rematched
from .names import CROP_MODES, CROP_REDUCTIONS, fits_crop_grid
from ..contract.spec import StoreError
from ..contract.errors import OptionError
from ..contract.labels import N_CLASSES


log = logging.getLogger(__name__)


def tta_views(images: torch.Tensor, n: int):
    """The first ``n`` of the 8 dihedral views (identity, rotations, then flipped) of a batch."""
    if not 1 <= n <= 8:
        raise ValueError("tta must be between 1 and 8")
    for code in range(n):
        yield dihedral(images, code)


def autocast(amp: str, device: torch.device):
    """bf16 or fp16 autocast on CUDA; nothing elsewhere or with ``amp='none'``."""
    if device.type != "cuda" or amp == "none":
        return torch.autocast(device.type, enabled=False)
    return torch.autocast("cuda", dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


@dataclass(frozen=True)
class TestCrops:
    """Test-time crops, as 1st place took them: ``count`` crops of ``size``² pixels of each whole
    image, ``tiled`` (a square grid from corner to corner) or ``random`` (origins drawn from
    ``(seed, sample)``, so the same every run), their probabilities reduced by ``max`` or ``mean``.
    Each crop is seen in every TTA view first."""

    count: int
    size: int
    mode: str = "tiled"
    reduce: str = "max"
    seed: int = 0

    def __post_init__(self):
        if self.mode not in CROP_MODES or self.reduce not in CROP_REDUCTIONS:
            raise OptionError(f"test-time crops: mode one of {CROP_MODES}, reduction one of {CROP_REDUCTIONS}")
        if self.count < 1 or not fits_crop_grid(self.count, self.mode):
            raise OptionError(f"--crops {self.count}: tiled crops form a square grid (1, 4, 9, 16, ...)")

    def origins(self, side: int, sample: int) -> list[tuple[int, int]]:
        """Where the crops of a ``side``² image start (``(y, x)``, in crop order)."""
        room = side - self.size
        if room < 0:
            raise OptionError(f"test-time crops of {self.size}² do not fit images of {side}²")
        if self.mode == "random":
            rng = np.random.default_rng((self.seed, 5_000_011, sample))
            return [(int(y), int(x)) for y, x in rng.integers(0, room + 1, (self.count, 2))]
        k = round(self.count ** 0.5)
        steps = np.linspace(0, room, k).round().astype(int) if k > 1 else [room // 2]
        return [(int(y), int(x)) for y in steps for x in steps]

    def take(self, images: torch.Tensor, samples, k: int) -> torch.Tensor:
        """Crop ``k`` of each image of the batch."""
        side = images.shape[-1]
        spots = [self.origins(side, int(s))[k] for s in samples]
        return torch.stack([img[:, y:y + self.size, x:x + self.size] for img, (y, x) in zip(images, spots)])

    @classmethod
    def of_run(cls, cfg: TrainConfig, count: int | None = None, mode: str | None = None,
               reduce: str | None = None) -> TestCrops | None:
        """The run's test-time crops (its ``tta_crops`` of its ``crop``), each part overridable;
        None for whole images."""
        count = cfg.tta_crops if count is None else count
        if not count:
            return None
        return cls(count, cfg.crop, mode or cfg.tta_crop_mode, reduce or cfg.tta_crop_reduce, cfg.seed)

    def combine(self, probs: list[torch.Tensor]) -> torch.Tensor:
        stacked = torch.stack(probs)
        return stacked.amax(dim=0) if self.reduce == "max" else stacked.mean(dim=0)


@torch.no_grad()
def predict_probs(model, loader, normalize: Normalizer, device, amp: str = "none", channels_last: bool = False,
                  tta: int = 1, loss_fn=None, on_batch=None,
                  crops: TestCrops | None = None) -> tuple[np.ndarray, np.ndarray, float | None]:
    """Sigmoid probabilities ``(n, 28)`` averaged over ``tta`` views (of the whole image, or of
    each of the test-time ``crops``, then reduced over them), the sample indices, and the mean
    of ``loss_fn`` over the un-augmented whole image (None without ``loss_fn``).

    ``on_batch(batches_done)`` before the first batch (0) and after each. The loss stays on the
    device until the end.
    """
    model.eval()
    if on_batch:
        on_batch(0)
    probs, indices = [], []
    loss_sum, seen = torch.zeros((), device=device), 0
    for batch, (images, targets, index, _) in enumerate(loader):
        images = normalize(images.to(device, non_blocking=True))
        if channels_last and device.type == "cuda":
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast(amp, device):
            first = None
            if crops is None:
                batch_probs, first = _views_mean(model, images, tta)
            if loss_fn is not None:
                first = model(images).float() if first is None else first  # the un-augmented whole image
                loss_sum += loss_fn(first, targets.to(device, non_blocking=True)) * len(images)
            if crops is not None:
                samples = index.cpu().numpy()
                batch_probs = crops.combine([_views_mean(model, crops.take(images, samples, k), tta)[0]
                                             for k in range(crops.count)])
        probs.append(batch_probs.cpu().numpy())
        indices.append(index.cpu().numpy())  # the feed hands indices over on the device
        seen += len(images)
        if on_batch:
            on_batch(batch + 1)
    loss = float(loss_sum) / max(seen, 1) if loss_fn is not None else None
    return np.concatenate(probs), np.concatenate(indices), loss


def _views_mean(model, images: torch.Tensor, tta: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean probabilities over the first ``tta`` views, and the logits of the first view."""
    total, first = 0, None
    for code, view in enumerate(tta_views(images, tta)):
        logits = model(view).float()
        first = logits if code == 0 else first
        total = total + torch.sigmoid(logits)
    return total / tta, first


@dataclass
class TrainedRun:
    """What ``predict`` needs of a run: the weights to predict with and how it saw images."""

    path: Path
    model: torch.nn.Module
    config: TrainConfig
    thresholds: np.ndarray
    normalization: dict  # {"level", "mean", "std"}: channel statistics of the training store's level

    @property
    def level(self) -> int:
        """The level it was validated on (and its thresholds tuned on): its training level by default."""
        return self.config.val_level or self.config.level

    def normalizer(self) -> Normalizer:
        return Normalizer(self.normalization["mean"], self.normalization["std"],
                          per_image=self.config.normalize == "image")


def read_thresholds(path: Path) -> np.ndarray:
    """The 28 per-class thresholds of a ``thresholds.json``, each a number in [0, 1]; anything
    else is a :class:`RunError` naming the file."""
    return read_threshold_record(path)["thresholds"]


def read_threshold_record(path: Path) -> dict:
    """A ``thresholds.json``: its checked thresholds, and the strategy and training shares it
    was chosen with (None in files written without them)."""
    try:
        record = json.loads(path.read_text())
        thresholds = np.array(record["thresholds"], dtype=np.float64)
    except FileNotFoundError:
        raise RunError(f"{path}: missing (has this run finished an epoch?)") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise RunError(f"{path}: not a readable thresholds file ({type(exc).__name__}: {exc})") from None
    if thresholds.shape != (N_CLASSES,) or not np.all((thresholds >= 0) & (thresholds <= 1)):
        raise RunError(f"{path}: expected {N_CLASSES} thresholds between 0 and 1, found "
                       f"{thresholds.size} values{'' if thresholds.size != N_CLASSES else ' outside [0, 1]'}")
    shares = record.get("shares")
    if shares is not None:
        values = np.array(shares, dtype=np.float64) if isinstance(shares, list) else np.array([])
        if values.shape != (N_CLASSES,) or not np.all((values >= 0) & (values <= 1)):
            raise RunError(f"{path}: shares must be {N_CLASSES} numbers in [0, 1]")
    return {"thresholds": thresholds, "strategy": record.get("strategy"), "shares": shares}


def load_run(path: str | Path, device) -> TrainedRun:
    """The best weights of a run, its options, thresholds and training normalisation."""
    run = RunFolder(Path(path))
    if (run.path / "zarr.json").exists():
        raise RunError(f"{run.path} is a dataset store, not a run folder: give it as --store, and a run "
                       f"folder (from train) as --run")
    if not run.best.exists():
        raise RunError(f"{run.path}: no checkpoints/best.pt (has this run finished an epoch?)")
    cfg, normalization = read_config(run.config)
    if normalization is None:
        raise RunError(f"{run.path} was trained before runs saved their normalisation statistics; "
                       f"retrain it to predict with it")
    state = load_checkpoint(run.best, device)
    if not isinstance(state.get("model"), dict):
        raise RunError(f"{run.best}: not a checkpoint of this project (no model weights)")
    model = create_model(cfg.arch, cfg.backend, drop_rate=cfg.drop_rate, head=cfg.head).to(device)
    load_weights(model, state["model"], run.best)
    thresholds = read_thresholds(run.thresholds)
    log.debug("run %s: %s, best checkpoint %s, thresholds %s", run.path, cfg.arch, run.best, run.thresholds)
    return TrainedRun(run.path, model, cfg, thresholds, normalization)


def predict(store: str | Path, runs: list[str | Path], tta: int = 1, batch_size: int = 16, workers: int = 2,
            device: str = "auto", progress: ProgressCallback | None = None,
            thresholds: str | Path | None = None, ratio_on: str = "predicted", crops: int | None = None,
            crop_mode: str | None = None, crop_reduce: str | None = None,
            decode: str = "auto") -> tuple[list[str], np.ndarray, np.ndarray]:
    """:func:`predict_store` holding a reader's lock on the store: no writer changes it meanwhile.

    A cross-validation folder in ``runs`` stands for its folds, with its thresholds (chosen on
    the whole out-of-fold table); ``thresholds``: a ``thresholds.json`` that overrides them all.
    Thresholds of the ``ratio`` strategy are matched again on the predicted samples to the
    training shares, unless ``ratio_on="oof"`` (:func:`.thresholds.rematched`). ``crops``,
    ``crop_mode``, ``crop_reduce``: test-time crops (:class:`TestCrops`) instead of each run's own.
    ``decode``: where the images are decoded (``auto``, ``gpu``, ``cpu``; as training's ``--decode``).
    """

    resolved = [Path(r).resolve() for r in runs]
    repeated = sorted({str(r) for r in resolved if resolved.count(r) > 1})
    if repeated:
        raise RunError(f"--run {repeated[0]} is given twice: each run counts once in the average")
    expanded, chosen = [], None
    for run in runs:
        if is_cross_validation(run):
            expanded += fold_runs(run)
            chosen = RunFolder(Path(run)).thresholds if len(runs) == 1 else None
        else:
            expanded.append(run)
    chosen = thresholds if thresholds is not None else chosen
    with store_locked(store, shared=True):
        ids, probs, _ = predict_store(store, expanded, tta, batch_size, workers, device, progress,
                                      crops, crop_mode, crop_reduce, decode)
    records = [read_threshold_record(Path(chosen))] if chosen is not None else [
        read_threshold_record(RunFolder(Path(run)).thresholds) for run in expanded]
    record = {"thresholds": np.mean([r["thresholds"] for r in records], axis=0),
              "strategy": records[0]["strategy"] if len({r["strategy"] for r in records}) == 1 else None,
              "shares": records[0]["shares"]}
    chosen_thresholds, how = rematched(record, probs, ratio_on)
    report(progress, Progress("predict", message=how))
    return ids, probs, predict_labels(probs, chosen_thresholds)


def predict_store(store: str | Path, runs: list[str | Path], tta: int = 1, batch_size: int = 16, workers: int = 2,
                  device: str = "auto", progress: ProgressCallback | None = None, crops: int | None = None,
                  crop_mode: str | None = None, crop_reduce: str | None = None,
                  decode: str = "auto") -> tuple[list[str], np.ndarray, np.ndarray]:
    """``(ids, mean probabilities (n, 28), predicted labels (n, 28) bool)`` over the whole store.

    Each run predicts at its own validation level with its own training
    statistics and test-time crops (its own, or ``crops`` ...); probabilities are averaged over
    runs (e.g. folds) and TTA views; thresholds are
    the mean of the runs' thresholds. Samples not done in the store are an error: a submission
    needs all. ``progress`` gets the batches done over all runs (task ``predict``). ``decode``:
    where the images are decoded, as training's ``--decode`` (:func:`.chunk_decode.choose_decoder`).
    """
    from .data import StoreDataset
    from .distributed import pick_device

    opened = Store.open(store)
    done = opened.done()
    if not done.all():
        missing = [opened.ids[i] for i in np.flatnonzero(~done)[:5]]
        raise StoreError(f"{store}: {int((~done).sum())} samples not written (e.g. {missing}); "
                         f"finish the ingest (see report.json) before predicting")
    dev = pick_device(device)
    trained = [load_run(run, dev) for run in runs]
    for run in trained:  # a run normalises by its training data's statistics: same dtype, or nonsense
        trained_on = run.normalization["dtype"]
        if trained_on != opened.dtype:
            raise RunError(f"{run.path} was trained on {trained_on} images and --store {store} is "
                           f"{opened.dtype}; build the test store with --dtype {trained_on}")
    datasets = [StoreDataset(opened, run.level, np.arange(len(done))) for run in trained]
    codec = prediction_decoder(decode, opened, datasets[0], dev, progress)
    n_batches = -(-len(done) // batch_size)  # whole images of every sample, for each run
    total, thresholds = 0.0, []
    for k, (run, dataset) in enumerate(zip(trained, datasets)):
        def step(batches, offset=k * n_batches):
            report(progress, Progress("predict", offset + batches, n_batches * len(trained), "batch"))

        with whole_image_batches(dataset, batch_size, workers, dev, codec) as batches:
            probs, indices, _ = predict_probs(run.model, batches, run.normalizer().to(dev), dev, run.config.amp,
                                              run.config.channels_last, tta=tta, on_batch=step,
                                              crops=TestCrops.of_run(run.config, crops, crop_mode, crop_reduce))
        total = total + probs[np.argsort(indices)]
        thresholds.append(run.thresholds)
    probs = total / len(runs)
    labels = predict_labels(probs, np.mean(thresholds, axis=0))
    return list(opened.ids), probs, labels


def prediction_decoder(decode: str, store: Store, dataset, device: torch.device, progress) -> str | None:
    """The store's codec where ``decode`` has ``device`` decode the images, else None (the loader
    workers decode them); a line says which, where a GPU could be involved."""
    from .chunk_decode import choose_decoder

    direct = dataset.reader().layout is not None
    chosen, why = choose_decoder(decode, store.spec.codec, device, direct, task="predict")
    log.info("%s", why)
    if decode != "auto" or device.type == "cuda":
        report(progress, Progress("predict", message=why))
    return store.spec.codec if chosen == "gpu" else None


@contextlib.contextmanager
def whole_image_batches(dataset, batch_size: int, workers: int, device: torch.device, codec: str | None = None):
    """The dataset's batches in order: read by ``workers`` :class:`.feed.BatchFeed` processes (a
    worker's failure, a damaged shard included, is raised here as itself), or in this process.
    With the store's ``codec`` (``zstd`` or ``none``), the workers read the chunks' stored bytes
    and ``device`` decodes them (:mod:`.chunk_decode`): the same images, bit for bit."""
    from .data import make_loader
    from .feed import BatchFeed

    if codec is not None:
        from .chunk_decode import GpuDecoding

        decoding = GpuDecoding(dataset, batch_size, workers, device, codec)
        try:
            yield decoding.batches(range(len(dataset)))
        finally:
            decoding.close()
        return
    if workers == 0:
        yield iter(make_loader(dataset, batch_size, 0))
        return
    feed = BatchFeed(dataset, batch_size, workers, device)
    try:
        yield feed.batches(range(len(dataset)))
    finally:
        feed.close()
