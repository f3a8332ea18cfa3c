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
import logging
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import zarr

from .atomic import SUFFIX, write_bytes, write_json
from .labels import CLASS_NAMES, FILTERS, N_CLASSES, SampleTable
from .locations import file_names, get_bytes, is_url, join, put_bytes, remove_tree
from .shards import ShardReader, shard_key, write_sample_shard
from .spec import DEFAULT_CODEC, LAYOUT_FIELDS, StoreError, StoreSpec, level_sizes  # noqa: F401 - re-exported: part of the store's interface

#: the layout version a store records (``attributes["hpa"]["format_version"]``); :meth:`Store.open`
#: reads it, refuses a newer one, and brings older layouts of the same version up (:func:`_bring_up`)
FORMAT_VERSION = 2  # 2: --codec zstd names zarr's own zstd; in version 1 it named Blosc-zstd
#: the names of the store's arrays, attributes and files: defined here and nowhere else
ATTRIBUTES = "hpa"
IMAGES = "images"
LABELS = "labels"
SOURCE_SHAPE = "source_shape"
SOURCE_DTYPE = "source_dtype"
CHANNEL_SUMS = "channel_sums"
PHASH = "phash"
DONE = "done"
#: the per-sample arrays the coordinator writes (``done`` last)
BOOK_ARRAYS = (SOURCE_SHAPE, SOURCE_DTYPE, CHANNEL_SUMS, PHASH, DONE)
CHANNEL_COLORS = {"red": "FF0000", "green": "00FF00", "blue": "0000FF", "yellow": "FFFF00"}
SMALL_CHUNK = 4096  # samples per chunk of the per-sample arrays
REPORT_NAME = "report.json"

log = logging.getLogger(__name__)


def level_path(size: int) -> str:
    """The array path of level ``size`` inside a store (``images/1024``)."""
    return f"{IMAGES}/{size}"


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
        "levels": ngff_levels(spec.sizes, [level_path(s) for s in spec.sizes], sample_axis=True),
        "scale_unit": "pixel of the top level (sources are 2048² or 3072²: see source_shape)",
        "omero": {"channels": [{"label": f, "color": CHANNEL_COLORS[f]} for f in FILTERS]},
    }


@dataclass(frozen=True)
class LevelStatistics:
    """Per-channel mean and std of one level over the done samples (what a run normalises with)."""

    mean: list[float]
    std: list[float]
    n_samples: int


