"""A synthetic HPA dataset in the competition's exact on-disk format.

``make_dataset`` writes into one folder:

- ``train_full_size.7z`` and ``test_full_size.7z``: members ``<id>_<filter>.tif``, four per id
  (red, green, blue, yellow), full-size single-channel TIFFs, sorted by name as in the real ones;
- ``train.csv`` (``Id,Target``) and ``sample_submission.csv`` (``Id,Predicted``, placeholder ``0``);
- ``test_labels.csv``: the hidden truth of the test split (``Id,Target``), which the real
  competition never published; the demo scores its submission against it.

Label sets are whole rows drawn from the real ``train.csv`` when it is at hand (so the label
co-occurrence is real too), else drawn per class from the real class frequencies.
Everything depends only on ``seed``: sample ``i`` of a split has its own random stream, so the
images are the same whatever the number of worker processes.
"""
from __future__ import annotations

import concurrent.futures
import io
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import py7zr
import tifffile

from ...contract.atomic import replacing
from ...contract.labels import FILTERS, N_CLASSES, REAL_CLASS_COUNTS, REAL_N_SAMPLES, read_sample_table, write_labels_csv
from ...common.progress import Counter, ProgressCallback
from .cells import render_sample
from ...contract.errors import OptionError

#: TIFF compressions that ``--compression`` offers, as tifffile names them.
TIFF_COMPRESSIONS = {"none": None, "deflate": "zlib", "zlib": "zlib", "lzw": "lzw", "zstd": "zstd"}

#: Archive coders. ``copy`` stores the (already compressed) TIFFs: LZMA2 gains little on them
#: and writes slowly on one core, so ``copy`` is what keeps a full-size synthetic dataset
#: quick to make. ``lzma2`` is what the real archives use; pick it to measure
#: decoding as it will be on them.
ARCHIVE_METHODS = {
    "copy": [{"id": py7zr.FILTER_COPY}],
    "lzma2": [{"id": py7zr.FILTER_LZMA2, "preset": 1}],
}

TRAIN_ARCHIVE = "train_full_size.7z"
TEST_ARCHIVE = "test_full_size.7z"

#: The forms of HPA data users hold (``--form``):
#: ``7z``: the full-size archives (TIFFs, train_full_size.7z / test_full_size.7z);
#: ``png-zip``: the competition's train.zip / test.zip of 512² 8-bit PNGs;
#: ``jpeg-folder``: HPA v18 "external" downloads: a folder of JPEGs, each filter saved in its
#: display colour (red, green, blue; yellow as red + green), and HPAv18RBGY_wodpl.csv (train only).
FORMS = ("7z", "png-zip", "jpeg-folder")
PNG_SIZE = 512
FILTER_COLOURS = {"red": (1, 0, 0), "green": (0, 1, 0), "blue": (0, 0, 1), "yellow": (1, 1, 0)}


@dataclass
class SynthSpec:
    """What to generate; the defaults make full-size data like the real archives."""

    n_train: int = 48
    n_test: int = 16
    image_sizes: tuple[int, ...] = (2048, 3072)
    bit_depth: int = 8
    compression: str = "deflate"
    archive_method: str = "copy"
    seed: int = 0
    labels_csv: str | Path | None = None  # real train.csv to draw label sets from
    form: str = "7z"  # see FORMS
    duplicates: int = 0  # near-duplicates planted under new ids (see plant_duplicates), listed in duplicates.csv

    @property
    def train_only(self) -> bool:
        """HPA v18's images have no test set: ``jpeg-folder`` writes training samples only."""
        return self.form == "jpeg-folder"

    @property
    def samples(self) -> int:
        """How many samples :func:`make_dataset` writes."""
        return self.n_train + (0 if self.train_only else self.n_test)

    def __post_init__(self):
        if self.form not in FORMS:
            raise OptionError(f"unknown form {self.form!r}; choose from {FORMS}")
        if self.bit_depth not in (8, 16):
            raise OptionError(f"bit depth must be 8 or 16, not {self.bit_depth}")
        if self.compression not in TIFF_COMPRESSIONS:
            raise OptionError(f"unknown TIFF compression {self.compression!r}; choose from {sorted(TIFF_COMPRESSIONS)}")
        if self.archive_method not in ARCHIVE_METHODS:
            raise OptionError(f"unknown archive method {self.archive_method!r}; choose from {sorted(ARCHIVE_METHODS)}")
        if self.n_train < 0 or self.n_test < 0 or self.samples == 0:
            note = "; --form jpeg-folder writes training samples only" if self.train_only else ""
            raise OptionError(f"nothing to write: n_train {self.n_train}, n_test {self.n_test} (counts of 0 or more, "
                             f"at least one sample{note})")
        if self.duplicates < 0 or self.duplicates and not self.n_train:
            raise OptionError(f"--duplicates {self.duplicates}: a count of 0 or more, of copies of training samples "
                              f"(so at least one training sample)")
        bad = [s for s in self.image_sizes if s < 64 or s % 4]
        if bad or not self.image_sizes:
            raise OptionError(f"image sizes must be multiples of 4 and at least 64, got {self.image_sizes}")


