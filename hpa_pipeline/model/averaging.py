"""Weight averages that are evaluated instead of the raw weights: EMA and SWA.

- EMA (``--ema 0.999``): timm's ``ModelEmaV3`` after every optimizer step, buffers (BatchNorm
  running statistics) averaged too. Not PyTorch's ``AveragedModel`` with
  ``get_ema_multi_avg_fn``: its ``update_parameters`` reads its step counter from the device
  (``bool(n_averaged == 0)``), a host-device synchronisation in every step; ModelEmaV3 takes
  the step from the caller and updates with one foreach ``lerp_``.
- SWA (``--swa-epochs N``): the equal-weight mean of the weights at the end of each of the last
  N epochs (what the competition's 3rd-place solution averaged). Averaged BatchNorm statistics
  do not belong to the averaged weights, so ``swa_utils.update_bn`` recomputes them on
  training batches before the average is evaluated. This is PyTorch's
  ``torch.optim.swa_utils.AveragedModel`` (updated once an epoch) with ``update_bn``.
"""
from __future__ import annotations

from itertools import islice

import torch
from timm.utils import ModelEmaV3
from torch.optim.swa_utils import AveragedModel, update_bn


def averaging_kind(ema: float, swa_epochs: int) -> str | None:
    """``"ema"``, ``"swa"`` or None: which average the options ask for (the config allows one)."""
    return "ema" if ema > 0 else "swa" if swa_epochs > 0 else None


def make_average(model: torch.nn.Module, ema: float, swa_epochs: int) -> torch.nn.Module | None:
    """The run's weight average (``.module`` is the averaged network), or None when it
    evaluates the raw weights."""
    kind = averaging_kind(ema, swa_epochs)
    if kind == "ema":
        return ModelEmaV3(model, decay=ema)
    if kind == "swa":
        return AveragedModel(model)
    return None


def recompute_batchnorm(model: torch.nn.Module, loader, normalize, device, max_batches: int) -> None:
    """Fresh BatchNorm statistics for ``model`` from up to ``max_batches`` training batches
    (``update_bn`` on this loader's uint8 batches, normalised and augmented on the device)."""
    batches = (normalize(images.to(device, non_blocking=True), augmentation.to(device, non_blocking=True))
               for images, _, _, augmentation in islice(loader, max_batches))
    update_bn(batches, model)
    model.eval()
