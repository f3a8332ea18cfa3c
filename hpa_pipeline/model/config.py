"""``TrainConfig``: every option of a training run, declared once and without torch.

The ``train`` command builds one Click option per field (name, type, default and the ``help``
of the field's metadata), and ``pipelines/*.yaml`` recipes set them by name, so this dataclass
is the single list of training options. It imports nothing heavy, so ``hpa-pipe --help`` and
the preprocessing commands never pay for importing torch.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields


def option(default, help: str):
    """A dataclass field with its command-line help."""
    return field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
    """Every option of a run; ``pipelines/*.yaml`` recipes set them by name."""

    store: str = option("", "Train store (from ingest or build-zarr): a folder or a URL.")
    out: str = option("", "Run folder (checkpoints, metrics, thresholds).")
    arch: str = option("se_resnext50_32x4d",
                       "se_resnext50_32x4d, se_resnet50, se_resnext101_32x4d, senet154 or se_resnet_tiny.")
    backend: str = option("timm", "timm or pretrainedmodels (same network, same checkpoint keys).")
    weights: str | None = option(None, "ImageNet weights: a local file, or 'cache' for the torch hub cache. "
                                       "Default: from scratch.")
    level: int = option(1024, "Store level to train on.")
    crop: int = option(512, "Random crop size.")
    crop_grid: int = option(1, "Crop origins on this grid (e.g. the store's chunk size: fastest reads); "
                               "1 = any offset.")
    stream: bool = option(False, "Read whole shards in streaming order with a shuffle buffer "
                                 "(for s3:// and other remote stores).")
    stream_buffer: int = option(16, "Whole images held per loader worker when streaming.")
    val_level: int | None = option(None, "Level for validation, whole images [default: --level].")
    folds: int = option(5, "")
    fold: int = option(0, "Validation fold (0..folds-1).")
    epochs: int = option(20, "")
    batch_size: int = option(32, "")
    accumulate: int = option(1, "Gradient accumulation steps.")
    lr: float = option(3e-4, "")
    weight_decay: float = option(1e-4, "")
    warmup_epochs: float = option(1.0, "")
    schedule: str = option("cosine", "cosine (with warm-up) or onecycle.")
    loss: str = option("bce", "bce or focal.")
    focal_gamma: float = option(2.0, "")
    class_weighting: bool = option(False, "BCE pos_weight from class frequencies.")
    oversample: bool = option(False, "Sample rare classes more often.")
    ema: float = option(0.0, "EMA decay of the weights (e.g. 0.999); 0 = off.")
    swa_epochs: int = option(0, "SWA: average the weights of the last N epochs (BatchNorm recomputed); 0 = off.")
    swa_bn_batches: int = option(50, "Training batches used to recompute BatchNorm statistics of the SWA weights.")
    amp: str = option("bf16", "bf16, fp16 or none (CUDA only).")
    channels_last: bool = option(True, "")
    compile: bool = option(False, "")
    sync_bn: bool = option(False, "SyncBatchNorm across torchrun processes (CUDA only).")
    workers: int = option(4, "DataLoader worker processes.")
    seed: int = option(0, "")
    device: str = option("auto", "")
    steps_per_epoch: int | None = option(None, "Cap on optimizer steps per epoch.")

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown training options {unknown}")
        return cls(**values)

    def __post_init__(self):
        if self.stream and self.oversample:
            raise ValueError("--stream reads every sample once per epoch; it cannot --oversample")
        if self.ema > 0 and self.swa_epochs > 0:
            raise ValueError("choose one weight average: --ema or --swa-epochs, not both")
        if not 0 <= self.swa_epochs <= self.epochs:
            raise ValueError(f"--swa-epochs must be between 0 and --epochs ({self.epochs})")