class Store:
    """An opened dataset store: its layout typed, read once.

    Everything the rest of the package knows of a store's arrays, attributes and files goes
    through here: ids, class names, levels and their statistics, labels, done flags, pHashes,
    a reader per level, shard paths. :meth:`open` reads the format version and brings older
    layouts up (:func:`_bring_up`), so no caller branches on what a store was written with.
    """

    def __init__(self, path: str, root: zarr.Group, meta: dict):
        self.path, self.root, self._meta = path, root, meta

    # -- opening --------------------------------------------------------------------------------

    @classmethod
    def open(cls, path: str | Path, mode: str = "r") -> Store:
        """An existing store, with a clear error when ``path`` is not one (or is damaged)."""
        try:
            root = _open_group(str(path), mode=mode)
        except (FileNotFoundError, zarr.errors.GroupNotFoundError, zarr.errors.NodeTypeValidationError):
            raise StoreError(f"{path}: no dataset store there") from None
        if ATTRIBUTES not in root.attrs:
            raise StoreError(f"{path}: a Zarr group, but not an hpa-pipeline dataset store")
        store = cls.of_group(str(path), root)
        store.check_metadata_files()
        return store

    @classmethod
    def of_group(cls, path: str, root: zarr.Group) -> Store:
        """The store whose group ``root`` is already open (its attributes brought up)."""
        return cls(path, root, _bring_up(path, dict(root.attrs[ATTRIBUTES])))

    # -- attributes -----------------------------------------------------------------------------

    @property
    def format_version(self) -> int:
        return self._meta["format_version"]

    @property
    def ids(self) -> list[str]:
        return self._meta["ids"]

    @property
    def class_names(self) -> list[str]:
        return self._meta["class_names"]

    @property
    def channels(self) -> list[str]:
        """The filters in channel order (red, green, blue, yellow)."""
        return self._meta["channels"]

    @property
    def has_labels(self) -> bool:
        return bool(self._meta["has_labels"])

    @property
    def spec(self) -> StoreSpec:
        return StoreSpec(**self._meta["spec"])

    @property
    def sizes(self) -> list[int]:
        """The store's levels, largest first."""
        return self.spec.sizes

    @property
    def dtype(self) -> str:
        return self._meta["spec"]["dtype"]

    @property
    def source(self) -> str:
        return self._meta.get("source", "")

    @property
    def statistics(self) -> dict[int, LevelStatistics]:
        """Each level with statistics (a store with no sample done has none)."""
        return {int(size): LevelStatistics(list(v["mean"]), list(v["std"]), int(v["n_samples"]))
                for size, v in self._meta["statistics"].items()}

    @property
    def statistics_attribute(self) -> dict:
        """The statistics as stored (``verify`` compares them with those recomputed)."""
        return self._meta["statistics"]

    def set_statistics(self, statistics: dict) -> None:
        """Store new statistics (``{str(size): {"mean", "std", "n_samples"}}``) in the attributes."""
        meta = dict(self.root.attrs[ATTRIBUTES])
        meta["statistics"] = statistics
        self.root.attrs[ATTRIBUTES] = meta
        self._meta["statistics"] = statistics

    # -- arrays ---------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.ids)

    def has_array(self, name: str) -> bool:
        return name in self.root

    def array(self, name: str) -> zarr.Array:
        """A per-sample array by its name (:data:`LABELS`, :data:`DONE`, ...)."""
        return self.root[name]

    def read(self, name: str) -> np.ndarray:
        """A whole per-sample array (:data:`LABELS`, :data:`DONE`, ...); a chunk that does not
        decode is a :class:`DamagedArray` naming it, not a codec's traceback."""
        return read_book_array(self.path, self.root, name)

    def done(self) -> np.ndarray:
        return self.read(DONE)

    def labels(self) -> np.ndarray | None:
        """``(n, 28)`` bool, or None for a test store."""
        return self.read(LABELS) if self.has_labels else None

    def phash(self) -> np.ndarray:
        """``(n, 4)`` uint64 perceptual hashes, 0 where none is written (every sample of a store
        written before hashes were stored, until its next build command)."""
        if PHASH in self.root:
            return self.read(PHASH)
        return np.zeros((len(self), 4), np.uint64)

    @property
    def has_phash(self) -> bool:
        return PHASH in self.root

    def channel_sums(self) -> np.ndarray:
        return self.read(CHANNEL_SUMS)

    def level(self, size: int) -> zarr.Array:
        """The ``(n, 4, size, size)`` image array of level ``size``."""
        return self.root[level_path(size)]

    def levels(self) -> dict[int, zarr.Array]:
        """``{size: images/<size>}`` of the arrays present, largest level first."""
        return dict(sorted(((int(name), array) for name, array in self.root[IMAGES].arrays()), reverse=True))

    def reader(self, size: int) -> ShardReader:
        """A :class:`.shards.ShardReader` of level ``size`` (direct reads of whole or part samples)."""
        return ShardReader(self.path, level_path(size), self.ids)

    def shard_path(self, size: int, index: int) -> str:
        """The shard file (or object) that holds sample ``index`` at level ``size``."""
        return join(self.path, shard_key(level_path(size), index, 4))

    # -- metadata files ---------------------------------------------------------------------------

    def metadata_files(self) -> list[str]:
        """The metadata files of the store, relative to it."""
        phash = PHASH in self.root if is_url(self.path) else Path(self.path, PHASH).is_dir()
        return metadata_files(self._meta, phash)

    def check_metadata_files(self) -> None:
        """Every metadata file of a local store parses: a damaged one is named, not a traceback
        from deep inside zarr when the array is first used (a URL store's are read by zarr as needed)."""
        if is_url(self.path):
            return
        for name in self.metadata_files():
            file = Path(self.path, name)
            try:
                json.loads(file.read_bytes())
            except FileNotFoundError:
                raise StoreError(f"{file}: a metadata file of the store is missing; the store cannot be read") from None
            except ValueError as exc:
                raise StoreError(f"{file}: damaged metadata file ({exc}); the store cannot be read") from None


class DamagedArray(StoreError):
    """A per-sample array of a store whose chunk does not decode."""

    hint = "run the same ingest or build-zarr command again: it rebuilds the array"


