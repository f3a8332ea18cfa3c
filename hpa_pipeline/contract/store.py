"""The dataset store of the project's store contract: one Zarr v3 group per split.

Layout (``n`` samples in CSV order, levels ``S0 > S1 > ...``)::

    zarr.json                       attributes["hpa"]: ids, class names, channels, levels, statistics
    images/<S>        (n, 4, S, S)  uint8 | uint16, one shard per sample, square inner chunks
    labels            (n, 28)       bool (train stores only)
    source_shape      (n, 2)        int32, full-size height and width (0 until written)
    source_dtype      (n,)          uint8, bits per pixel of the source TIFFs: 8 or 16 (0 until written)
    channel_sums      (n, L, 4, 2)  float64, per sample, level and channel: sum and sum of squares
    phash             (n, 4)        uint64, per sample and channel: 64-bit perceptual hash (0 until written)
    done              (n,)          bool, set only by the coordinating process
    report.json                     samples not written in the last run, and why

Writers: each task writes every level of its own sample (its own shards, so writers never share
a file); only the coordinator writes ``done`` and the small per-sample arrays, after the
sample's levels are complete. Zarr's local store writes each file atomically (temporary name,
then rename), so a killed run leaves whole files and a sample is either done or redone.

The stacked ``(sample, c, y, x)`` arrays are not an OME-NGFF image (NGFF 0.5 has no axis for
samples besides a channel axis); ``attributes["hpa"]["axes"]`` and ``["levels"]`` describe them
in NGFF's vocabulary, and :mod:`.ngff` exports chosen samples as real OME-Zarr images.
"""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import zarr

from .atomic import SUFFIX, write_json
from .labels import CLASS_NAMES, FILTERS, N_CLASSES, SampleTable
from .locations import file_names, get_bytes, is_url, join, put_bytes, remove_tree
from .shards import write_sample_shard
from .spec import StoreError, StoreSpec, level_sizes  # noqa: F401 - re-exported: part of the store's interface

FORMAT_VERSION = 1
CHANNEL_COLORS = {"red": "FF0000", "green": "00FF00", "blue": "0000FF", "yellow": "FFFF00"}
SMALL_CHUNK = 4096  # samples per chunk of the per-sample arrays
REPORT_NAME = "report.json"


def ngff_axes(sample_axis: bool) -> list[dict]:
    """The axes in OME-NGFF vocabulary: ``c, y, x``, after a ``sample`` axis in the store."""
    axes = [{"name": "c", "type": "channel"}, {"name": "y", "type": "space"}, {"name": "x", "type": "space"}]
    return [{"name": "sample", "type": "custom"}, *axes] if sample_axis else axes


def ngff_levels(sizes: list[int], paths: list[str], sample_axis: bool) -> list[dict]:
    """Each level's path and its scale relative to the top level, in OME-NGFF vocabulary."""
    lead = [1.0, 1.0] if sample_axis else [1.0]
    return [{"path": path, "coordinateTransformations": [{"type": "scale", "scale": [*lead, sizes[0] / s, sizes[0] / s]}]}
            for path, s in zip(paths, sizes)]


def _axes_description(spec: StoreSpec) -> dict:
    """Axes and levels in OME-NGFF vocabulary (names, types, per-level scale, channel labels)."""
    return {
        "axes": ngff_axes(sample_axis=True),
        "levels": ngff_levels(spec.sizes, [f"images/{s}" for s in spec.sizes], sample_axis=True),
        "scale_unit": "pixel of the top level (sources are 2048² or 3072²: see source_shape)",
        "omero": {"channels": [{"label": f, "color": CHANNEL_COLORS[f]} for f in FILTERS]},
    }


