"""What the commands show while they work: bars on a terminal (a real pty), plain lines in a
log file, with rates that are true and the summary on a line of its own."""
import csv
import fcntl
import io
import json
import os
import pty
import re
import struct
import subprocess
import sys
import termios

import pytest

from hpa_pipeline.cli.progress import ProgressBar
from hpa_pipeline.common.progress import Progress


class Clock:
    """A clock the test moves: the display's timing without sleeps."""

    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def _epoch(bar, clock, label, steps, seconds_per_step=1.0, task="train", first=0):
    bar(Progress(task, first, steps, "step", label))
    for done in range(first + 1, steps + 1):
        clock.now += seconds_per_step
        bar(Progress(task, done, steps, "step", label, stats={"loss": "0.5"}))


def _log_bar(**kwargs):
    clock, out = Clock(), io.StringIO()
    return ProgressBar("train", "valid", unit="step", file=out, interactive=False, clock=clock, **kwargs), clock, out


def test_a_log_file_gets_a_line_every_interval_and_one_when_a_part_ends():
    bar, clock, out = _log_bar(interval=3.0)
    _epoch(bar, clock, "epoch 1/2", 10)
    bar(Progress("train", message="epoch 1: valid macro F1 0.3"))
    _epoch(bar, clock, "epoch 1/2", 2, task="valid")
    bar.close()
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    assert lines == ["train epoch 1/2: 3/10 steps (30%), 1.0 step/s, loss=0.5 [3s]",
                     "train epoch 1/2: 6/10 steps (60%), 1.0 step/s, loss=0.5 [6s]",
                     "train epoch 1/2: 9/10 steps (90%), 1.0 step/s, loss=0.5 [9s]",
                     "train epoch 1/2: 10/10 steps (100%), 1.0 step/s, loss=0.5 [10s]",
                     "epoch 1: valid macro F1 0.3",
                     "valid epoch 1/2: 2/2 steps (100%), 1.0 step/s, loss=0.5 [2s]"]


def test_a_resumed_part_counts_its_rate_from_what_it_did_itself():
    bar, clock, out = _log_bar(interval=100.0)
    _epoch(bar, clock, "epoch 2/2", 10, seconds_per_step=2.0, first=6)  # 6 steps were done before
    assert out.getvalue().splitlines() == ["train epoch 2/2: 10/10 steps (100%), 0.5 step/s, loss=0.5 [8s]"]


def test_nothing_to_do_and_nothing_done_draw_nothing():
    clock, out = Clock(), io.StringIO()
    bar = ProgressBar("ingest", file=out, interactive=False, clock=clock, interval=0.0)
    bar(Progress("ingest", 0, 0))  # a resumed store with every sample done
    bar(Progress("ingest", 0, 5))  # started, nothing finished yet
    clock.now += 60
    bar(Progress("ingest", 0, 5))
    bar(Progress("decode", 10, 20, "B"))  # another task's count is not drawn
    bar.close()
    assert out.getvalue() == ""


def test_a_quiet_or_other_rank_bar_says_nothing():
    clock, out = Clock(), io.StringIO()
    bar = ProgressBar("train", file=out, interactive=False, clock=clock, interval=0.0, enabled=False)
    bar(Progress("train", message="new run in x"))
    _epoch(bar, clock, "epoch 1/1", 2)
    assert out.getvalue() == ""


