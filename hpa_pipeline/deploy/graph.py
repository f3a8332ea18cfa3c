"""A trained run as one module from raw pixels to class probabilities.

Input: ``(batch, 4, y, x)`` uint8 or uint16 pixels of the run's level, channels red, green,
blue, yellow, as ``ingest`` stores them. Inside: the run's own normalisation (its training
store's channel statistics, or each image's own with ``--normalize image``), the network and
the sigmoid. A cross-validation folder becomes the mean of its folds' probabilities in one
module, with the thresholds chosen on its out-of-fold table. So a consumer feeds pixels and
gets probabilities: nothing about the preprocessing is left to guess.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..model.inference import load_run, read_thresholds
from ..model.run_folder import RunError, RunFolder, fold_runs, is_cross_validation


class RawToProbabilities(torch.nn.Module):
    """The mean over ``models`` of ``sigmoid(model(normalize(pixels)))``."""

    def __init__(self, models: list[torch.nn.Module], normalizers: list[torch.nn.Module]):
        super().__init__()
        self.models = torch.nn.ModuleList(models)
        self.normalizers = torch.nn.ModuleList(normalizers)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        total = None
        for model, normalize in zip(self.models, self.normalizers):
            probs = torch.sigmoid(model(normalize(pixels)).float())
            total = probs if total is None else total + probs
        return total / len(self.models)


@dataclass
class DeployedRun:
    """What a consumer of a run needs: the module and how to feed it and read it."""

    module: RawToProbabilities
    thresholds: np.ndarray
    level: int  # the store level the module sees (validation and predict level)
    sizes: list[int]  # the store's levels, top first: how ingest made ``level`` from the sources
    dtype: str
    normalization: dict
    runs: list[Path] = field(default_factory=list)
    config: dict = field(default_factory=dict)  # the (first) run's options


def load_deployed(path: str | Path) -> DeployedRun:
    """A run folder, or a cross-validation folder (its folds averaged), as a :class:`DeployedRun`."""
    path = Path(path)
    runs = fold_runs(path) if is_cross_validation(path) else [path]
    trained = [load_run(run, torch.device("cpu")) for run in runs]
    levels = {t.level for t in trained}
    if len(levels) != 1:
        raise RunError(f"{path}: its folds predict at different levels {sorted(levels)}; export one fold")
    for t in trained:
        t.model.eval()
    module = RawToProbabilities([t.model for t in trained], [t.normalizer() for t in trained]).eval()
    thresholds = (read_thresholds(RunFolder(path).thresholds) if len(runs) > 1 or is_cross_validation(path)
                  else trained[0].thresholds)
    first = trained[0]
    from dataclasses import asdict

    if "sizes" not in first.normalization:
        raise RunError(f"{first.path}: its store's levels are unknown (an older run whose store {first.config.store} "
                       f"is not there); export it where its store is")
    return DeployedRun(module, thresholds, first.level, list(first.normalization["sizes"]), first.normalization["dtype"],
                       first.normalization, runs, {**asdict(first.config), "external": list(first.config.external)})
