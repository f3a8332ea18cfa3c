"""SIGKILL at any moment, run again: the store equals an uninterrupted run."""
import signal
import subprocess
import sys

import pytest
import zarr

from hpa_pipeline.contract.store import StoreSpec

from .helpers import assert_same_stores, dataset_with_reference, hpa_pipe_signalled_at, shards_written

pytestmark = pytest.mark.integration  # subprocesses, clusters, object stores or kills

SPEC = StoreSpec(size=256, levels=3, chunk=64)
ARRAYS = ["images/256", "images/128", "images/64", "labels", "source_shape", "source_dtype", "channel_sums", "done"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return dataset_with_reference(tmp_path_factory.mktemp("resume"), 32, 11, SPEC)


def command_line(command, d, tiff_dir, out):
    source = [str(d.train_archive)] if command == "ingest" else ["--src", str(tiff_dir)]
    return [sys.executable, "-m", "hpa_pipeline", command, *source, "--csv", str(d.train_csv), "--out", str(out),
            "--size", "256", "--levels", "3", "--chunk", "64", "--workers", "2"]


@pytest.mark.parametrize("command", ["ingest", "build-zarr"])
def test_sigkill_then_rerun_equals_an_uninterrupted_run(dataset, tmp_path, command):
    d, reference, tiff_dir = dataset
    out = tmp_path / "killed.zarr"
    args = command_line(command, d, tiff_dir, out)
    kills = []
    for writes in (2, 7, 8, 8):  # killed after this many samples written by the run: about 2, 9, 17, 25 in all
        killed = subprocess.run(hpa_pipe_signalled_at("hpa_pipeline.prep.tasks", "write_levels", writes,
                                                      signal.SIGKILL, args[3:]), capture_output=True)
        assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
        kills.append(shards_written(out, 64))
    assert kills == sorted(kills) and kills[-1] < 32, kills
    done = int(zarr.open_group(str(out), mode="r")["done"][:].sum())
    assert done < 32  # the killed runs left work to do
    final = subprocess.run(args, capture_output=True, text=True)
    assert final.returncode == 0, final.stderr[-2000:]
    assert "32/32 samples done" in final.stdout
    assert_same_stores(reference, out, ARRAYS, statistics=True)
    assert not list(out.rglob("*.partial"))
