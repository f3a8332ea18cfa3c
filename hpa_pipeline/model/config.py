"""``TrainConfig``: every option of a training run, declared once and without torch.

The ``train`` command builds one Click option per field (name, type, default and the ``help``
of the field's metadata), and ``pipelines/*.yaml`` recipes set them by name, so this dataclass
is the single list of training options. It imports nothing heavy, so ``hpa-pipe --help`` and
the preprocessing commands never pay for importing torch.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, fields


from .names import (ARCHS, BACKENDS, CROP_MODES, CROP_REDUCTIONS, DECODERS, DEFAULT_ARCH, HEADS, LOVASZ_MODES,
                    PRECISIONS, SCHEDULES, STRATEGIES, fits_crop_grid, is_arch, loss_terms)
from ..contract.duplicates import DEFAULT_MAX_DISTANCE
from ..contract.errors import OptionError


#: option kinds besides the plain types str, int, float and bool
STORES = "stores"  # a store, repeatable: a tuple of them
COUNT_OR_AUTO = "count-or-auto"  # 0 or more, or "auto" (None)
FOLD_OR_ALL = "fold-or-all"  # a fold number, or "all" (every fold in turn: cross-validation)


def option(kind, default, help: str, choices: tuple | None = None):
    """A dataclass field with its command-line kind (``str``, ``int``, ``float``, ``bool``,
    ``STORES`` or ``COUNT_OR_AUTO``: stated, never read from the annotation), help, and its
    fixed set of values, if any."""
    return field(default=default, metadata={"kind": kind, "help": help, "choices": choices})


@dataclass
class TrainConfig:
    """Every option of a run; ``pipelines/*.yaml`` recipes set them by name."""

    store: str = option(str, "", "Train store (from ingest or build-zarr): a folder or a URL.")
    out: str = option(str, "", "Run folder (checkpoints, metrics, thresholds); a new one, or the one to --resume.")
    external: tuple = option(STORES, (), "External store (e.g. HPA v18) whose samples always train, never validate; "
                                 "repeat for several. Folds and validation use --store only.")
    arch: str = option(str, DEFAULT_ARCH, f"Architecture: an SENet ({', '.join(ARCHS)}; se_resnet_tiny for CPU "
                                          f"tests and the demo), or timm:NAME for any timm model (timm:densenet121, "
                                          f"timm:inception_v3, timm:resnet34).")
    head: str = option(str, "linear", "Classifier: linear (the backbone's own, on average pooling) or avgmax-2fc "
                                      "(1st place's: average and max pooling concatenated, two fully connected "
                                      "layers; --backend timm).", HEADS)
    backend: str = option(str, "timm", "Library that builds it: the same network and checkpoint keys either way.",
                          BACKENDS)
    weights: str | None = option(str, None, "ImageNet weights: a local .pth/.safetensors file, 'cache' (the torch hub "
                                       "and Hugging Face caches), or 'none' for random initialisation.")
    drop_rate: float = option(float, 0.2, "Dropout before the classifier, the same for both backends.")
    level: int = option(int, 1024, "Store level to train on; validation and predict use it too (whole images).")
    crop: int = option(int, 512, "Random training crop size (pixels of --level).")
    normalize: str = option(str, "store", "store: by the train store's channel statistics; image: each image by its "
                                          "own mean and std per channel (for stores of very different statistics, "
                                          "e.g. with --external HPA v18).", ("store", "image"))
    init_from: str = option(str, "", "Start from the best weights of this run folder (a new optimiser and schedule), "
                                     "e.g. fine-tuning at 1024 a run trained at 512.")
    crop_grid: int = option(int, 1, "Crop origins on this grid (e.g. the store's chunk size: fastest reads); "
                               "1 = any offset.")
    decode: str = option(str, "auto", "Where training crops are decoded: gpu (the loader workers read the chunks' "
                                      "stored bytes and nvCOMP decodes them on the GPU: a store of --codec zstd or "
                                      "none), cpu (in the workers), or auto (the GPU where it can; one line says "
                                      "which and why).", DECODERS)
    stream: bool = option(bool, False, "Read whole shards in streaming order with a shuffle buffer "
                                 "(for s3:// and other remote stores).")
    stream_buffer: int = option(int, 16, "Whole images held per loader worker when streaming.")
    val_level: int | None = option(int, None, "Level for validation and predict, whole images [default: --level, the "
                                         "scale the model trained at].")
    folds: int = option(int, 5, "Number of multilabel stratified folds of the store.")
    group_duplicates: bool = option(bool, True, "Keep near-duplicate samples (by the store's perceptual hashes) in "
                                                "one fold, and leave --external duplicates of validation samples out.")
    duplicate_distance: int = option(int, DEFAULT_MAX_DISTANCE, "Largest Hamming distance of the pHashes, on each of red, green and "
                                              "blue, for two samples to be duplicates (1st place's 12).")
    fold: int | str = option(FOLD_OR_ALL, 0, "Validation fold (0..folds-1), or 'all': every fold in turn into "
                                              "<out>/fold<k>/, then the out-of-fold table, thresholds and F1.")
    epochs: int = option(int, 20, "Training epochs.")
    epoch_size: int | None = option(int, None, "Samples per epoch [default: the training fold]; more than the fold "
                                          "draws with replacement.")
    batch_size: int = option(int, 32, "Images per step and process.")
    accumulate: int = option(int, 1, "Gradient accumulation steps.")
    lr: float = option(float, 3e-4, "Peak learning rate (AdamW).")
    weight_decay: float = option(float, 1e-4, "AdamW weight decay.")
    warmup_epochs: float = option(float, 1.0, "Linear warm-up, in epochs, before the cosine decay.")
    schedule: str = option(str, "cosine", "Learning-rate schedule: linear warm-up then cosine, or one-cycle.",
                           SCHEDULES)
    loss: str = option(str, "bce", "The loss: bce, focal, lovasz (the Lovász hinge) or hard (log loss of the hardest "
                                   "--hard-fraction of a batch's class outputs), or several joined by + "
                                   "(focal+lovasz+hard: 1st place's); the validation loss is the same function.")
    focal_gamma: float = option(float, 2.0, "Focusing exponent of the focal loss.")
    focal_alpha: float = option(float, -1.0, "Focal loss's balance of positives (Lin et al.: 0.25); -1 = none.")
    lovasz: str = option(str, "batch", "Lovász hinge over the batch's (sample, class) pairs as one problem, or per "
                                       "image (each sample's classes; the reference's default).", LOVASZ_MODES)
    hard_fraction: float = option(float, 0.1, "The hard term: the share of a batch's (sample, class) outputs, "
                                              "those with the largest log loss, it averages.")
    class_weighting: bool = option(bool, False, "Weight each class's positives by sqrt((1-f)/f) of its frequency f.")
    oversample: bool = option(bool, False, "Sample rare classes more often.")
    ema: float = option(float, 0.0, "EMA decay of the weights (e.g. 0.999); 0 = off.")
    swa_epochs: int = option(int, 0, "SWA: average the weights of the last N epochs (BatchNorm recomputed); 0 = off.")
    swa_bn_batches: int = option(int, 50, "Training batches used to recompute BatchNorm statistics of the SWA weights.")
    amp: str = option(str, "bf16", "Mixed precision on CUDA (ignored on the CPU).", PRECISIONS)
    channels_last: bool = option(bool, True, "channels_last memory format on CUDA.")
    compile: bool = option(bool, False, "torch.compile the training step (model and loss).")
    sync_bn: bool = option(bool, False, "SyncBatchNorm across torchrun processes (CUDA only).")
    workers: int | None = option(COUNT_OR_AUTO, None,
                                 "Loader worker processes, each reading crops on one core; 0 reads in the "
                                 "training process [default: auto: started as the measured wait for batches "
                                 "asks, up to the cores less one].")
    seed: int = option(int, 0, "Seed of folds, crops, order and initialisation: same seed, same run.")
    device: str = option(str, "auto", "auto (a GPU if there is one), cpu, cuda or cuda:N.")
    steps_per_epoch: int | None = option(int, None, "Cap on optimizer steps per epoch.")
    tta: int = option(int, 1, "Test-time views (flips/rotations, 1-8) of the out-of-fold table written at the end "
                              "(oof.csv, from the best epoch's weights).")
    tta_crops: int = option(int, 0, "Test-time crops of --crop² pixels for the out-of-fold table and, by default, "
                                    "predict (1st place: the max over several); 0 = whole images.")
    tta_crop_mode: str = option(str, "tiled", "Where test-time crops lie: tiled (a square grid, corner to corner: "
                                              "4, 9, ...) or random (the same every run).", CROP_MODES)
    tta_crop_reduce: str = option(str, "max", "How test-time crops' probabilities are reduced: max or mean.",
                                  CROP_REDUCTIONS)
    threshold_strategy: str = option(str, "f1", "How thresholds are chosen from out-of-fold probabilities: f1 "
                                                "(per class, maximise F1), ratio (predicted positive share = the "
                                                "class's share in the labels) or fixed (0.5).", STRATEGIES)
    threshold_scale: float = option(float, 1.0, "Factor on the f1 strategy's thresholds (e.g. 0.7 to predict more).")

    def _check_numbers(self) -> None:
        """The optimizer's numbers, named as options: torch would refuse some with its own
        message, and accept a negative warm-up or focusing exponent as a silently odd run."""
        if not (0 < self.lr < math.inf):  # also refuses nan
            raise OptionError(f"--lr must be a number above 0, got {self.lr}")
        for name in ("weight_decay", "warmup_epochs", "focal_gamma"):
            value = getattr(self, name)
            if not (0 <= value < math.inf):
                raise OptionError(f"--{name.replace('_', '-')} must be a number of 0 or more, got {value}")

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise OptionError(f"unknown training options {unknown}")
        return cls(**values)

    def __post_init__(self):
        self.external = tuple(self.external or ())
        for f in fields(self):
            choices = f.metadata.get("choices")
            if choices and getattr(self, f.name) not in choices:
                raise OptionError(f"--{f.name.replace('_', '-')} {getattr(self, f.name)!r} is not one of {choices}")
        if loss_terms(self.loss) is None:
            raise OptionError(f"--loss {self.loss!r}: one of bce, focal, lovasz, hard, or several joined by + "
                              f"(e.g. focal+lovasz+hard)")
        if not -1 <= self.focal_alpha <= 1 or not 0 < self.hard_fraction <= 1:
            raise OptionError("--focal-alpha must be in [0, 1] (or -1: none) and --hard-fraction in (0, 1]")
        if not is_arch(self.arch):
            raise OptionError(f"--arch {self.arch!r} is not one of {', '.join(ARCHS)}, nor timm:NAME (any timm model)")
        if isinstance(self.fold, str) and self.fold.strip().lower() == "all":
            self.fold = "all"
        elif isinstance(self.fold, str) and self.fold.strip().isdigit():
            self.fold = int(self.fold)
        if not isinstance(self.fold, int) and self.fold != "all":
            raise OptionError(f"--fold must be a fold number or 'all', got {self.fold!r}")
        if self.folds < 2 or self.fold != "all" and not 0 <= self.fold < self.folds:
            raise OptionError(f"--fold must be between 0 and --folds - 1 ({self.folds - 1}) or 'all', with --folds >= 2; "
                             f"got --fold {self.fold} --folds {self.folds}")
        for name in ("epochs", "batch_size", "accumulate", "level", "crop", "crop_grid", "stream_buffer",
                     "swa_bn_batches", "epoch_size", "steps_per_epoch", "val_level"):
            value = getattr(self, name)
            if value is not None and value < 1:  # None: the option's "not given" default
                raise OptionError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
        self._check_numbers()
        if self.stream and self.epoch_size is not None:
            raise OptionError("--stream reads every sample once per epoch; it cannot use --epoch-size")
        if self.crop > self.level:
            raise OptionError(f"--crop {self.crop} is larger than --level {self.level}")
        if not 0 <= self.drop_rate < 1 or not 0 <= self.ema < 1:
            raise OptionError("--drop-rate and --ema must be in [0, 1)")
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", str(self.device)):
            raise OptionError(f"--device must be auto, cpu, cuda or cuda:N, not {self.device!r}")
        if isinstance(self.workers, str) and self.workers.lower() == "auto":
            self.workers = None
        if self.workers is not None and self.workers < 0:
            raise OptionError(f"--workers must be 0 (read in the training process) or more, got {self.workers}")
        if self.stream and self.external:
            raise OptionError("--stream reads one store; it cannot take --external stores")
        if self.stream and self.oversample:
            raise OptionError("--stream reads every sample once per epoch; it cannot --oversample")
        if self.ema > 0 and self.swa_epochs > 0:
            raise OptionError("choose one weight average: --ema or --swa-epochs, not both")
        if not fits_crop_grid(self.tta_crops, self.tta_crop_mode):
            raise OptionError(f"--tta-crops {self.tta_crops}: tiled crops form a square grid (1, 4, 9, 16, ...)")
        if not 1 <= self.tta <= 8:
            raise OptionError(f"--tta must be between 1 and 8 (the flips and rotations), got {self.tta}")
        if not 0 < self.threshold_scale <= 10:
            raise OptionError(f"--threshold-scale must be above 0, got {self.threshold_scale}")
        if not 0 <= self.swa_epochs <= self.epochs:
            raise OptionError(f"--swa-epochs must be between 0 and --epochs ({self.epochs})")