def open_or_create_store(path: str | Path, table: SampleTable, spec: StoreSpec, source: str = "") -> zarr.Group:
    """Reopen the store at ``path`` for ``table``'s samples, or create an empty one.

    Reopening checks that ids, levels and dtype are the same, so that a re-run resumes the
    same build instead of mixing two. A store in which nothing is finished is first removed by
    :func:`discard_unfinished_store` when it cannot be resumed as asked.
    """
    path = str(path)
    if not is_url(path) and Path(path).exists() and not Path(path).is_dir():
        raise StoreError(f"{path} is a file, not a store folder; choose another --out")
    existing = _existing_group(path)
    if existing is not None and not discard_unfinished_store(path, existing, table, spec):
        root = zarr.open_group(path, mode="r+")
        if "phash" not in root:
            _create_phash(root, len(table))
        return root
    if not is_url(path) and Path(path).exists() and any(Path(path).iterdir()):
        raise StoreError(f"{path} exists, is not empty and is not an hpa-pipeline store; choose another --out")
    try:
        return _new_store(path, table, spec, source)
    except OSError as exc:  # a folder that cannot be made or written (not ours to fix)
        raise _cannot_write(path, exc) from None


def discard_unfinished_store(path: str, existing: zarr.Group, table: SampleTable, spec: StoreSpec) -> bool:
    """Remove the store at ``path`` when nothing in it is finished and it cannot be resumed as
    asked; True when it was removed. Raise :class:`StoreError` for a store with finished
    samples that was built with other options (resuming would mix two builds).

    Two stores are removed: one killed while it was being created (its attributes come last),
    and one in which no sample is done yet built with other options (a first run that failed
    every sample, e.g. with a --size larger than the sources): refusing would only make the
    user delete it, and nothing is lost.
    """
    if existing.attrs.get("hpa") is None and _holds_no_data(path):
        remove_tree(path)
        return True
    try:
        _check_same_build(path, existing, table, spec)
    except StoreError:
        if existing.attrs.get("hpa") is None or _some_sample_done(existing):
            raise
        remove_tree(path)
        return True
    return False


def _existing_group(path: str) -> zarr.Group | None:
    """The group at ``path`` opened read-only, or None where there is none."""
    try:
        return _open_group(path, mode="r")
    except (FileNotFoundError, NotADirectoryError, zarr.errors.GroupNotFoundError,
            zarr.errors.NodeTypeValidationError):
        return None
    except PermissionError as exc:
        raise _cannot_write(path, exc) from None


def _open_group(path: str, mode: str) -> zarr.Group:
    """``zarr.open_group``; for a URL, an object store that cannot be reached (no credentials, no
    network, a refused request: each filesystem has its own exception types) is a StoreError
    that says so, not a traceback from botocore or aiohttp."""
    try:
        return zarr.open_group(path, mode=mode)
    except (FileNotFoundError, zarr.errors.GroupNotFoundError, zarr.errors.NodeTypeValidationError):
        raise
    except ValueError as exc:  # json's decoding error, or metadata zarr does not accept
        raise StoreError(f"{join(path, 'zarr.json')}: damaged metadata file ({exc}); the store cannot be "
                         f"read") from None
    except Exception as exc:
        if not is_url(path):
            raise
        raise StoreError(f"{path}: cannot reach the store ({type(exc).__name__}: {exc}); check the URL and the "
                         f"object store's credentials and endpoint (docs/scale-out.md, \"Object stores\")") from None


def _cannot_write(path: str, exc: OSError) -> StoreError:
    return StoreError(f"{path}: cannot write a store there ({exc.strerror or exc}); choose another --out")


def _new_store(path: str, table: SampleTable, spec: StoreSpec, source: str) -> zarr.Group:
    """The arrays and attributes of an empty store for ``table``'s samples; attributes last, so
    a store killed while it was being created is recognised and made again."""
    spec.check_new()
    n = len(table)
    root = zarr.open_group(path, mode="w-")
    small = min(SMALL_CHUNK, max(1, n))
    for s in spec.sizes:
        c = min(spec.chunk, s)
        root.create_array(
            f"images/{s}", shape=(n, 4, s, s), dtype=spec.dtype, chunks=(1, 1, c, c), shards=(1, 4, s, s),
            compressors=spec.compressors(c * c * np.dtype(spec.dtype).itemsize), fill_value=0,
            dimension_names=("sample", "c", "y", "x"),
        )
    if table.has_labels:
        labels = root.create_array("labels", shape=(n, N_CLASSES), dtype=bool, chunks=(small, N_CLASSES),
                                   fill_value=False, dimension_names=("sample", "class"))
        labels[:] = table.label_matrix()
    root.create_array("source_shape", shape=(n, 2), dtype="int32", chunks=(small, 2), fill_value=0)
    root.create_array("source_dtype", shape=(n,), dtype="uint8", chunks=(small,), fill_value=0)
    root.create_array("channel_sums", shape=(n, spec.levels, 4, 2), dtype="float64",
                      chunks=(small, spec.levels, 4, 2), fill_value=0.0)
    _create_phash(root, n)
    root.create_array("done", shape=(n,), dtype=bool, chunks=(small,), fill_value=False)
    root.attrs["hpa"] = {
        "format_version": FORMAT_VERSION,
        "ids": list(table.ids),
        "class_names": list(CLASS_NAMES),
        "channels": list(FILTERS),
        "has_labels": table.has_labels,
        "spec": asdict(spec),
        "source": source,
        "statistics": {},
        **_axes_description(spec),
    }
    return root