@dataclass
class SynthResult:
    """Where :func:`make_dataset` wrote each part; the test parts are None for ``jpeg-folder``."""

    out_dir: Path
    train_archive: Path
    test_archive: Path | None
    train_csv: Path
    sample_submission: Path | None
    test_labels: Path | None
    train_ids: list[str] = field(default_factory=list)
    test_ids: list[str] = field(default_factory=list)


def new_ids(rng: np.random.Generator, n: int) -> list[str]:
    """Unique ids shaped like the real ones (``00070df0-bbc3-11e8-b2bc-ac1f6b6435d0``)."""
    ids: set[str] = set()
    while len(ids) < n:
        h = rng.integers(0, 16, 20)
        hexs = "".join("0123456789abcdef"[i] for i in h)
        ids.add(f"{hexs[:8]}-{hexs[8:12]}-11e8-{hexs[12:16]}-ac1f6b{hexs[16:20]}d0")
    return sorted(ids)


def draw_label_sets(rng: np.random.Generator, n: int, labels_csv=None) -> list[tuple[int, ...]]:
    """``n`` label sets with the real distribution: real rows if a train.csv is given."""
    if labels_csv is not None and Path(labels_csv).exists():
        real = read_sample_table(labels_csv).labels
        return [real[i] for i in rng.integers(0, len(real), n)]
    p = np.array(REAL_CLASS_COUNTS) / REAL_N_SAMPLES
    # Every real sample has a label. Draw classes independently with probabilities thinned
    # by s and redraw empty sets: then P(class) = s*p / P(non-empty) = p when s = P(non-empty).
    s = 1.0
    for _ in range(200):
        s = 1.0 - float(np.prod(1.0 - s * p))
    out = []
    while len(out) < n:
        classes = np.flatnonzero(rng.random(N_CLASSES) < s * p)
        if classes.size:
            out.append(tuple(int(c) for c in classes))
    return out


def encode_tiff(image: np.ndarray, compression: str) -> bytes:
    """One single-channel TIFF in memory; deflate at level 1 (fast, near level 6 in size)."""
    codec = TIFF_COMPRESSIONS[compression]
    args = {"level": 1} if codec == "zlib" else None
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, image, compression=codec, compressionargs=args, photometric="minisblack")
    return buffer.getvalue()


@dataclass(frozen=True)
class _SampleJob:
    seed: int
    split: int
    index: int
    sample_id: str
    labels: tuple[int, ...]
    image_sizes: tuple[int, ...]
    bit_depth: int
    compression: str
    form: str = "7z"
    twin_of: int | None = None  # a planted near-duplicate: the index of the training sample it copies


def render_members(job: _SampleJob) -> list[tuple[str, bytes]]:
    """The four ``(<id>_<filter>.<tif|png|jpg>, bytes)`` members of one sample, by name order."""
    if job.twin_of is None:
        rng = np.random.default_rng([job.seed, job.split, job.index])
        size = int(rng.choice(job.image_sizes))
        channels = render_sample(rng, job.labels, size, job.bit_depth)
    else:  # the original's images (its own random stream), then altered as a re-upload would be
        rng = np.random.default_rng([job.seed, 0, job.twin_of])
        size = int(rng.choice(job.image_sizes))
        channels = near_duplicate(render_sample(rng, job.labels, size, job.bit_depth),
                                  np.random.default_rng([job.seed, TWIN_STREAM, job.index]))
    if job.form == "7z":
        return sorted((f"{job.sample_id}_{f}.tif", encode_tiff(channels[f], job.compression)) for f in FILTERS)
    import imagecodecs  # PNG/JPEG only: uncompressed TIFFs need no codec library (the GPU image has none)

    if job.form == "png-zip":  # the competition's 512² 8-bit PNGs, area-averaged from the full size
        members = [(f"{job.sample_id}_{f}.png", imagecodecs.png_encode(_eight_bit(channels[f], PNG_SIZE)))
                   for f in FILTERS]
    else:  # HPA v18 downloads: JPEG, each filter in its display colour
        members = [(f"{job.sample_id}_{f}.jpg",
                    imagecodecs.jpeg8_encode(_coloured(_eight_bit(channels[f], size), f), level=95)) for f in FILTERS]
    return sorted(members)