def read_book_array(path: str, root: zarr.Group, name: str) -> np.ndarray:
    try:
        return root[name][:]
    except (KeyError, OSError):
        raise
    except Exception as exc:  # numcodecs and zarr raise their own kinds for undecodable bytes
        raise DamagedArray(f"{join(path, name)}: damaged, a chunk does not decode "
                           f"({type(exc).__name__}: {str(exc)[:200]})") from None


def metadata_files(meta: dict, phash: bool = True) -> list[str]:
    """The metadata files of the store ``meta`` (its brought-up attributes) describes."""
    arrays = [level_path(s) for s in StoreSpec(**meta["spec"]).sizes] + ([LABELS] if meta["has_labels"] else [])
    arrays += [SOURCE_SHAPE, SOURCE_DTYPE, CHANNEL_SUMS, *([PHASH] if phash else []), DONE]
    return [f"{IMAGES}/zarr.json", *[f"{name}/zarr.json" for name in arrays]]


def repair_store_files(path: str, meta: dict, table: SampleTable) -> list[str]:
    """What a build command can rebuild of an existing local store before it resumes: array
    metadata files that are missing or damaged (written again as a new store has them: they
    follow from the layout), and per-sample arrays whose chunks do not decode (made again
    empty, and every sample marked not done, so the build writes them all again). Returns a
    line per repair. The root's ``zarr.json`` (ids, statistics) cannot be rebuilt: opening
    refuses it by name."""
    import shutil
    import tempfile

    if is_url(path):
        return []
    repaired = []
    with tempfile.TemporaryDirectory() as blank:
        new = zarr.open_group(blank, mode="w")
        _create_arrays(new, len(table), table.has_labels, StoreSpec(**meta["spec"]))
        for name in metadata_files(meta, phash=Path(path, PHASH).is_dir()):
            file = Path(path, name)
            try:
                json.loads(file.read_bytes())
            except (FileNotFoundError, ValueError):
                file.parent.mkdir(parents=True, exist_ok=True)
                write_bytes(file, Path(blank, name).read_bytes())
                repaired.append(f"{file}: metadata file damaged or missing; written again")
    root = zarr.open_group(path, mode="r+")
    for name in [*([LABELS] if table.has_labels else []), *BOOK_ARRAYS]:
        if name not in root:
            continue
        try:
            read_book_array(path, root, name)
        except DamagedArray as exc:
            shutil.rmtree(Path(path, name, "c"), ignore_errors=True)
            shutil.rmtree(Path(path, DONE, "c"), ignore_errors=True)
            repaired.append(f"{exc}; made again, and every sample is written again")
    if table.has_labels and repaired:
        root[LABELS][:] = table.label_matrix()
    return repaired


def _bring_up(path: str, meta: dict) -> dict:
    """``attributes["hpa"]`` of any store this version reads, as this version writes it: the one
    place that knows what older layouts lacked (no statistics before a first finished build, no
    class names or source in the earliest stores; version 1's ``zstd`` codec, Blosc's, is named
    ``blosc-zstd``). Arrays an old store lacks (``phash``) read as
    empty through :class:`Store`; stores without chunk checksums are read by :mod:`.shards`."""
    version = meta.get("format_version", 1)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise StoreError(f"{path}: store format version {version!r} is newer than this hpa-pipeline reads "
                         f"({FORMAT_VERSION}); upgrade hpa-pipeline")
    missing = [key for key in ("ids", "spec", "has_labels") if key not in meta]
    if missing:
        raise StoreError(f"{join(path, 'zarr.json')}: attributes lack {', '.join(missing)}; not a readable "
                         f"hpa-pipeline store")
    if version < 2 and meta["spec"].get("codec") == "zstd":  # version 1's "zstd" was Blosc's
        meta["spec"] = {**meta["spec"], "codec": "blosc-zstd"}
    meta["format_version"] = version
    meta.setdefault("statistics", {})
    meta.setdefault("class_names", list(CLASS_NAMES))
    meta.setdefault("source", "")
    meta.setdefault("channels", list(FILTERS))
    return meta