def _pty_file(columns=100):
    """The two ends of a real pseudo-terminal ``columns`` wide, the slave end as a text file."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
    return master, os.fdopen(slave, "w", buffering=1, encoding="utf-8")


def _read_all(master) -> str:
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # the slave end is closed: everything was read
            break
        if not data:
            break
        chunks.append(data)
    return b"".join(chunks).decode()


def test_on_a_terminal_each_part_ends_as_a_line_and_the_summary_is_never_glued_to_it():
    master, term = _pty_file()
    clock = Clock()
    bar = ProgressBar("train", "valid", unit="step", file=term, clock=clock, delay=0.5)
    assert bar.interactive
    bar(Progress("train", message="new run in run1"))
    _epoch(bar, clock, "epoch 1/2", 4)
    _epoch(bar, clock, "epoch 1/2", 2, task="valid", seconds_per_step=0.1)  # under the delay: not drawn
    bar(Progress("train", 0, 0, "step", "epoch 2/2"))  # a part with nothing to do
    bar.close()
    print("train: summary", file=term)
    term.close()
    screen = _read_all(master)
    os.close(master)
    finished = [line.rstrip("\r").split("\r")[-1] for line in screen.split("\n")]
    assert finished[0].strip() == "new run in run1"
    assert finished[1].startswith("train epoch 1/2: 100%") and "4/4" in finished[1]
    assert finished[2].strip() == "train: summary"  # its own line
    # no empty bar ("0step [00:00, ?step/s]"); a real rate such as "36366.80step/s" is no empty bar
    assert "valid" not in screen and "0/0" not in screen and not re.search(r"(?<![\d.])0step", screen)


def test_a_finished_bar_on_a_terminal_shows_the_parts_own_elapsed_time():
    """The bar appears only after the delay, but its clock is the part's: an epoch of 17.5 s
    ends showing 00:17, not the few seconds the bar itself was on screen."""
    master, term = _pty_file()
    clock = Clock()
    bar = ProgressBar("train", unit="step", file=term, clock=clock, delay=0.5)
    _epoch(bar, clock, "epoch 1/1", 7, seconds_per_step=2.5)
    bar.close()
    term.close()
    screen = _read_all(master)
    os.close(master)
    last = [line.rstrip("\r").split("\r")[-1] for line in screen.split("\n") if "epoch" in line][-1]
    assert "7/7 [00:17<00:00" in last, last


def test_counts_take_the_plural():
    from hpa_pipeline.cli.progress import plural

    assert [plural("sample", n) for n in (0, 1, 2, 320)] == ["samples", "sample", "samples", "samples"]
    assert (plural("batch", 12), plural("step", 4)) == ("batches", "steps")


@pytest.mark.integration
def test_ingest_on_a_terminal_draws_no_empty_bar_and_ends_on_its_own_line(small_dataset, tmp_path):
    """A message written above a bar that has nothing to show yet must not draw an empty one."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 100, 0, 0))
    command = [sys.executable, "-m", "hpa_pipeline", "ingest", str(small_dataset.train_archive), "--csv",
               str(small_dataset.train_csv), "--out", str(tmp_path / "s.zarr"), "--size", "128", "--levels", "1"]
    process = subprocess.Popen(command, stdin=slave, stdout=slave, stderr=slave, close_fds=True)
    os.close(slave)
    screen = _read_all(master)
    os.close(master)
    assert process.wait(timeout=300) == 0
    assert "0sample" not in screen and "?sample/s" not in screen
    assert re.search(r"(^|\n)ingest: \d+/\d+ samples done", screen.replace("\r", "")), screen


@pytest.mark.integration
def test_train_in_a_log_file_writes_lines_and_numbers_epochs_from_one_everywhere(small_dataset, tmp_path):
    from hpa_pipeline.contract.store import StoreSpec
    from hpa_pipeline.prep.ingest import ingest

    store = tmp_path / "train.zarr"
    assert ingest(small_dataset.train_archive, small_dataset.train_csv, store,
                  StoreSpec(size=128, levels=2, chunk=64)).exit_code == 0
    run2 = tmp_path / "run"
    command = [sys.executable, "-m", "hpa_pipeline", "train", "--store", str(store), "--out", str(run2), "--arch",
               "se_resnet_tiny", "--level", "64", "--crop", "48", "--epochs", "2", "--batch-size", "8",
               "--workers", "0", "--steps-per-epoch", "2", "--weights", "none", "--device", "cpu"]
    full = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert full.returncode == 0, full.stderr
    assert "\r" not in full.stderr
    bar_lines = [line for line in full.stderr.splitlines() if line.startswith(("train epoch", "valid epoch"))]
    assert [line.split(":")[0] for line in bar_lines if line.startswith("train")] == ["train epoch 1/2",
                                                                                    "train epoch 2/2"]
    assert all("(100%)" in line for line in bar_lines)
    epochs = [int(r["epoch"]) for r in csv.DictReader((run2 / "metrics.csv").open())]
    assert epochs == [1, 2]
    best = json.loads((run2 / "thresholds.json").read_text())["epoch"]
    assert best in (1, 2) and f"at epoch {best} (best)" in (run2 / "f1_table.txt").read_text()