def _create_phash(root: zarr.Group, n: int) -> None:
    """The ``phash`` array (stores written before it get it on their next build command)."""
    root.create_array("phash", shape=(n, 4), dtype="uint64", chunks=(min(SMALL_CHUNK, max(1, n)), 4), fill_value=0)


def _check_same_build(path, root, table: SampleTable, spec: StoreSpec) -> None:
    meta = root.attrs.get("hpa")
    if meta is None:
        raise StoreError(f"{path} exists and is not an hpa-pipeline store; choose another --out")
    old = StoreSpec(**meta["spec"])
    differences = [f"--{name} {getattr(old, name)} (stored) vs {getattr(spec, name)} (asked)"
                   for name in ("size", "levels", "dtype", "chunk", "codec", "clevel")
                   if getattr(old, name) != getattr(spec, name)]
    if differences:
        raise StoreError(f"{path} was built with other layout options: {'; '.join(differences)}. Rerun with the "
                         f"stored options to resume, or use another --out to build a second store.")
    if meta["ids"] != list(table.ids):
        raise StoreError(f"{path} holds other ids than this CSV (or in another order); use another --out")


def _some_sample_done(root: zarr.Group) -> bool:
    """Whether any sample of an existing store is finished (a store without done flags counts
    as finished work: it is not ours to remove)."""
    try:
        return bool(root["done"][:].any())
    except KeyError:
        return True


def _holds_no_data(path: str) -> bool:
    """Whether a store folder holds only metadata (``zarr.json``), no written sample."""
    return all(name == "zarr.json" for name in file_names(path))


def write_levels(path: str, index: int, levels: dict[int, np.ndarray]) -> None:
    """Write every level of sample ``index`` (each a whole shard). Called by the worker tasks."""
    for size, image in levels.items():
        write_sample_shard(str(path), f"images/{size}", index, image)


