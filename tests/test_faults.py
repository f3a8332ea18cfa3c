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


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_to_the_process_group_prints_one_line_not_worker_tracebacks(stores, tmp_path, signum):
    """Ctrl-C in a terminal and a batch system's stop reach the loader workers too: they leave
    it to the training process, which says what it kept in one line."""
    env = {**os.environ, "HPA_TEST_SIGNAL_GROUP": "1"}
    command = hpa_pipe_signalled_at("hpa_pipeline.model.train", "fault_point", 1, signum,
                                    _train_args(stores, tmp_path / "run"))
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600, start_new_session=True)
    assert result.returncode == {signal.SIGINT: 130, signal.SIGTERM: 143}[signum], result.stderr[-2000:]
    assert "Traceback" not in result.stderr and "KeyboardInterrupt" not in result.stderr, result.stderr[-3000:]
    assert result.stderr.strip().splitlines()[-1].startswith("interrupted")


@pytest.fixture
def small_disk(tmp_path):
    """A real tmpfs of 256 MiB at ``tmp_path/disk`` (root only; skipped elsewhere); the test fills it."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256m", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


def _fill(disk: Path, leave: int = 0) -> Path:
    """Fill ``disk`` until about ``leave`` bytes are free (0: not a page is left); returns the
    filler file to delete."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        for block in (1 << 16, 1 << 12, 1):
            try:
                while os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize > leave or not leave:
                    os.write(fd, b"\0" * block)
            except OSError:
                pass
    finally:
        os.close(fd)
    return filler


def test_a_full_disk_stops_ingest_with_one_line_and_the_rerun_finishes(small_dataset, small_disk):
    out = small_disk / "s.zarr"
    args = ["ingest", str(small_dataset.train_archive), "--csv", str(small_dataset.train_csv), "--out", str(out),
            "--size", "128", "--levels", "2", "--chunk", "64", "--workers", "1"]
    filler = _fill(small_disk, leave=300_000)  # room for the store's metadata and a few samples
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1, result.output
    assert "no space left on the device" in result.output and "Traceback" not in result.output
    assert "samples are saved whole" in result.output or "free space and run the same command again" in result.output
    filler.unlink()
    again = CliRunner().invoke(cli, args)
    assert again.exit_code == 0 and "12/12 samples done" in again.output, again.output
    assert CliRunner().invoke(cli, ["verify", str(out)]).exit_code == 0
    assert not list(out.rglob("*.partial"))


def test_a_full_disk_keeps_the_earlier_submission(stores, small_disk, tmp_path):
    run = tmp_path / "run"
    assert CliRunner().invoke(cli, _train_args(stores, run, workers="0")[:-2] + ["--steps-per-epoch", "1",
                                                                               "--epochs", "1"]).exit_code == 0
    submission = small_disk / "submission.csv"
    submission.write_text("Id,Predicted\nearlier,0\n")
    _fill(small_disk)
    result = CliRunner().invoke(cli, ["predict", "--store", str(stores / "test.zarr"), "--run", str(run),
                                      "--out", str(submission), "--workers", "0", "--device", "cpu"])
    assert result.exit_code == 1 and "no space left on the device" in result.output, result.output
    assert "Traceback" not in result.output
    assert submission.read_text() == "Id,Predicted\nearlier,0\n"
    assert [p.name for p in small_disk.iterdir()] == ["submission.csv", "filler"] or \
        sorted(p.name for p in small_disk.iterdir()) == ["filler", "submission.csv"]


def test_a_full_disk_while_checkpointing_keeps_the_last_checkpoint(stores, small_disk):
    import torch

    run = small_disk / "run"
    args = _train_args(stores, run, workers="0")
    first = CliRunner().invoke(cli, args[:args.index("--epochs")] + ["--epochs", "1"] + args[args.index("--epochs") + 2:])
    assert first.exit_code == 0, first.output
    last = (run / "checkpoints" / "last.pt").read_bytes()
    _fill(small_disk)
    result = CliRunner().invoke(cli, args + ["--resume"])
    assert result.exit_code == 1 and "no space left on the device" in result.output, result.output
    assert "Traceback" not in result.output
    assert (run / "checkpoints" / "last.pt").read_bytes() == last
    assert torch.load(run / "checkpoints" / "last.pt", weights_only=True)["epoch"] == 0
    assert not list(run.rglob("*.partial"))
