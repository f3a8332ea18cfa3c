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
from ..contract.locations import is_url
from ..common.progress import Counter, ProgressCallback
from ..contract.shards import DamagedShard
from ..contract.store import BOOK_ARRAYS, CHANNEL_SUMS, DONE, LABELS, DamagedArray, Store
from .imaging import channel_sums
from .sample_book import SampleBook, channel_statistics


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
    store = Store.open(path, mode="r+" if repair else "r")
    report = VerifyReport(path, len(store))
    unreadable = _undecodable_arrays(store)
    report.store_problems += list(unreadable.values())
    if DONE in unreadable or CHANNEL_SUMS in unreadable:  # no sample can be checked against them
        return report
    done = store.done()
    report.store_problems += _missing_small_chunks(store, done)
    sizes = list(store.levels())
    readers = {size: store.reader(size) for size in sizes}
    report.chunk_checksums = all(r.layout is None or r.layout.checksummed for r in readers.values())
    sums = store.channel_sums()
    counter = Counter(progress, "verify", total=int(done.sum()))
    counter.start()
    for index in np.flatnonzero(done):
        problem = _check_sample(store, readers, int(index), sums[index])
        if problem is not None:
            report.damaged[store.ids[index]] = problem
        report.checked += 1
        counter.add()
    report.store_problems += _stale_statistics(store, done, sums, sizes)
    if repair and report.damaged:
        report.repaired = _mark_not_done(store, [store.ids.index(i) for i in report.damaged], sizes)
    return report


def _undecodable_arrays(store: Store) -> dict[str, str]:
    """The per-sample arrays with a chunk that does not decode, and the line naming each."""
    problems = {}
    for name in [*([LABELS] if store.has_labels else []), *BOOK_ARRAYS]:
        if store.has_array(name):
            try:
                store.read(name)
            except DamagedArray as exc:
                problems[name] = f"{exc.line()}"
    return problems


def _check_sample(store: Store, readers: dict, index: int, sums: np.ndarray) -> str | None:
    """What is wrong with done sample ``index`` (the first problem found), or None."""
    levels = {}
    for size, reader in readers.items():
        shard = store.shard_path(size, index)
        try:
            levels[size] = reader.read(index)
        except DamagedShard as exc:
            return str(exc)
        except Exception as exc:  # zarr's own reader (URLs, other layouts): any decoding failure is damage
            return f"{shard}: does not read ({type(exc).__name__}: {exc})"
        if not is_url(store.path) and reader.layout is None and not Path(shard).exists():
            return f"{shard}: the shard is missing"
    found = channel_sums(levels)
    if not np.array_equal(found, sums):
        level = sorted(levels, reverse=True)[int(np.argwhere(found != sums)[0][0])]
        return f"level {level}: the pixels do not add up to the sums written with them (damaged at rest)"
    return None


def _missing_small_chunks(store: Store, done: np.ndarray) -> list[str]:
    """Chunks of the per-sample arrays that must exist and do not (zarr would read them as fill)."""
    if is_url(store.path):
        return []
    problems = []
    chunk = store.array(DONE).chunks[0]
    names = ([LABELS] if store.has_labels else []) + [n for n in BOOK_ARRAYS if n != DONE and store.has_array(n)]
    for name in names:
        for c in range(-(-len(done) // chunk)):
            needed = name == LABELS or done[c * chunk:(c + 1) * chunk].any()
            key = Path(store.path, name, "c", str(c), *(["0"] * (store.array(name).ndim - 1)))
            if needed and not key.exists():
                problems.append(f"{key}: a chunk of {name} is missing (samples {c * chunk} to "
                                f"{min(len(done), (c + 1) * chunk) - 1})")
    return problems


def _stale_statistics(store: Store, done: np.ndarray, sums: np.ndarray, sizes: list[int]) -> list[str]:
    """The stored statistics against those of the done samples' sums (the writer's formula)."""
    if store.statistics_attribute != channel_statistics(done, sums, sizes):
        return ["zarr.json: the channel statistics do not match the done samples' channel_sums; run the "
                "same ingest/build-zarr command again to rewrite them"]
    return []


def _mark_not_done(store: Store, indices: list[int], sizes: list[int]) -> list[str]:
    """Clear the done flags of ``indices`` and remove their shards; return their ids."""
    from ..contract.locations import filesystem

    book = SampleBook(store)
    for index in indices:
        book.mark_not_done(index)
        for size in sizes:
            key = store.shard_path(size, index)
            if is_url(store.path):
                fs, inner = filesystem(key)
                fs.rm(inner) if fs.exists(inner) else None
            else:
                Path(key).unlink(missing_ok=True)
    book.flush()
    store.set_statistics(book.statistics(sizes))
    return [store.ids[i] for i in indices]
