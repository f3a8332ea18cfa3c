"""Building blocks for tests: real TIFF bytes, real 7z archives with chosen (bad) members."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import py7zr
import tifffile

from hpa_pipeline.contract.labels import FILTERS


def tiff_bytes(image: np.ndarray, compression=None, tile=None) -> bytes:
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, image, compression=compression, tile=tile, photometric="minisblack")
    return buffer.getvalue()


def random_sample(rng, size: int, dtype=np.uint8) -> dict[str, np.ndarray]:
    high = 256 if dtype == np.uint8 else 65536
    return {f: rng.integers(0, high, (size, size), dtype=dtype) for f in FILTERS}


def write_7z(path: Path, members: list[tuple[str, bytes]], method: str = "copy") -> Path:
    """A real 7z archive; names are written as given, unsafe ones included (py7zr's checked
    ``writestr`` refuses them, so this uses the unchecked one, as a hostile archive would)."""
    filters = [{"id": py7zr.FILTER_COPY}] if method == "copy" else [{"id": py7zr.FILTER_LZMA2, "preset": 1}]
    with py7zr.SevenZipFile(path, "w", filters=filters) as archive:
        for name, data in members:
            archive._writestr(data, name)
    return path


def read_archive_members(path: Path) -> list[tuple[str, bytes]]:
    with py7zr.SevenZipFile(path) as archive:
        factory = py7zr.io.BytesIOFactory(1 << 30)
        archive.extractall(factory=factory)
        return [(name, factory.get(name).read()) for name in archive.getnames()]


def dataset_with_reference(tmp: Path, n: int, seed: int, spec):
    """A synthetic dataset (512/768 sources), its store built once by ingest, and its TIFFs extracted."""
    from hpa_pipeline.prep.extract import extract_archives
    from hpa_pipeline.prep.ingest import ingest
    from hpa_pipeline.prep.synth import SynthSpec, make_dataset

    d = make_dataset(tmp / "data", SynthSpec(n_train=n, n_test=1, image_sizes=(512, 768), seed=seed), workers=2)
    reference = tmp / "reference.zarr"
    assert ingest(d.train_archive, d.train_csv, reference, spec, workers=2).exit_code == 0
    extract_archives([d.train_archive], tmp / "tiff")
    return d, reference, tmp / "tiff"


def assert_same_stores(a: Path, b: Path, names: list[str], statistics: bool = False) -> None:
    import zarr

    ga, gb = zarr.open_group(str(a), mode="r"), zarr.open_group(str(b), mode="r")
    for name in names:
        assert np.array_equal(ga[name][:], gb[name][:]), name
    if statistics:
        assert ga.attrs["hpa"]["statistics"] == gb.attrs["hpa"]["statistics"]


def shards_written(store: Path, level: int) -> int:
    """How many samples have a shard of ``level`` on disk (written in the last step of a task)."""
    folder = store / "images" / str(level) / "c"
    return sum(1 for _ in folder.glob("*/0/0/0")) if folder.exists() else 0


#: ``python -c`` program: ``hpa-pipe`` whose ``module.function`` sends this process ``signal``
#: right after its ``count``-th call returns. A fault point the test controls, where a kill
#: "some time later" would depend on the machine's speed.
_SIGNAL_AT_CALL = """
import importlib, os, signal, sys
module_name, function, count, signum = sys.argv[1:5]
module = importlib.import_module(module_name)
real, calls = getattr(module, function), [0]
def wrapped(*args, **kwargs):
    result = real(*args, **kwargs)
    calls[0] += 1
    if calls[0] == int(count):
        if os.environ.get("HPA_TEST_SIGNAL_GROUP"):  # as a terminal's Ctrl-C or a batch system: every process
            os.killpg(os.getpgid(0), int(signum))
        else:
            os.kill(os.getpid(), int(signum))
    return result
setattr(module, function, wrapped)
sys.argv = ["hpa-pipe", *sys.argv[5:]]
from hpa_pipeline.cli import main
main()
"""


def hpa_pipe_signalled_at(module: str, function: str, count: int, signum: int, args: list[str]) -> list[str]:
    """The command line of ``hpa-pipe ARGS`` that gets ``signum`` once ``module.function`` has
    returned ``count`` times (looked up by name where it is called, so the wrapper is seen)."""
    import sys

    return [sys.executable, "-c", _SIGNAL_AT_CALL, module, function, str(count), str(int(signum)), *args]


def synthetic_stores(folder: Path, synth, spec, test: bool = True, workers: int | None = None):
    """A synthetic dataset under ``folder/data`` and its stores ``folder/train.zarr`` (and
    ``folder/test.zarr`` when ``test``), built by ingest with one layout: the one way the
    suite makes the stores it trains and reads on. Each caller says how its data differ
    (``synth``: samples, sizes, labels, planted duplicates; ``spec``: level, chunk, codec, dtype).
    Returns the dataset and the two store paths (the test path even when not built)."""
    from hpa_pipeline.prep.ingest import ingest
    from hpa_pipeline.prep.synth import make_dataset

    folder = Path(folder)
    d = make_dataset(folder / "data", synth, workers=2)
    train, test_store = folder / "train.zarr", folder / "test.zarr"
    assert ingest(d.train_archive, d.train_csv, train, spec, workers=workers).exit_code == 0
    if test:
        assert ingest(d.test_archive, d.sample_submission, test_store, spec, workers=workers).exit_code == 0
    return d, train, test_store


def with_sample_3_damaged(store: Path, tmp_path: Path, level: int) -> Path:
    """A copy of ``store`` whose sample 3 has a flipped byte inside its shard of ``level``."""
    import shutil

    damaged = Path(tmp_path) / "damaged.zarr"
    shutil.copytree(store, damaged)
    shard = damaged / "images" / str(level) / "c" / "3" / "0" / "0" / "0"
    data = bytearray(shard.read_bytes())
    data[len(data) // 3] ^= 0xFF
    shard.write_bytes(bytes(data))
    return damaged
