"""MkDocs hook: the benchmarks' plots, drawn at every build from ``benchmarks/results/*.json``.

Like the tables, no figure is drawn by hand: each plot reads a results file and is written to
``docs/plots/<benchmark>.png`` (not committed) before the site's files are collected; the
benchmarks page shows the plot of each benchmark that has one. matplotlib draws offline.
"""
from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PLOTS = ROOT / "docs" / "plots"


def _first_number(value) -> float | None:
    """The first number of a figure (``"8.25, 9.69"`` -> 8.25)."""
    if isinstance(value, (int, float)):
        return float(value)
    try:
        return float(str(value).replace(";", ",").split(",")[0].split()[0])
    except (ValueError, IndexError):
        return None


def _bars(ax, labels: list[str], values: list[float], unit: str) -> None:
    ax.barh(range(len(values)), values, color="#4c72b0")
    ax.set_yticks(range(len(values)), labels)
    ax.invert_yaxis()
    ax.set_xlabel(unit)
    ax.set_xlim(0, max(values) * 1.15 if values else 1)
    for k, v in enumerate(values):
        ax.text(v, k, f" {v:g}", va="center", fontsize=8)


def plot_loader(figures: dict, ax) -> None:
    rows = [("baseline: PIL + 4 PNGs", figures.get("baseline: PIL + 4 PNGs, 1 process: crops/s"))]
    for key, value in figures.items():
        if key.endswith(": crops/s per core (1 process)") or (key.endswith(": crops/s per core") and "--crop-grid" in key):
            rows.append((key.removeprefix("ours ").rsplit(": crops/s per core", 1)[0], value))
    rows = [(k, float(v)) for k, v in rows if v is not None]
    _bars(ax, [k for k, _ in rows], [v for _, v in rows], "augmented 512² crops per second, one core")
    ax.set_title("Loader: crops per second per core, by codec and chunk grid")


def plot_decoders(figures: dict, ax) -> None:
    import numpy as np

    layouts = []
    for key in figures:
        if key.endswith("7zz t (floor): wall s, CPU s"):
            layouts.append(key.split(": 7zz t (floor)")[0])
    floor = [_first_number(figures[f"{l}: 7zz t (floor): wall s, CPU s"]) for l in layouts]
    ours = [_first_number(figures.get(f"{l}: ingest --decoder 7zz: wall s, CPU s")) for l in layouts]
    y = np.arange(len(layouts))
    ax.barh(y - 0.2, floor, 0.4, label="7-Zip decoding alone (7zz t)", color="#999999")
    ax.barh(y + 0.2, ours, 0.4, label="hpa-pipe ingest, the whole store", color="#4c72b0")
    ax.set_yticks(y, [l.split(" (")[0] for l in layouts])
    ax.invert_yaxis()
    ax.set_xlabel("seconds")
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title("Ingest against 7-Zip's own decoding, by how the archive is packed")


def plot_memory(figures: dict, ax) -> None:
    for key, value in figures.items():
        if key.endswith("peak per tenth of the run, GiB") and isinstance(value, list):
            ax.plot([10 * (k + 1) for k in range(len(value))], value, marker="o", label=key.split(":")[0])
    ax.set_xlabel("% of the run")
    ax.set_ylabel("peak resident memory, GiB")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8)
    ax.set_title("Memory over an ingest: flat in the number of samples")


def plot_capacity(figures: dict, ax) -> None:
    rows = [(key.split(":")[0], value) for key, value in figures.items()
            if key.startswith("size ") and key.endswith(": samples/s per core")]
    _bars(ax, [k for k, _ in rows], [float(v) for _, v in rows], "samples per second per core (build-zarr)")
    ax.set_title("Capacity: build rate per core by top level size")


PLOTTERS = {"loader": plot_loader, "decoders": plot_decoders, "memory": plot_memory, "capacity": plot_capacity}


def draw_all(results: Path = ROOT / "benchmarks" / "results", out: Path = PLOTS) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, plotter in PLOTTERS.items():
        path = results / f"{name}.json"
        if not path.exists():
            continue
        fig, ax = plt.subplots(figsize=(9, 3.8))
        plotter(json.loads(path.read_text())["figures"], ax)
        fig.suptitle(ax.get_title())  # over the whole figure: long row labels leave the axes narrow
        ax.set_title("")
        fig.tight_layout()
        fig.savefig(out / f"{name}.png", dpi=110)
        plt.close(fig)
        written.append(out / f"{name}.png")
    return written


def on_pre_build(config) -> None:
    draw_all()
