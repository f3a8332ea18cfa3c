"""``classify``: raw images as they come off a microscope or out of an archive, classified
without building a store.

Sources: folders of ``<id>_<filter>`` images, 7z or zip archives, or single image files (TIFF
8/16-bit, PNG, JPEG), in any mix. Each sample is read and brought to the run's level exactly as
``ingest`` does (the same reader, the same area-averaged levels from the same top size), so the
same images give the same probabilities as ``ingest`` followed by ``predict --probs``. A run
folder classifies with PyTorch; an exported package (``--model``) with ONNX Runtime, so a
microscope PC needs neither torch nor a GPU. Archive members are held in memory until their
sample is complete: for whole competition archives, ``ingest`` then ``predict`` is the way.
"""
from __future__ import annotations

import csv
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..contract.atomic import replacing, write_json
from ..contract.labels import FILTERS, MEMBER_NAME, N_CLASSES
from ..common.progress import Counter, ProgressCallback
from ..model.metrics import predict_labels
from ..model.run_folder import RunError
from ..prep.archive import ArchiveError, list_members, stream_members, volume_paths
from ..prep.imaging import IMAGE_SUFFIXES, ImageError, make_levels, read_image

ARCHIVE_SUFFIXES = (".7z", ".zip")


@dataclass
class Classified:
    ids: list[str] = field(default_factory=list)
    probs: list[np.ndarray] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # id (or source) -> why it was not classified


@dataclass
class Predictor:
    """What classifies a batch of level pixels: ``probabilities(batch) -> (n, 28)``."""

    probabilities: object
    thresholds: np.ndarray
    level: int
    sizes: list[int]
    dtype: str


