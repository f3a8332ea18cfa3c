import subprocess
import sys

import pytest
from click.testing import CliRunner

from hpa_pipeline import __version__
from hpa_pipeline.cli import cli


def test_help_lists_every_stage_with_one_line():
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    commands = result.output.split("Commands:")[1].strip().splitlines()
    names = [line.split()[0] for line in commands]
    assert names == ["synth", "extract", "build-zarr", "ingest", "inspect", "verify", "duplicates", "export-ngff", "train",
                     "thresholds", "predict", "evaluate", "export", "classify"]  # in stage order
    assert all(len(line.split()) > 1 and not line.endswith("...") for line in commands)  # whole one-liners


def test_version():
    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0 and __version__ in result.output


@pytest.mark.integration
def test_python_dash_m_entry_point_works_without_make():
    out = subprocess.run([sys.executable, "-m", "hpa_pipeline", "--help"], capture_output=True, text=True, check=True)
    assert "synth" in out.stdout


@pytest.mark.integration
def test_numpys_blas_threads_are_one_unless_the_user_says_otherwise():
    """The CLI keeps NumPy's OpenBLAS to one thread (its idle pool spun ~0.2 CPU-s a command
    beside ingest's decoder), set before NumPy loads; a user's own setting wins."""
    import os

    probe = ("import sys, os, hpa_pipeline.cli; assert 'numpy' not in sys.modules; import numpy; "
             "print(os.environ['OPENBLAS_NUM_THREADS'])")
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
    ours = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, env=env)
    theirs = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                            env={**env, "OPENBLAS_NUM_THREADS": "4"})
    assert ours.stdout.strip() == "1" and theirs.stdout.strip() == "4"


def test_console_script_is_installed():
    from importlib.metadata import entry_points

    scripts = {ep.name: ep.value for ep in entry_points(group="console_scripts")}
    assert scripts["hpa-pipe"] == "hpa_pipeline.cli:main"


def test_recipe_sets_option_defaults_and_command_line_wins(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("synth:\n  n_train: 3\n  n_test: 2\n  image_sizes: '64'\n  workers: 1\n")
    out = tmp_path / "d"
    result = CliRunner().invoke(cli, ["--config", str(recipe), "synth", "--out", str(out), "--n-test", "1"])
    assert result.exit_code == 0, result.output
    assert "wrote 3 train and 1 test samples" in result.output


def test_bad_recipe_is_a_clear_error(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("- just a list\n")
    result = CliRunner().invoke(cli, ["--config", str(recipe), "synth", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "maps command names" in result.output


def test_synth_rejects_bad_sizes(tmp_path):
    result = CliRunner().invoke(cli, ["synth", "--out", str(tmp_path), "--image-sizes", "250"])
    assert result.exit_code == 2 and "multiples of 4" in result.output


def test_every_option_recipe_names_real_options_of_its_commands():
    """pipelines/*.yaml (the --config recipes, not the cluster-*.yaml ones): each key is an option
    of its command, so a typo in a recipe cannot be silently ignored."""
    from pathlib import Path

    import yaml

    recipes = [p for p in (Path(__file__).resolve().parents[1] / "pipelines").glob("*.yaml")
               if not p.name.startswith("cluster-")]
    assert {p.name for p in recipes} >= {"demo.yaml", "ingest.yaml", "train.yaml"}
    for path in recipes:
        for command, options in yaml.safe_load(path.read_text()).items():
            known = {p.name for p in cli.commands[command.replace("_", "-")].params}
            unknown = {k.replace("-", "_") for k in options} - known
            assert not unknown, f"{path.name}: {command} has no options {unknown}"


def with_cores(monkeypatch, cores: int) -> None:
    """The machine seen as having ``cores`` usable cores (the host's count and the affinity)."""
    import os

    monkeypatch.setattr(os, "cpu_count", lambda: cores)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)), raising=False)


def test_ingest_leaves_a_core_to_the_decoder_by_default(tmp_path, monkeypatch):
    """ingest's default --workers is all cores but one (the decoder keeps one busy: measured in
    benchmarks/bench_decoders.py); build-zarr takes all cores; 1 runs without Dask."""
    from hpa_pipeline.prep.ingest import ingest_workers
    from hpa_pipeline.prep.synth import SynthSpec, make_dataset

    for cores, expected in ((1, 1), (2, 1), (16, 15)):
        with_cores(monkeypatch, cores)
        assert ingest_workers() == expected
    d = make_dataset(tmp_path / "d", SynthSpec(n_train=2, n_test=1, image_sizes=(128,)), workers=1)
    args = ["--csv", str(d.train_csv), "--size", "64", "--levels", "1", "--chunk", "64"]
    with_cores(monkeypatch, 3)
    result = CliRunner().invoke(cli, ["ingest", str(d.train_archive), "--out", str(tmp_path / "a.zarr"), *args])
    assert result.exit_code == 0, result.output
    assert "dask: 1 worker(s), 2 thread(s) in this process" in result.output
    assert "inproc://" not in result.output and "dashboard" not in result.output
    with_cores(monkeypatch, 2)
    result = CliRunner().invoke(cli, ["ingest", str(d.train_archive), "--out", str(tmp_path / "b.zarr"), *args])
    assert result.exit_code == 0 and "dask: not started" in result.output, result.output
    assert "--workers 1" not in result.output  # the user gave no --workers
