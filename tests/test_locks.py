"""One writer at a time: a second command on a store, run folder or extract target fails at once
naming the holder; a killed holder's lock is taken over; readers and writers exclude each other.

The first command is a real ``hpa-pipe`` process stopped (SIGSTOP) at a fault point the test
controls, so the second always starts while the first holds its lock."""
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from hpa_pipeline.cli import cli
from hpa_pipeline.contract.locks import Busy, locked, store_lock_path, store_locked

from .helpers import hpa_pipe_signalled_at

pytestmark = pytest.mark.integration  # subprocesses and signals

STORE_ARGS = ["--size", "128", "--levels", "2", "--chunk", "64", "--workers", "1"]


def _stopped(command: list[str]) -> subprocess.Popen:
    """Start ``command`` and wait until it has stopped itself (state T in /proc)."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while True:
        try:
            state = Path(f"/proc/{process.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            state = "gone"
        if state == "T":
            return process
        if process.poll() is not None:
            raise AssertionError(f"the first command ended before its fault point: {process.communicate()}")
        os.sched_yield()


def _ingest(small_dataset, out):
    return ["ingest", str(small_dataset.train_archive), "--csv", str(small_dataset.train_csv), "--out", str(out),
            *STORE_ARGS]


def test_a_second_ingest_on_one_store_fails_at_once_naming_the_first(small_dataset, tmp_path):
    out = tmp_path / "s.zarr"
    first = _stopped(hpa_pipe_signalled_at("hpa_pipeline.prep.tasks", "write_levels", 1, signal.SIGSTOP,
                                           _ingest(small_dataset, out)))
    try:
        second = CliRunner().invoke(cli, _ingest(small_dataset, out))
        assert second.exit_code == 1 and "Traceback" not in second.output
        assert f"store {out} is in use by pid {first.pid}" in second.output and "hpa-pipe ingest" in second.output
        reader = CliRunner().invoke(cli, ["verify", str(out)])  # a reader waits its turn too
        assert reader.exit_code == 1 and f"pid {first.pid}" in reader.output
    finally:
        first.send_signal(signal.SIGCONT)
        stdout, stderr = first.communicate()
    assert first.returncode == 0, stderr[-2000:]
    assert "12/12 samples done" in stdout
    assert CliRunner().invoke(cli, ["verify", str(out)]).exit_code == 0
    assert store_lock_path(out).read_text() == ""  # released: no holder recorded


def test_a_killed_writers_lock_is_taken_over_and_the_store_finished(small_dataset, tmp_path):
    out = tmp_path / "s.zarr"
    first = _stopped(hpa_pipe_signalled_at("hpa_pipeline.prep.tasks", "write_levels", 3, signal.SIGSTOP,
                                           _ingest(small_dataset, out)))
    first.kill()
    first.communicate()
    assert str(first.pid) in store_lock_path(out).read_text()  # the killed command's record is left
    again = CliRunner().invoke(cli, _ingest(small_dataset, out))
    assert again.exit_code == 0, again.output
    assert "12/12 samples done" in again.output


def test_two_trainings_on_one_run_folder_and_train_during_ingest_are_refused(small_dataset, tmp_path):
    store, run = tmp_path / "s.zarr", tmp_path / "run"
    assert CliRunner().invoke(cli, _ingest(small_dataset, store)).exit_code == 0
    train = ["train", "--store", str(store), "--out", str(run), "--arch", "se_resnet_tiny", "--epochs", "1", "--crop", "48", "--folds", "4",
             "--level", "64", "--batch-size", "4", "--workers", "0", "--device", "cpu", "--weights", "none"]
    with store_locked(run, what="run folder"):  # a training writing this run folder (this process)
        result = CliRunner().invoke(cli, train)
        assert result.exit_code == 1 and f"run folder {run} is in use by pid {os.getpid()}" in result.output
    with store_locked(store):  # an ingest writing the train store
        result = CliRunner().invoke(cli, train)
        assert result.exit_code == 1 and f"store {store} is in use by pid {os.getpid()}" in result.output
    assert not (run / "metrics.csv").exists()


def test_two_extracts_into_one_folder(small_dataset, tmp_path):
    out = tmp_path / "tiff"
    first = _stopped(hpa_pipe_signalled_at("hpa_pipeline.prep.extract", "write_bytes", 1, signal.SIGSTOP,
                                           ["extract", str(small_dataset.train_archive), "--out", str(out)]))
    try:
        second = CliRunner().invoke(cli, ["extract", str(small_dataset.train_archive), "--out", str(out)])
        assert second.exit_code == 1 and f"extract target {out} is in use by pid {first.pid}" in second.output
    finally:
        first.send_signal(signal.SIGCONT)
        first.communicate()
    assert first.returncode == 0


def test_readers_share_and_writers_exclude(tmp_path):
    lock = tmp_path / ".lock"
    with locked(lock, "a", shared=True), locked(lock, "a", shared=True):
        with pytest.raises(Busy, match="a reader"):
            with locked(lock, "a"):
                pass
    with locked(lock, "a"):
        with pytest.raises(Busy, match=f"pid {os.getpid()}"):
            with locked(lock, "a", shared=True):
                pass
    assert sys.platform.startswith("linux")
