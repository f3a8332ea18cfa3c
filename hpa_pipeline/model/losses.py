"""The training loss, used unchanged for the validation loss (so both curves are one quantity).

``bce``: binary cross-entropy per class. ``focal``: torchvision's ``sigmoid_focal_loss``
(Lin et al. 2017) without its alpha balancing: ``(1 - p_t)^gamma * BCE``, where ``p_t`` is the
probability given to the true answer, computed from the *unweighted* BCE. ``class_weighting``
multiplies the positive term of class c by ``w_c = sqrt((1 - f_c) / f_c)`` (``f_c``: frequency
in the training fold), as BCE's ``pos_weight`` does; with focal loss the weight is applied after
the focusing term, so rare classes keep their focusing (a ``pos_weight`` inside the BCE that
``p_t`` is taken from would give ``p_t = p^w`` and remove it for exactly those classes).

``focal+lovasz`` (1st place): the focal loss plus the Lovász hinge (Berman et al. 2018,
"The Lovász-Softmax loss", Algorithm 1, binary case), a convex surrogate of the Jaccard index,
over every (sample, class) of the batch flattened into one binary problem. It is short enough to
write here against the published formula (tested on a hand-computed case); no maintained library
ships the binary hinge for a multilabel batch.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import sigmoid_focal_loss

from .names import LOSSES


def lovasz_grad(gt_sorted: torch.Tensor) -> torch.Tensor:
    """Gradient of the Lovász extension of the Jaccard loss at errors sorted in decreasing order."""
    gts = gt_sorted.sum()
    intersection = gts - gt_sorted.cumsum(0)
    union = gts + (1 - gt_sorted).cumsum(0)
    jaccard = 1.0 - intersection / union
    if len(gt_sorted) > 1:
        jaccard[1:] = jaccard[1:] - jaccard[:-1].clone()
    return jaccard


def lovasz_hinge(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The Lovász hinge of logits and 0/1 targets, flattened into one binary problem."""
    logits, targets = logits.reshape(-1).float(), targets.reshape(-1).float()
    if logits.numel() == 0:
        return logits.sum() * 0.0
    errors = 1.0 - logits * (2.0 * targets - 1.0)
    errors_sorted, order = torch.sort(errors, descending=True)
    return torch.dot(F.relu(errors_sorted), lovasz_grad(targets[order]))


def class_weights(train_labels: np.ndarray) -> np.ndarray:
    """``(28,)`` weight of each class's positives: ``sqrt((1 - f) / f)``, f clipped at 1e-3."""
    freq = train_labels.mean(0).clip(1e-3)
    return np.sqrt((1 - freq) / freq).astype(np.float32)


class MultilabelLoss(nn.Module):
    """Mean over samples and classes of BCE or focal loss, optionally class-weighted."""

    def __init__(self, kind: str = "bce", gamma: float = 2.0, pos_weight: np.ndarray | None = None):
        super().__init__()
        if kind not in LOSSES:
            raise ValueError(f"unknown loss {kind!r}; choose from {LOSSES}")
        self.kind, self.gamma = kind, gamma
        weight = torch.as_tensor(pos_weight, dtype=torch.float32) if pos_weight is not None else None
        self.register_buffer("pos_weight", weight)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits, targets = logits.float(), targets.float()
        if self.kind in ("focal", "focal+lovasz"):
            per_element = sigmoid_focal_loss(logits, targets, alpha=-1, gamma=self.gamma, reduction="none")
        else:
            per_element = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
        if self.pos_weight is not None:  # w on positives, 1 on negatives
            per_element = per_element * (1 + (self.pos_weight - 1) * targets)
        if self.kind == "focal+lovasz":
            return per_element.mean() + lovasz_hinge(logits, targets)
        return per_element.mean()


def make_loss(kind: str, gamma: float, weighted: bool, train_labels: np.ndarray) -> MultilabelLoss:
    return MultilabelLoss(kind, gamma, class_weights(train_labels) if weighted else None)