class SampleBook:
    """The coordinator's view of the per-sample arrays: read once, updated in memory, flushed by chunk.

    ``mark_done`` stages results; ``flush`` writes the touched chunks of ``source_shape``,
    ``source_dtype`` and ``channel_sums`` first and ``done`` last, so ``done`` never runs ahead.
    """

    def __init__(self, root: zarr.Group):
        self.root = root
        self.done = root["done"][:]
        self.source_shape = root["source_shape"][:]
        self.source_dtype = root["source_dtype"][:]
        self.channel_sums = root["channel_sums"][:]
        self.phash = root["phash"][:] if "phash" in root else np.zeros((len(self.done), 4), np.uint64)
        self.chunk = root["done"].chunks[0]
        self._dirty: set[int] = set()

    def mark_done(self, index: int, source_shape, source_bits: int, sums: np.ndarray,
                  hashes: np.ndarray | None = None) -> None:
        self.source_shape[index] = source_shape
        self.source_dtype[index] = source_bits
        self.channel_sums[index] = sums
        if hashes is not None:
            self.phash[index] = hashes
        self.done[index] = True
        self._dirty.add(index // self.chunk)

    def flush(self) -> None:
        names = ("source_shape", "source_dtype", "channel_sums", *(("phash",) if "phash" in self.root else ()), "done")
        for name in names:
            values = getattr(self, name)
            for c in sorted(self._dirty):
                block = slice(c * self.chunk, min((c + 1) * self.chunk, len(self.done)))
                self.root[name][block] = values[block]
        self._dirty.clear()

    def mark_not_done(self, index: int) -> None:
        """Stage sample ``index`` as not done (``verify --repair``: its shards were damaged)."""
        self.source_shape[index] = 0
        self.source_dtype[index] = 0
        self.channel_sums[index] = 0
        self.phash[index] = 0
        self.done[index] = False
        self._dirty.add(index // self.chunk)

    def statistics(self, sizes: list[int]) -> dict:
        """Per-level, per-channel mean and std over the done samples (for normalisation)."""
        return channel_statistics(self.done, self.channel_sums, sizes)


def channel_statistics(done: np.ndarray, channel_sums: np.ndarray, sizes: list[int]) -> dict:
    """``attributes["hpa"]["statistics"]``: per level, per channel mean and std over the done
    samples, from their ``channel_sums`` (``verify`` recomputes it to check the stored one)."""
    stats = {}
    n = int(done.sum())
    if n == 0:
        return stats
    totals = channel_sums[done].sum(axis=0)  # (L, 4, 2)
    for k, s in enumerate(sizes):
        count = n * s * s
        mean = totals[k, :, 0] / count
        std = np.sqrt(np.maximum(totals[k, :, 1] / count - mean**2, 0))
        stats[str(s)] = {"mean": mean.round(4).tolist(), "std": std.round(4).tolist(), "n_samples": n}
    return stats


def level_arrays(root: zarr.Group) -> dict[int, zarr.Array]:
    """``{size: images/<size>}`` of a store, largest level first."""
    return dict(sorted(((int(name), array) for name, array in root["images"].arrays()), reverse=True))


def open_store(path: str | Path, mode: str = "r") -> zarr.Group:
    """Open an existing store, with a clear error when ``path`` is not one."""
    try:
        root = _open_group(str(path), mode=mode)
    except (FileNotFoundError, zarr.errors.GroupNotFoundError):
        raise StoreError(f"{path}: no dataset store there") from None
    if "hpa" not in root.attrs:
        raise StoreError(f"{path}: a Zarr group, but not an hpa-pipeline dataset store")
    check_metadata_files(str(path), root.attrs["hpa"])
    return root


def metadata_files(meta: dict) -> list[str]:
    """The metadata files of a store (``attributes["hpa"]`` tells its levels and arrays)."""
    arrays = [f"images/{s}" for s in StoreSpec(**meta["spec"]).sizes] + (["labels"] if meta.get("has_labels") else [])
    arrays += ["source_shape", "source_dtype", "channel_sums", "done"]
    return ["images/zarr.json", *[f"{name}/zarr.json" for name in arrays]]


def check_metadata_files(path: str, meta: dict) -> None:
    """Every metadata file of a local store parses: a damaged one is named, not a traceback from
    deep inside zarr when the array is first used (a URL store's are read by zarr as needed)."""
    if is_url(path):
        return
    for name in metadata_files(meta):
        file = Path(path, name)
        try:
            json.loads(file.read_bytes())
        except FileNotFoundError:
            raise StoreError(f"{file}: a metadata file of the store is missing; the store cannot be read") from None
        except ValueError as exc:
            raise StoreError(f"{file}: damaged metadata file ({exc}); the store cannot be read") from None


def write_report(path: str | Path, report: dict) -> str:
    """Write ``report.json`` into the store atomically (local: temporary name, then rename;
    URL: one PUT)."""
    target = join(path, REPORT_NAME)
    if is_url(path):
        put_bytes(target, json.dumps(report, indent=1).encode())
    else:
        write_json(Path(target), report)
    return target


def read_report(path: str | Path) -> dict | None:
    """The store's ``report.json``, or None before the first run finished."""
    data = get_bytes(join(path, REPORT_NAME))
    try:
        return json.loads(data) if data else None
    except ValueError as exc:
        raise StoreError(f"{join(path, REPORT_NAME)}: damaged report file ({exc}); run the same ingest or "
                         f"build-zarr command again to rewrite it") from None


def remove_partial_files(path: str | Path) -> int:
    """Delete temporary files that a killed writer left in a local store; returns the count.

    Object stores have none: every object is written in one atomic PUT.
    """
    if is_url(path):
        return 0
    count = 0
    for leftover in Path(path).rglob(f"*{SUFFIX}"):
        leftover.unlink(missing_ok=True)
        count += 1
    return count
