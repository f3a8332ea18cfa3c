"""``verify``: read every done sample of a store back and check it, so that damage at rest
(a flipped bit, a deleted or cut shard, a lost chunk of the per-sample arrays) is found before
hours of training use it.

What is checked, per done sample and level: the shard is there; its index's CRC32C; each
inner chunk's CRC32C (stores written with chunk checksums) and that it decodes to its size;
and that the decoded pixels add up to the sample's ``channel_sums``, which the writer computed
from the same pixels, so a store without chunk checksums is checked too. Store-wide: the
metadata files parse, every chunk of ``labels`` is present (a lost one would read as "no
label"), the chunks of the per-sample arrays behind each done flag are present, and the
statistics agree with the sums.

``repair=True`` turns each damaged sample back into a not-done one (its shards removed), so
the same ``ingest`` or ``build-zarr`` command, run again, rebuilds exactly those samples.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..contract.locks import store_locked
from ..contract.locations import is_url, join
from ..contract.progress import Counter, ProgressCallback
from ..contract.shards import DamagedShard, ShardReader, shard_key
from ..contract.store import SampleBook, channel_statistics, level_arrays, open_store
from .imaging import channel_sums

#: per-sample arrays whose chunks are written with the done flags (by the coordinator)
_BOOK_ARRAYS = ("source_shape", "source_dtype", "channel_sums")


@dataclass
class VerifyReport:
    """What ``verify`` found: damaged samples (id -> what is wrong) and store-wide problems."""

    store: str
    n_samples: int
    checked: int = 0  # done samples read back
    chunk_checksums: bool = True  # False for stores written before chunks carried a CRC32C
    damaged: dict[str, str] = field(default_factory=dict)
    store_problems: list[str] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)  # ids marked not done by repair=True

    @property
    def clean(self) -> bool:
        return not self.damaged and not self.store_problems

    def summary(self) -> str:
        checksums = "" if self.chunk_checksums else " (this store carries no chunk checksums: written before " \
                                                    "they were added; pixels checked against channel_sums)"
        text = (f"{self.checked} done samples checked, {len(self.damaged)} damaged, "
                f"{len(self.store_problems)} store problems{checksums}")
        if self.repaired:
            text += f"; {len(self.repaired)} marked not done: run the same ingest/build-zarr command to rebuild them"
        elif self.damaged:
            text += "; rerun with --repair, then the same ingest/build-zarr command, to rebuild them"
        return text

    def to_dict(self) -> dict:
        return {**asdict(self), "clean": self.clean}


def verify_store(path: str | Path, repair: bool = False, progress: ProgressCallback | None = None) -> VerifyReport:
    """Check every done sample and the per-sample arrays of the store at ``path``, holding the
    store's lock (a writer's for ``repair``, else a reader's)."""
    with store_locked(path, shared=not repair):
        return _verify_store(str(path), repair, progress)


def _verify_store(path: str, repair: bool, progress: ProgressCallback | None) -> VerifyReport:
    root = open_store(path, mode="r+" if repair else "r")
    meta = root.attrs["hpa"]
    report = VerifyReport(path, len(meta["ids"]))
    done = root["done"][:]
    report.store_problems += _missing_small_chunks(path, root, done)
    arrays = level_arrays(root)
    readers = {size: ShardReader(path, f"images/{size}") for size in arrays}
    report.chunk_checksums = all(r.layout is None or r.layout.checksummed for r in readers.values())
    sums = root["channel_sums"][:]
    counter = Counter(progress, "verify", total=int(done.sum()))
    counter.start()
    for index in np.flatnonzero(done):
        problem = _check_sample(path, readers, int(index), sums[index])
        if problem is not None:
            report.damaged[meta["ids"][index]] = problem
        report.checked += 1
        counter.add()
    report.store_problems += _stale_statistics(meta, done, sums, list(arrays))
    if repair and report.damaged:
        report.repaired = _mark_not_done(path, root, [meta["ids"].index(i) for i in report.damaged], list(arrays))
    return report


def _check_sample(path: str, readers: dict, index: int, sums: np.ndarray) -> str | None:
    """What is wrong with done sample ``index`` (the first problem found), or None."""
    levels = {}
    for size, reader in readers.items():
        try:
            levels[size] = reader.read(index)
        except DamagedShard as exc:
            return str(exc)
        except Exception as exc:  # zarr's own reader (URLs, other layouts): any decoding failure is damage
            return f"{join(path, shard_key(f'images/{size}', index, 4))}: does not read ({type(exc).__name__}: {exc})"
        if not is_url(path) and reader.layout is None and not Path(path, shard_key(f"images/{size}", index, 4)).exists():
            return f"{Path(path, shard_key(f'images/{size}', index, 4))}: the shard is missing"
    found = channel_sums(levels)
    if not np.array_equal(found, sums):
        level = sorted(levels, reverse=True)[int(np.argwhere(found != sums)[0][0])]
        return f"level {level}: the pixels do not add up to the sums written with them (damaged at rest)"
    return None


def _missing_small_chunks(path: str, root, done: np.ndarray) -> list[str]:
    """Chunks of the per-sample arrays that must exist and do not (zarr would read them as fill)."""
    if is_url(path):
        return []
    problems = []
    chunk = root["done"].chunks[0]
    names = (["labels"] if "labels" in root else []) + list(_BOOK_ARRAYS) + (["phash"] if "phash" in root else [])
    for name in names:
        for c in range(-(-len(done) // chunk)):
            needed = name == "labels" or done[c * chunk:(c + 1) * chunk].any()
            key = Path(path, name, "c", str(c), *(["0"] * (root[name].ndim - 1)))
            if needed and not key.exists():
                problems.append(f"{key}: a chunk of {name} is missing (samples {c * chunk} to "
                                f"{min(len(done), (c + 1) * chunk) - 1})")
    return problems


def _stale_statistics(meta: dict, done: np.ndarray, sums: np.ndarray, sizes: list[int]) -> list[str]:
    """The stored statistics against those of the done samples' sums (the writer's formula)."""
    if meta.get("statistics", {}) != channel_statistics(done, sums, sizes):
        return ["zarr.json: the channel statistics do not match the done samples' channel_sums; run the "
                "same ingest/build-zarr command again to rewrite them"]
    return []


def _mark_not_done(path: str, root, indices: list[int], sizes: list[int]) -> list[str]:
    """Clear the done flags of ``indices`` and remove their shards; return their ids."""
    from ..contract.locations import filesystem

    book = SampleBook(root)
    for index in indices:
        book.mark_not_done(index)
        for size in sizes:
            key = join(path, shard_key(f"images/{size}", index, 4))
            if is_url(path):
                fs, inner = filesystem(key)
                fs.rm(inner) if fs.exists(inner) else None
            else:
                Path(key).unlink(missing_ok=True)
    book.flush()
    meta = dict(root.attrs["hpa"])
    meta["statistics"] = book.statistics(sizes)
    root.attrs["hpa"] = meta
    return [root.attrs["hpa"]["ids"][i] for i in indices]