#: the random stream of the planted duplicates' alterations (splits use 0 and 1)
TWIN_STREAM = 2


def near_duplicate(channels: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """The same field of view as another file would hold it: shifted by up to 8 pixels, rescaled
    by up to 3 %, brightened by up to 15 % and, for 8-bit images, re-encoded as JPEG (quality 90),
    one alteration for all four channels (as HPA v18's images differ from the competition's)."""
    import cv2
    import imagecodecs

    size = next(iter(channels.values())).shape[0]
    scale, gain = 1.0 + rng.uniform(0, 0.03), 1.0 + rng.uniform(0, 0.15)
    dy, dx = rng.integers(-8, 9, 2)
    matrix = cv2.getRotationMatrix2D((size / 2, size / 2), 0.0, scale)
    matrix[:, 2] += (dx, dy)
    out = {}
    for f, image in channels.items():
        moved = cv2.warpAffine(image, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        top = np.iinfo(image.dtype).max
        moved = np.clip(moved.astype(np.float64) * gain, 0, top).astype(image.dtype)
        if image.dtype == np.uint8:
            moved = imagecodecs.jpeg8_decode(imagecodecs.jpeg8_encode(moved, level=90))
        out[f] = moved
    return out


def plant_duplicates(spec: SynthSpec, train_ids: list[str], train_labels, test: bool) -> list[tuple]:
    """``(twin id, split, index of the training sample it copies, its labels)`` of each planted
    duplicate: copies of the first training samples in turn, every other one into the test split
    (when there is one), each under a new id."""
    taken = set(train_ids)
    fresh = [i for i in new_ids(np.random.default_rng([spec.seed, TWIN_STREAM]), 2 * spec.duplicates + len(taken))
             if i not in taken][:spec.duplicates]
    return [(twin, 1 if test and k % 2 else 0, k % len(train_ids), train_labels[k % len(train_ids)])
            for k, twin in enumerate(fresh)]


def _eight_bit(image: np.ndarray, size: int) -> np.ndarray:
    import cv2

    if image.dtype == np.uint16:
        image = np.clip(np.rint(image / 257.0), 0, 255).astype(np.uint8)
    if image.shape[0] != size:
        image = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
    return image


def _coloured(image: np.ndarray, filt: str) -> np.ndarray:
    return np.stack([image * c for c in FILTER_COLOURS[filt]], axis=-1).astype(np.uint8)


def bounded_map(fn: Callable, items: Iterable, workers: int, ahead: int = 2) -> Iterator:
    """``map`` over a process pool, in order, with at most ``workers * ahead`` results pending.

    ``Executor.map`` submits everything at once and would hold every result in memory when
    the consumer (here the archive writer) is slower than the workers.
    """
    if workers <= 1:
        yield from map(fn, items)
        return
    with concurrent.futures.ProcessPoolExecutor(workers) as pool:
        pending: list[concurrent.futures.Future] = []
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= workers * ahead:
                yield pending.pop(0).result()
        for future in pending:
            yield future.result()


def write_archive(path: Path, members: Iterable[tuple[str, bytes]], method: str) -> int:
    """Write members into a new 7z archive at ``path`` (whole or not at all); returns the count."""
    count = 0
    with replacing(path) as tmp, py7zr.SevenZipFile(tmp, "w", filters=ARCHIVE_METHODS[method]) as archive:
        for name, data in members:
            archive.writestr(data, name)
            count += 1
    return count


def write_zip(path: Path, members: Iterable[tuple[str, bytes]]) -> int:
    """Members into a new zip (stored: PNGs are compressed already), whole or not at all."""
    import zipfile

    count = 0
    with replacing(path) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as archive:
        for name, data in members:
            archive.writestr(name, data)
            count += 1
    return count


def write_folder(path: Path, members: Iterable[tuple[str, bytes]]) -> int:
    from ...contract.atomic import write_bytes

    path.mkdir(parents=True, exist_ok=True)
    count = 0
    for name, data in members:
        write_bytes(path / name, data)
        count += 1
    return count


def make_dataset(out_dir: str | Path, spec: SynthSpec, workers: int = 1,
                 progress: ProgressCallback | None = None) -> SynthResult:
    """Write the synthetic dataset of ``spec`` into ``out_dir``; ``progress`` gets the samples
    written (task ``synth``).

    ``spec.form`` picks the form (:data:`FORMS`): the full-size 7z archives, the competition's PNG
    zips (``train.zip``, ``test.zip``), or an HPA v18-style JPEG folder (``hpa_v18/``) with
    ``HPAv18RBGY_wodpl.csv`` (training samples only: external data has no test split)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(spec.seed)
    ids = new_ids(rng, spec.n_train + spec.n_test)
    rng.shuffle(ids)
    train_ids, test_ids = sorted(ids[: spec.n_train]), sorted(ids[spec.n_train:])
    train_labels = draw_label_sets(rng, spec.n_train, spec.labels_csv)
    test_labels = draw_label_sets(rng, spec.n_test, spec.labels_csv)
    train_name, test_name, csv_name = {"7z": (TRAIN_ARCHIVE, TEST_ARCHIVE, "train.csv"),
                                       "png-zip": ("train.zip", "test.zip", "train.csv"),
                                       "jpeg-folder": ("hpa_v18", None, "HPAv18RBGY_wodpl.csv")}[spec.form]
    twins = plant_duplicates(spec, train_ids, train_labels, test=not spec.train_only)
    written = Counter(progress, "synth", spec.samples + len(twins))
    written.start()
    train_rows = _write_split(out / train_name, 0, train_ids, train_labels, spec, workers, written,
                              [t for t in twins if t[1] == 0])
    train_ids, train_labels = [r[0] for r in train_rows], [r[1] for r in train_rows]
    write_labels_csv(out / csv_name, train_ids, train_labels)
    if twins:
        _write_twins(out / "duplicates.csv", twins, train_rows)
    if spec.train_only:
        return SynthResult(out, out / train_name, None, out / csv_name, None, None, train_ids, [])
    test_rows = _write_split(out / test_name, 1, test_ids, test_labels, spec, workers, written,
                             [t for t in twins if t[1] == 1])
    test_ids, test_labels = [r[0] for r in test_rows], [r[1] for r in test_rows]
    write_labels_csv(out / "test_labels.csv", test_ids, test_labels)
    write_labels_csv(out / "sample_submission.csv", test_ids, [(0,)] * len(test_ids), column="Predicted")
    return SynthResult(out, out / train_name, out / test_name, out / csv_name, out / "sample_submission.csv",
                       out / "test_labels.csv", train_ids, test_ids)


def _write_split(archive: Path, split: int, split_ids: list[str], label_sets, spec: SynthSpec, workers: int,
                 written: Counter, twins: list[tuple] = ()) -> list[tuple[str, tuple]]:
    """Render one split's samples (and the duplicates planted in it) in ``workers`` processes
    into its archive, zip or folder; returns its ``(id, labels)`` in id order."""
    common = (tuple(spec.image_sizes), spec.bit_depth, spec.compression, spec.form)
    jobs = [_SampleJob(spec.seed, split, i, sid, labels, *common) for i, (sid, labels) in enumerate(zip(split_ids,
                                                                                                      label_sets))]
    jobs += [_SampleJob(spec.seed, split, k, twin, labels, *common, twin_of=original)
             for k, (twin, _, original, labels) in enumerate(twins)]
    jobs.sort(key=lambda job: job.sample_id)  # archives list their members by name, as the real ones
    members = _members_counted(bounded_map(render_members, jobs, workers), written)
    if spec.form == "7z":
        write_archive(archive, members, spec.archive_method)
    elif spec.form == "png-zip":
        write_zip(archive, members)
    else:
        write_folder(archive, members)
    return [(job.sample_id, job.labels) for job in jobs]


def _write_twins(path: Path, twins: list[tuple], train_rows: list[tuple[str, tuple]]) -> None:
    """``duplicates.csv``: each planted duplicate, its split, and the training sample it copies."""
    import csv

    originals = sorted({sid for sid, _ in train_rows} - {t[0] for t in twins})
    with replacing(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["Id", "split", "copy_of"])
        writer.writerows((twin, ("train", "test")[split], originals[index]) for twin, split, index, _ in twins)


def _members_counted(samples: Iterable[list[tuple[str, bytes]]], written: Counter):
    for members in samples:
        yield from members
        written.add()
