"""The training loss, used unchanged for the validation loss (so both curves are one quantity).

A loss is one term or several added (``--loss focal+lovasz+hard``, 1st place's):

``bce``: binary cross-entropy per class. ``focal``: torchvision's ``sigmoid_focal_loss``
(Lin et al. 2017): ``alpha_t (1 - p_t)^gamma * BCE``, where ``p_t`` is the probability given to
the true answer, computed from the *unweighted* BCE; ``alpha`` -1 (the default) leaves out the
balancing, 0.25 is the paper's. ``hard``: the log loss of the hardest ``hard_fraction`` of the
batch's (sample, class) outputs, those with the largest BCE (online hard example mining). ``class_weighting``
multiplies the positive term of class c by ``w_c = sqrt((1 - f_c) / f_c)`` (``f_c``: frequency
in the training fold), as BCE's ``pos_weight`` does; with focal loss the weight is applied after
the focusing term, so rare classes keep their focusing (a ``pos_weight`` inside the BCE that
``p_t`` is taken from would give ``p_t = p^w`` and remove it for exactly those classes).

``lovasz``: the Lovász hinge (Berman et al. 2018, "The Lovász-Softmax loss", Algorithm 1,
binary case), a convex surrogate of the Jaccard index, over every (sample, class) of the batch
flattened into one binary problem (``lovasz="batch"``), or per image, each sample's classes
its own problem, averaged (``"image"``, the reference implementation's default). It is short enough to
write here against the published formula (tested on a hand-computed case); no maintained library
ships the binary hinge for a multilabel batch.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import sigmoid_focal_loss

from .names import LOSS_TERMS, LOVASZ_MODES, loss_terms


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


def hard_log_loss(logits: torch.Tensor, targets: torch.Tensor, fraction: float) -> torch.Tensor:
    """The mean BCE of the ``fraction`` of elements with the largest BCE (at least one)."""
    per_element = F.binary_cross_entropy_with_logits(logits, targets, reduction="none").reshape(-1)
    k = max(1, int(np.ceil(fraction * per_element.numel())))
    return per_element.topk(k).values.mean()


class MultilabelLoss(nn.Module):
    """The sum of the loss's terms (:data:`.names.LOSS_TERMS`): BCE or focal loss averaged over
    samples and classes (optionally class-weighted), the Lovász hinge, the hard-example log loss."""

    def __init__(self, kind: str = "bce", gamma: float = 2.0, pos_weight: np.ndarray | None = None,
                 alpha: float = -1.0, lovasz: str = "batch", hard_fraction: float = 0.1):
        super().__init__()
        terms = loss_terms(kind)
        if terms is None:
            raise ValueError(f"unknown loss {kind!r}; terms {LOSS_TERMS}, joined by +")
        if lovasz not in LOVASZ_MODES:
            raise ValueError(f"unknown Lovász mode {lovasz!r}; choose from {LOVASZ_MODES}")
        self.kind, self.terms, self.gamma, self.alpha = kind, terms, gamma, alpha
        self.lovasz, self.hard_fraction = lovasz, hard_fraction
        weight = torch.as_tensor(pos_weight, dtype=torch.float32) if pos_weight is not None else None
        self.register_buffer("pos_weight", weight)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits, targets = logits.float(), targets.float()
        total = logits.sum() * 0.0
        for term in self.terms:
            if term in ("bce", "focal"):
                total = total + self._per_element(term, logits, targets).mean()
            elif term == "lovasz":
                total = total + (lovasz_hinge(logits, targets) if self.lovasz == "batch" else
                                 torch.stack([lovasz_hinge(x, y) for x, y in zip(logits, targets)]).mean())
            else:
                total = total + hard_log_loss(logits, targets, self.hard_fraction)
        return total

    def _per_element(self, term: str, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if term == "focal":
            per_element = sigmoid_focal_loss(logits, targets, alpha=self.alpha, gamma=self.gamma, reduction="none")
        else:
            per_element = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
        if self.pos_weight is not None:  # w on positives, 1 on negatives
            per_element = per_element * (1 + (self.pos_weight - 1) * targets)
        return per_element


def make_loss(kind: str, gamma: float, weighted: bool, train_labels: np.ndarray, alpha: float = -1.0,
              lovasz: str = "batch", hard_fraction: float = 0.1) -> MultilabelLoss:
    return MultilabelLoss(kind, gamma, class_weights(train_labels) if weighted else None, alpha, lovasz,
                          hard_fraction)
