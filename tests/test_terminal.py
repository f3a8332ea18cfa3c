"""What the terminal says is true: refusals that used to be silently wrong, suggestions that
work, and messages that promise only what a rerun does."""
import signal
import subprocess

import pytest
from click.testing import CliRunner

from hpa_pipeline.cli import cli
from hpa_pipeline.contract.store import StoreSpec
from hpa_pipeline.prep.ingest import ingest

from .helpers import hpa_pipe_signalled_at


@pytest.fixture(scope="module")
def store(small_dataset, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("terminal")
    assert ingest(small_dataset.train_archive, small_dataset.train_csv, tmp / "train.zarr",
                  StoreSpec(size=128, levels=2, chunk=64)).exit_code == 0
    assert ingest(small_dataset.test_archive, small_dataset.sample_submission, tmp / "test.zarr",
                  StoreSpec(size=128, levels=2, chunk=64)).exit_code == 0
    return tmp


def _train(store, out, *extra):
    return ["train", "--store", str(store / "train.zarr"), "--out", str(out), "--arch", "se_resnet_tiny", "--level",
            "64", "--crop", "48", "--folds", "3", "--epochs", "1", "--batch-size", "8", "--workers", "0",
            "--steps-per-epoch", "1", "--weights", "none", "--device", "cpu", *extra]


def test_another_tools_option_name_suggests_ours():
    result = CliRunner().invoke(cli, ["train", "--learning-rate", "3", "--store", "x", "--out", "y"])
    assert result.exit_code == 2 and "Did you mean '--lr'?" in result.output


def test_a_cluster_name_without_a_recipe_is_a_usage_error(tmp_path):
    result = CliRunner().invoke(cli, ["build-zarr", "--src", str(tmp_path), "--csv", __file__, "--out",
                                      str(tmp_path / "s"), "--cluster", "slurm"])
    assert result.exit_code == 2 and "pipelines/cluster-slurm.yaml" in result.output


@pytest.mark.integration
def test_a_run_goes_only_into_a_new_or_run_folder_and_a_finished_resume_says_so(store, tmp_path):
    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "paper.tex").write_text("keep")
    result = CliRunner().invoke(cli, _train(store, foreign))
    assert result.exit_code == 1 and "is not empty and not a run folder (it holds paper.tex)" in result.output
    run = tmp_path / "run"
    assert CliRunner().invoke(cli, _train(store, run)).exit_code == 0
    assert "with the thresholds of thresholds.json" in (run / "f1_table.txt").read_text()
    again = CliRunner().invoke(cli, ["train", "--out", str(run), "--resume", "--workers", "0"])
    assert again.exit_code == 0 and "is finished (1/1 epochs); nothing to train" in again.output
    assert f"--init-from {run}" in again.output
    more = CliRunner().invoke(cli, ["train", "--out", str(run), "--resume", "--epochs", "3"])
    assert more.exit_code == 1 and "--init-from" in more.output


@pytest.mark.integration
def test_predict_refuses_a_store_as_run_and_a_run_given_twice(store, tmp_path):
    run = tmp_path / "run"
    assert CliRunner().invoke(cli, _train(store, run)).exit_code == 0
    base = ["predict", "--store", str(store / "test.zarr"), "--out", str(tmp_path / "s.csv"), "--workers", "0"]
    as_run = CliRunner().invoke(cli, base + ["--run", str(store / "train.zarr")])
    assert as_run.exit_code == 1 and "is a dataset store, not a run folder" in as_run.output
    twice = CliRunner().invoke(cli, base + ["--run", str(run), "--run", str(run)])
    assert twice.exit_code == 1 and "is given twice" in twice.output


@pytest.mark.integration
def test_ctrl_c_of_synth_does_not_promise_a_resume(tmp_path):
    result = subprocess.run(hpa_pipe_signalled_at("hpa_pipeline.prep.synth.dataset", "render_members", 2,
                                                  signal.SIGINT, ["synth", "--out", str(tmp_path / "d"), "--n-train",
                                                                  "6", "--n-test", "1", "--image-sizes", "256",
                                                                  "--workers", "1"]),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 130, result.stderr[-2000:]
    assert "interrupted: nothing was left half-written" in result.stderr and "resume" not in result.stderr
