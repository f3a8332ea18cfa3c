"""SIGKILL at any moment, run again: the store equals an uninterrupted run."""
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import zarr

from hpa_pipeline.extract import extract_archives
from hpa_pipeline.ingest import ingest
from hpa_pipeline.store import StoreSpec
from hpa_pipeline.synth import SynthSpec, make_dataset

SPEC = StoreSpec(size=256, levels=3, chunk=128)
ARRAYS = ["images/256", "images/128", "images/64", "labels", "source_shape", "source_dtype", "channel_sums", "done"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("resume")
    d = make_dataset(tmp / "data", SynthSpec(n_train=32, n_test=1, image_sizes=(512, 768), seed=11), workers=2)
    reference = tmp / "reference.zarr"
    assert ingest(d.train_archive, d.train_csv, reference, SPEC, workers=2).exit_code == 0
    extract_archives([d.train_archive], tmp / "tiff")
    return d, reference, tmp / "tiff"


def command_line(command, d, tiff_dir, out):
    source = [str(d.train_archive)] if command == "ingest" else ["--src", str(tiff_dir)]
    return [sys.executable, "-m", "hpa_pipeline", command, *source, "--csv", str(d.train_csv), "--out", str(out),
            "--size", "256", "--levels", "3", "--chunk", "128", "--workers", "2"]


def shards_written(store) -> int:
    level = store / "images" / "64" / "c"  # the last level a task writes
    return sum(1 for _ in level.glob("*/0/0/0")) if level.exists() else 0


@pytest.mark.parametrize("command", ["ingest", "build-zarr"])
def test_sigkill_then_rerun_equals_an_uninterrupted_run(dataset, tmp_path, command):
    d, reference, tiff_dir = dataset
    out = tmp_path / "killed.zarr"
    args = command_line(command, d, tiff_dir, out)
    kills = []
    for threshold in (2, 9, 17, 25):  # kill once this many samples have shards: at different points
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while proc.poll() is None and shards_written(out) < threshold:
            time.sleep(0.01)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            kills.append(shards_written(out))
        proc.wait()
    assert kills and all(k < 32 for k in kills), f"no kill landed mid-run: {kills}"
    done = int(zarr.open_group(str(out), mode="r")["done"][:].sum())
    assert done < 32  # the killed runs left work to do
    final = subprocess.run(args, capture_output=True, text=True)
    assert final.returncode == 0, final.stderr[-2000:]
    assert "32/32 samples done" in final.stdout
    a, b = zarr.open_group(str(reference), mode="r"), zarr.open_group(str(out), mode="r")
    for name in ARRAYS:
        assert np.array_equal(a[name][:], b[name][:]), name
    assert a.attrs["hpa"]["statistics"] == b.attrs["hpa"]["statistics"]
    assert not list(out.rglob("*.partial"))
