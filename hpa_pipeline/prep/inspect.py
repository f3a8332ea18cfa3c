"""``inspect``: what a store holds (done/failed/missing, levels, chunking, bytes on disk,
channel statistics) and a montage PNG of RGB composites so that a user can see the data."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from ..contract.labels import FILTERS
from ..contract.locations import bytes_under, join
from ..contract.store import Store, level_path, read_report
from ..contract.errors import OptionError
from ..contract.spec import StoreError
from ..contract.atomic import write_bytes


def _codec_names(array) -> list[str]:
    names = []
    for codec in list(array.metadata.codecs):
        inner = getattr(codec, "codecs", None)  # the sharding codec wraps the chunk codecs
        for c in ([codec] if inner is None else list(inner)):
            desc = type(c).__name__.replace("Codec", "").lower()
            if hasattr(c, "cname"):
                desc += f"-{getattr(c.cname, 'value', c.cname)}{c.clevel}"
            elif desc == "zstd":
                desc += str(c.level)
            names.append(desc)
    return names


def inspect_store(path: str | Path) -> dict:
    """A dict describing the store; :func:`format_inspection` prints it."""
    store = Store.open(path)
    done = store.done()
    report = read_report(path) or {}
    failed = {f["id"]: f["reason"] for f in report.get("failed", [])}
    ids = store.ids
    failed = {i: r for i, r in failed.items() if i in ids and not done[ids.index(i)]}
    levels = []
    for size, array in store.levels().items():
        on_disk = bytes_under(join(path, level_path(size)))
        levels.append({
            "size": size, "path": level_path(size), "shape": list(array.shape), "dtype": str(array.dtype),
            "chunks": list(array.chunks), "shards": list(array.shards) if array.shards else None,
            "codecs": _codec_names(array), "bytes_on_disk": on_disk,
            "bytes_per_done_sample": on_disk / max(1, int(done.sum())),
        })
    info = {
        "store": str(path), "n_samples": len(ids), "done": int(done.sum()), "failed": len(failed),
        "missing": len(ids) - int(done.sum()) - len(failed), "has_labels": store.has_labels,
        "levels": levels, "statistics": store.statistics_attribute, "failed_samples": failed,
        "channels": store.channels,
    }
    if store.has_labels:
        info["label_counts"] = store.labels()[done].sum(0).tolist()
    return info


def format_inspection(info: dict) -> str:
    lines = [
        f"store    {info['store']}",
        f"samples  {info['n_samples']}: {info['done']} done, {info['failed']} failed, {info['missing']} missing"
        + (" (train: labels)" if info["has_labels"] else " (test: no labels)"),
        "levels",
    ]
    for lv in info["levels"]:
        lines.append(f"  {lv['path']:<12} {tuple(lv['shape'])} {lv['dtype']} chunks {tuple(lv['chunks'])} "
                     f"shards {tuple(lv['shards']) if lv['shards'] else '-'} {'+'.join(lv['codecs'])}  "
                     f"{lv['bytes_on_disk'] / 2**20:.1f} MiB ({lv['bytes_per_done_sample'] / 1024:.0f} KiB/sample)")
    if info["statistics"]:
        lines.append("channel statistics (mean / std, channels " + ", ".join(info["channels"]) + ")")
        for size, st in info["statistics"].items():
            pairs = "  ".join(f"{m:.1f}/{s:.1f}" for m, s in zip(st["mean"], st["std"]))
            lines.append(f"  {size:>5}: {pairs}")
    for sample_id, reason in list(info["failed_samples"].items())[:20]:
        lines.append(f"  failed {reason}")
    return "\n".join(lines)


def composite(sample: np.ndarray) -> np.ndarray:
    """``(4, H, W)`` red, green, blue, yellow -> ``(H, W, 3)`` RGB uint8; yellow shows as yellow."""
    x = sample.astype(np.float32)
    if sample.dtype == np.uint16:
        x /= 257.0
    red, green, blue, yellow = (x[FILTERS.index(f)] for f in FILTERS)
    rgb = np.stack([red + 0.5 * yellow, green + 0.5 * yellow, blue], axis=-1)
    return np.clip(rgb, 0, 255).astype(np.uint8)


def montage_level(path: str | Path, sizes: list[int], level: int | None = None) -> int:
    """The level a montage shows: ``level``, which the store must have, or the one nearest 256."""
    if level is None:
        return min(sizes, key=lambda s: abs(s - 256))
    if level not in sizes:
        raise OptionError(f"no level {level} in {path}; levels are {sizes}")
    return level


def write_caption(tile: np.ndarray, caption: str) -> None:
    """White text drawn over a black outline, so that it reads on bright and dark cells alike."""
    for colour, thickness in (((0, 0, 0), 3), ((255, 255, 255), 1)):
        cv2.putText(tile, caption, (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4, colour, thickness, cv2.LINE_AA)


def write_montage(path: str | Path, out_png: str | Path, n: int = 16, level: int | None = None,
                  columns: int = 4) -> Path:
    """A grid of the first ``n`` done samples as RGB composites, captioned with id and labels."""
    store = Store.open(path)
    size = montage_level(path, list(store.levels()), level)
    done = np.flatnonzero(store.done())[:n]
    if done.size == 0:
        raise StoreError(f"{path}: no sample is done yet, nothing to show")
    images = store.level(size)
    labels = store.labels()
    tiles = []
    for index in done:
        tile = cv2.cvtColor(composite(images[int(index)]), cv2.COLOR_RGB2BGR)
        caption = store.ids[index][:8]
        if labels is not None:
            caption += " " + ",".join(str(c) for c in np.flatnonzero(labels[index]))
        write_caption(tile, caption)
        tiles.append(tile)
    while len(tiles) % columns:
        tiles.append(np.zeros_like(tiles[0]))
    rows = [np.hstack(tiles[i:i + columns]) for i in range(0, len(tiles), columns)]
    grid = np.vstack(rows)
    out_png = Path(out_png)
    ok, encoded = cv2.imencode(".png", grid)
    if ok:
        write_bytes(out_png, encoded.tobytes())
    if not ok:
        raise OSError(f"could not write {out_png}")
    return out_png