@pytest.mark.integration
def test_quiet_says_only_the_result_and_verbose_says_each_step(small_dataset, tmp_path):
    from click.testing import CliRunner

    from hpa_pipeline.cli import cli

    args = ["ingest", str(small_dataset.train_archive), "--csv", str(small_dataset.train_csv), "--size", "128",
            "--levels", "1"]
    quiet = CliRunner().invoke(cli, ["-q", *args, "--out", str(tmp_path / "q.zarr")])
    assert quiet.exit_code == 0, quiet.output
    assert quiet.stderr == "" and quiet.stdout.startswith("ingest: ") and quiet.stdout.count("\n") == 1
    plain = CliRunner().invoke(cli, [*args, "--out", str(tmp_path / "p.zarr")])
    assert "solid block" in plain.stderr and "DEBUG" not in plain.stderr
    verbose = CliRunner().invoke(cli, ["-v", *args, "--out", str(tmp_path / "v.zarr")])
    assert verbose.exit_code == 0, verbose.output
    assert "DEBUG hpa_pipeline.prep.ingest:" in verbose.stderr
    def timeless(text):
        return re.sub(r" in [\d.]+\s?[a-z]+", "", text)

    assert timeless(verbose.stdout) == timeless(plain.stdout.replace("p.zarr", "v.zarr"))


def test_a_part_of_unknown_total_ends_with_a_line_in_a_log():
    clock, out = Clock(), io.StringIO()
    bar = ProgressBar("classify", file=out, interactive=False, clock=clock, interval=100.0)
    bar(Progress("classify", 0, None))
    for done in (8, 16):
        clock.now += 4
        bar(Progress("classify", done, None))
    bar.close()
    assert out.getvalue().splitlines() == ["classify: 16 samples, 2.0 sample/s [8s]"]


def test_a_count_that_arrives_late_does_not_move_the_bar_back():
    bar, clock, out = _log_bar(interval=100.0)
    bar(Progress("train", 0, 4, "step", "epoch 1/1"))
    for done in (2, 1, 3, 4):  # two threads' reports, the second overtaken by the first
        clock.now += 1
        bar(Progress("train", done, 4, "step", "epoch 1/1"))
    assert out.getvalue().splitlines() == ["train epoch 1/1: 4/4 steps (100%), 1.0 step/s [4s]"]


def test_each_command_in_one_process_sets_the_log_handlers_afresh():
    """A notebook or a test calls the CLI many times in one process: -vv must not add one more
    copy of every Dask line per call, and a later plain call must stop showing them."""
    import logging

    from hpa_pipeline.cli.log import THIRD_PARTY, configure_logging

    def ours(name):
        return [h for h in logging.getLogger(name).handlers if type(h).__name__ == "_AboveBars"]

    try:
        configure_logging(2)
        configure_logging(2)
        assert all(len(ours(name)) == 1 for name in ("hpa_pipeline", *THIRD_PARTY))
        configure_logging(0)
        assert len(ours("hpa_pipeline")) == 1 and not any(ours(name) for name in THIRD_PARTY)
    finally:
        configure_logging(0)
