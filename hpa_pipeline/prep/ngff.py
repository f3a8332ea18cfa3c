"""``export-ngff``: chosen samples of a dataset store as standard OME-Zarr 0.5 images.

The training store stacks samples on a leading axis, which OME-NGFF 0.5 cannot describe
(the store contract); each exported sample is a ``(c, y, x)`` multiscale image with every level of the
store, channel labels and colours in an ``omero`` block, readable by napari and any OME-Zarr
reader. Pixel sizes are not known for the HPA images, so the scales are relative: 1 at the top
level, 2 at the next, and so on (axes carry no unit).
"""
from __future__ import annotations

import os
import shutil
import uuid

from pathlib import Path

import zarr

from ..contract.labels import check_sample_id
from ..contract.store import CHANNEL_COLORS, Store, ngff_axes, ngff_levels
from ..contract.spec import StoreError

NGFF_VERSION = "0.5"


def _multiscales(name: str, sizes: list[int]) -> list[dict]:
    paths = [str(k) for k in range(len(sizes))]
    return [{"name": name, "axes": ngff_axes(sample_axis=False),
             "datasets": ngff_levels(sizes, paths, sample_axis=False)}]


def _omero(channels: list[str], dtype_max: int) -> dict:
    return {
        "channels": [
            {"label": c, "color": CHANNEL_COLORS[c], "active": True, "coefficient": 1.0, "family": "linear",
             "inverted": False,
             "window": {"min": 0, "max": dtype_max, "start": 0, "end": dtype_max}}
            for c in channels
        ],
        "rdefs": {"model": "color", "defaultZ": 0, "defaultT": 0},
    }


def _write_image(path: Path, store: Store, index: int, sample_id: str, sizes: list[int]) -> None:
    """Sample ``index`` of the store as one OME-Zarr 0.5 multiscale image at ``path``."""
    image = zarr.open_group(str(path), mode="w-", zarr_format=3)
    first = store.level(sizes[0])
    for k, s in enumerate(sizes):
        data = store.level(s)[index]
        chunk = min(256, s)
        array = image.create_array(str(k), shape=data.shape, dtype=data.dtype, chunks=(1, chunk, chunk),
                                   dimension_names=("c", "y", "x"))
        array[:] = data
    image.attrs["ome"] = {
        "version": NGFF_VERSION,
        "multiscales": _multiscales(sample_id, sizes),
        "omero": _omero(store.channels, int(255 if first.dtype == "uint8" else 65535)),
    }


def _replace_folder(new: Path, target: Path) -> None:
    """Put the finished folder ``new`` at ``target``; an earlier export there goes only now, so a
    kill or a full disk while exporting leaves it as it was."""
    old = None
    if target.exists():
        old = target.with_name(f"{target.name}.{uuid.uuid4().hex}.replaced")
        os.replace(target, old)
    os.replace(new, target)
    if old is not None:
        shutil.rmtree(old)


def export_ngff(store: str | Path, ids: list[str], out_dir: str | Path) -> list[Path]:
    """Write ``out_dir/<id>.ome.zarr`` for each id; unknown or not-done ids are errors naming them."""
    opened = Store.open(store)
    index_of = {sample_id: i for i, sample_id in enumerate(opened.ids)}
    unknown = [i for i in ids if i not in index_of]
    if unknown:
        raise StoreError(f"not in {store}: {', '.join(unknown)}")
    done = opened.done()
    not_done = [i for i in ids if not done[index_of[i]]]
    if not_done:
        raise StoreError(f"not written (yet) in {store}: {', '.join(not_done)}")
    for sample_id in ids:  # ids become file names: none may lead out of out_dir
        check_sample_id(sample_id, f"{store}")
    sizes = list(opened.levels())
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for sample_id in ids:
        target = out_dir / f"{sample_id}.ome.zarr"
        if target.resolve().parent != out_dir.resolve():
            raise StoreError(f"{store}: id {sample_id!r} would be written outside {out_dir}")
        partial = target.with_name(f"{target.name}.{uuid.uuid4().hex}.partial")
        try:
            _write_image(partial, opened, index_of[sample_id], sample_id, sizes)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        _replace_folder(partial, target)
        written.append(target)
    return written
