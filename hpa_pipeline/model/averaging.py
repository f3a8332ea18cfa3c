"""Weight averages that are evaluated instead of the raw weights: EMA and SWA.

Both are PyTorch's ``torch.optim.swa_utils.AveragedModel``:

- EMA (``--ema 0.999``): ``get_ema_multi_avg_fn(decay)`` after every optimizer step, buffers
  (BatchNorm running statistics) averaged too (``use_buffers=True``), as timm's ModelEma does.
- SWA (``--swa-epochs N``): the equal-weight mean of the weights at the end of each of the last
  N epochs (what the competition's 3rd-place solution averaged). Averaged BatchNorm statistics
  do not belong to the averaged weights, so ``swa_utils.update_bn`` recomputes them on
  training batches before the average is evaluated.
"""
from __future__ import annotations

from itertools import islice

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn, update_bn


def make_average(model: torch.nn.Module, ema: float, swa_epochs: int) -> AveragedModel | None:
    """The run's weight average, or None when it evaluates the raw weights."""
    if ema > 0:
        return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(ema), use_buffers=True)
    if swa_epochs > 0:
        return AveragedModel(model)
    return None


def recompute_batchnorm(model: torch.nn.Module, loader, normalize, device, max_batches: int) -> None:
    """Fresh BatchNorm statistics for ``model`` from up to ``max_batches`` training batches
    (``update_bn`` on this loader's uint8 batches, normalised and augmented on the device)."""
    batches = (normalize(images.to(device, non_blocking=True), augmentation.to(device, non_blocking=True))
               for images, _, _, augmentation in islice(loader, max_batches))
    update_bn(batches, model)
    model.eval()