def open_or_create_store(path: str | Path, table: SampleTable, spec: StoreSpec, source: str = "") -> Store:
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
        for line in repair_store_files(path, _bring_up(path, dict(existing.attrs[ATTRIBUTES])), table):
            log.warning("%s", line)
        store = Store.open(path, mode="r+")
        if not store.has_phash:  # stores written before pHashes get the array on their next build command
            _create_phash(store.root, len(table))
        return store
    if not is_url(path) and Path(path).exists() and any(Path(path).iterdir()):
        raise StoreError(f"{path} exists, is not empty and is not an hpa-pipeline store; choose another --out")
    if spec.codec is None:  # no --codec given: a new store gets the default
        spec = replace(spec, codec=DEFAULT_CODEC)
    try:
        return Store.of_group(path, _new_store(path, table, spec, source))
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
    if existing.attrs.get(ATTRIBUTES) is None and _holds_no_data(path):
        remove_tree(path)
        return True
    try:
        _check_same_build(path, existing, table, spec)
    except StoreError:
        if existing.attrs.get(ATTRIBUTES) is None or _some_sample_done(existing):
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
    root = zarr.open_group(path, mode="w-")
    _create_arrays(root, len(table), table.has_labels, spec)
    if table.has_labels:
        root[LABELS][:] = table.label_matrix()
    root.attrs[ATTRIBUTES] = {
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


def _create_arrays(root: zarr.Group, n: int, has_labels: bool, spec: StoreSpec) -> None:
    """The empty arrays of a store of ``n`` samples (what :func:`repair_store_files` copies the
    metadata of, too)."""
    small = min(SMALL_CHUNK, max(1, n))
    for s in spec.sizes:
        c = min(spec.chunk, s)
        root.create_array(
            level_path(s), shape=(n, 4, s, s), dtype=spec.dtype, chunks=(1, 1, c, c), shards=(1, 4, s, s),
            compressors=spec.compressors(c * c * np.dtype(spec.dtype).itemsize), fill_value=0,
            dimension_names=("sample", "c", "y", "x"),
        )
    if has_labels:
        root.create_array(LABELS, shape=(n, N_CLASSES), dtype=bool, chunks=(small, N_CLASSES),
                          fill_value=False, dimension_names=("sample", "class"))
    root.create_array(SOURCE_SHAPE, shape=(n, 2), dtype="int32", chunks=(small, 2), fill_value=0)
    root.create_array(SOURCE_DTYPE, shape=(n,), dtype="uint8", chunks=(small,), fill_value=0)
    root.create_array(CHANNEL_SUMS, shape=(n, spec.levels, 4, 2), dtype="float64",
                      chunks=(small, spec.levels, 4, 2), fill_value=0.0)
    _create_phash(root, n)
    root.create_array(DONE, shape=(n,), dtype=bool, chunks=(small,), fill_value=False)


def _create_phash(root: zarr.Group, n: int) -> None:
    """The ``phash`` array (stores written before it get it on their next build command)."""
    root.create_array(PHASH, shape=(n, 4), dtype="uint64", chunks=(min(SMALL_CHUNK, max(1, n)), 4), fill_value=0)


def _check_same_build(path, root, table: SampleTable, spec: StoreSpec) -> None:
    meta = root.attrs.get(ATTRIBUTES)
    if meta is None:
        raise StoreError(f"{path} exists and is not an hpa-pipeline store; choose another --out")
    old = StoreSpec(**_bring_up(path, dict(meta))["spec"])
    differences = [f"--{name} {getattr(old, name)} (stored) vs {getattr(spec, name)} (asked)"
                   for name in LAYOUT_FIELDS if getattr(old, name) != getattr(spec, name)
                   and not (name == "codec" and spec.codec is None)]  # no --codec: the store's
    if differences:
        raise StoreError(f"{path} was built with other layout options: {'; '.join(differences)}. Rerun with the "
                         f"stored options to resume, or use another --out to build a second store.")
    if meta["ids"] != list(table.ids):
        raise StoreError(f"{path} holds other ids than this CSV (or in another order); use another --out")


def _some_sample_done(root: zarr.Group) -> bool:
    """Whether any sample of an existing store is finished (a store without done flags counts
    as finished work: it is not ours to remove)."""
    try:
        return bool(root[DONE][:].any())
    except KeyError:
        return True


def _holds_no_data(path: str) -> bool:
    """Whether a store folder holds only metadata (``zarr.json``), no written sample."""
    return all(name == "zarr.json" for name in file_names(path))


def write_levels(path: str, index: int, levels: dict[int, np.ndarray]) -> None:
    """Write every level of sample ``index`` (each a whole shard). Called by the worker tasks."""
    for size, image in levels.items():
        write_sample_shard(str(path), level_path(size), index, image)


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
