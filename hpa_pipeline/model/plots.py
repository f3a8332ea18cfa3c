"""A run's pictures: ``curves.png`` (loss and macro F1 per epoch) and ``per_class_f1.png``."""
from __future__ import annotations

import json
from pathlib import Path

from ..contract.atomic import replacing
from ..contract.labels import CLASS_NAMES
from .run_folder import RunFolder, read_metrics


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
    save_figure(fig, run.curves)
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
        save_figure(fig, run.per_class_plot)
        plt.close(fig)
