"""Faults while running end in one line and keep the last good state: a killed or terminated
training leaves no loader worker behind, SIGTERM is handled as Ctrl-C, a full disk and an
unwritable folder are one line each and destroy nothing already written."""
import os
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner

from hpa_pipeline.cli import cli
from hpa_pipeline.contract.store import StoreSpec
from hpa_pipeline.prep.ingest import ingest

from .helpers import hpa_pipe_signalled_at

pytestmark = pytest.mark.integration  # subprocesses, signals, mounts


@pytest.fixture(scope="module")
def stores(small_dataset, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("faults")
    spec = StoreSpec(size=128, levels=2, chunk=64)
    assert ingest(small_dataset.train_archive, small_dataset.train_csv, tmp / "train.zarr", spec).exit_code == 0
    assert ingest(small_dataset.test_archive, small_dataset.sample_submission, tmp / "test.zarr", spec).exit_code == 0
    return tmp


def _train_args(stores, out, workers="2"):
    return ["train", "--store", str(stores / "train.zarr"), "--out", str(out), "--arch", "se_resnet_tiny",
            "--level", "64", "--crop", "48", "--folds", "4", "--epochs", "3", "--batch-size", "4",
            "--workers", workers, "--device", "cpu", "--weights", "none", "--steps-per-epoch", "2"]


def _marked(mark: str) -> list[int]:
    """Live (not zombie) processes whose environment carries ``mark``: the command and its workers."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if mark.encode() not in (proc / "environ").read_bytes():
                continue
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state not in ("Z", "X"):
            found.append(int(proc.name))
    return found


def _gone(mark: str, guard_s: float = 60) -> list[int]:
    """The marked processes still alive once they have had ``guard_s`` to end (a guard against a
    hang, not a timing assertion: they are expected to be gone at once)."""
    end = time.monotonic() + guard_s
    while (alive := _marked(mark)) and time.monotonic() < end:
        time.sleep(0.1)
    return alive


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM])
def test_a_killed_or_terminated_training_leaves_no_loader_worker(stores, tmp_path, signum):
    mark = f"HPA_TEST_MARK={uuid.uuid4().hex}"
    env = {**os.environ, mark.split("=")[0]: mark.split("=")[1]}
    # signalled once the first epoch's checkpoint is written: the feed's workers are running
    command = hpa_pipe_signalled_at("hpa_pipeline.model.train", "fault_point", 1, signum,
                                    _train_args(stores, tmp_path / "run"))
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    if signum == signal.SIGKILL:
        assert result.returncode == -signal.SIGKILL
    else:  # as Ctrl-C: one line saying what was kept, status 143
        assert result.returncode == 143, result.stderr[-2000:]
        assert "interrupted" in result.stderr and "Traceback" not in result.stderr
    assert _gone(mark) == []