def run_predictor(run: str | Path) -> Predictor:
    """A run or cross-validation folder, with PyTorch."""
    import torch

    from .graph import load_deployed

    deployed = load_deployed(run)

    def probabilities(batch: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return deployed.module(torch.from_numpy(batch)).numpy()
    return Predictor(probabilities, deployed.thresholds, deployed.level, deployed.sizes, deployed.dtype)


def package_predictor(folder: str | Path) -> Predictor:
    """An exported package, with ONNX Runtime (no torch)."""
    import onnxruntime

    from .package import read_package

    config = read_package(folder)
    try:
        session = onnxruntime.InferenceSession(str(config["onnx"]), providers=["CPUExecutionProvider"])
    except Exception as exc:  # ONNX Runtime raises its own classes for a file it cannot load
        raise RunError(f"{config['onnx']}: not an ONNX model ONNX Runtime can load "
                       f"({str(exc).splitlines()[0][:200]})") from None
    check_session(session, config["dtype"], config["onnx"])
    return Predictor(lambda batch: session.run(None, {"image": batch})[0], np.array(config["thresholds"]),
                     int(config["level"]), list(config["store_sizes"]), config["dtype"])


def check_session(session, dtype: str, path: Path) -> None:
    """The ONNX graph must take this project's input, ``image`` (batch, 4, y, x) of the package's
    dtype, and give (batch, 28) probabilities."""
    inputs, outputs = session.get_inputs(), session.get_outputs()
    wanted = f"tensor({dtype})"
    if len(inputs) != 1 or inputs[0].name != "image" or inputs[0].type != wanted or len(inputs[0].shape) != 4 \
            or inputs[0].shape[1] not in (4, "4"):
        got = ", ".join(f"{i.name} {i.type} {i.shape}" for i in inputs)
        raise RunError(f"{path}: expects {got}, not image {wanted} (batch, 4, y, x) as this package's config says")
    if len(outputs) != 1 or len(outputs[0].shape) != 2 or outputs[0].shape[1] != N_CLASSES:
        got = ", ".join(f"{o.name} {o.shape}" for o in outputs)
        raise RunError(f"{path}: gives {got}, not (batch, {N_CLASSES}) probabilities")


def samples_of(sources: list[Path], failed: dict[str, str]) -> Iterator[tuple[str, dict, dict]]:
    """``(id, {filter: path or bytes}, {filter: name})`` of each sample with all four channels;
    a source that cannot be read, or a sample without its four channels, goes into ``failed``."""
    loose: dict[str, dict[str, Path]] = {}
    for source in sources:
        if source.is_dir():
            for path in sorted(p for p in source.rglob("*") if p.is_file()):
                _add_file(path, loose)
        elif source.is_file() and source.suffix.lower() in IMAGE_SUFFIXES:
            if not _add_file(source, loose):
                failed[str(source)] = "not an <id>_<filter> image file name (e.g. 1a2b_green.tif)"
        elif source.exists() or volume_paths(source):
            yield from _archive_samples(source, failed)
        else:
            failed[str(source)] = "no such file or folder"
    for sample_id, files in sorted(loose.items()):
        if _complete(sample_id, files, failed):
            yield sample_id, {f: str(p) for f, p in files.items()}, {f: str(p) for f, p in files.items()}


def _add_file(path: Path, loose: dict) -> bool:
    match = MEMBER_NAME.match(path.name)
    if match:
        loose.setdefault(match["id"], {}).setdefault(match["filter"], path)
    return bool(match)


def _complete(sample_id: str, channels: dict, failed: dict[str, str]) -> bool:
    missing = [f for f in FILTERS if f not in channels]
    if missing:
        failed[sample_id] = f"missing channel(s) {', '.join(missing)}"
    return not missing


def _archive_samples(path: Path, failed: dict[str, str]) -> Iterator[tuple[str, dict, dict]]:
    """The complete samples of an archive, each as soon as its fourth member is decoded."""
    try:
        members = [m for m in list_members(path) if not m.is_dir and m.parsed() is not None]
    except ArchiveError as exc:
        failed[str(path)] = str(exc)
        return
    expected: dict[str, set] = {}
    for m in members:
        expected.setdefault(m.parsed()[0], set()).add(m.parsed()[1])
    for sample_id, filters in expected.items():
        _complete(sample_id, filters, failed)
    got: dict[str, dict] = {}
    ready: list = []
    lock = threading.Lock()

    def deliver(member, data, error):  # 7zz decodes blocks in several threads
        sample_id, filt = member.parsed()
        with lock:
            if error is not None:
                failed[sample_id] = error
                return
            got.setdefault(sample_id, {})[filt] = (data, member.name)
            if set(got[sample_id]) == set(FILTERS):
                ready.append(sample_id)

    try:
        stream_members(path, lambda m: m.parsed() is not None and m.parsed()[0] not in failed, deliver)
    except ArchiveError as exc:
        failed[str(path)] = str(exc)
    for sample_id in sorted(ready):
        if sample_id in failed:
            continue
        channels = got.pop(sample_id)
        yield sample_id, {f: d for f, (d, _) in channels.items()}, {f: n for f, (_, n) in channels.items()}


def level_pixels(sources: dict, names: dict, sample_id: str, predictor: Predictor, upscale: bool) -> np.ndarray:
    """The sample at the predictor's level, made as ``ingest`` makes it: ``(4, L, L)``."""
    channels = {f: read_image(src, names.get(f), f) for f, src in sources.items()}
    levels = predictor.sizes.index(predictor.level) + 1
    made = make_levels(channels, predictor.sizes[0], levels, predictor.dtype, sample_id=sample_id, upscale=upscale)
    return made.levels[predictor.level]


def classify(sources: list[str | Path], predictor: Predictor, batch_size: int = 8, upscale: bool = False,
             progress: ProgressCallback | None = None) -> Classified:
    """Every complete sample of ``sources`` classified; the others listed with their reason."""
    result = Classified()
    counter = Counter(progress, "classify")
    counter.start()
    batch, batch_ids = [], []
    for sample_id, channels, names in samples_of([Path(s) for s in sources], result.failed):
        try:
            batch.append(level_pixels(channels, names, sample_id, predictor, upscale))
            batch_ids.append(sample_id)
        except ImageError as exc:
            result.failed[sample_id] = str(exc)
        if len(batch) == batch_size:
            _predict(predictor, batch, batch_ids, result, counter)
            batch, batch_ids = [], []
    if batch:
        _predict(predictor, batch, batch_ids, result, counter)
    return result


def _predict(predictor: Predictor, batch: list, ids: list[str], result: Classified, counter: Counter) -> None:
    probs = predictor.probabilities(np.stack(batch))
    result.ids += ids
    result.probs += list(probs)
    counter.add(len(ids))


def write_results(path: str | Path, result: Classified, thresholds: np.ndarray) -> Path:
    """``Id,Predicted`` (as in a submission) then the 28 probabilities ``0`` ... ``27``, by id."""
    order = np.argsort(result.ids)
    probs = np.array(result.probs).reshape(-1, N_CLASSES)
    labels = predict_labels(probs, thresholds)
    with replacing(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["Id", "Predicted", *map(str, range(N_CLASSES))])
        for k in order:
            writer.writerow([result.ids[k], " ".join(map(str, np.flatnonzero(labels[k]))),
                             *(f"{p:.6f}" for p in probs[k])])
    return Path(path)


def report_path(results: str | Path) -> Path:
    """Where classify's report goes: beside its results (``results.csv`` -> ``results.report.json``)."""
    results = Path(results)
    return results.with_name(f"{results.stem}.report.json")


def write_report(path: str | Path, sources: list, result: Classified) -> Path:
    """Every sample (or source) not classified with its reason, as ingest's report lists them."""
    write_json(path, {"sources": [str(s) for s in sources], "classified": len(result.ids),
                      "failed": dict(sorted(result.failed.items()))})
    return Path(path)
