"""No user mistake ends in a traceback: every command, given an empty, a missing and a
malformed input, exits 1 or 2 with a message; options are checked before any work starts."""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from hpa_pipeline.cli import cli

from .helpers import hpa_pipe_signalled_at


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bad")
    (tmp / "empty.csv").write_text("")
    (tmp / "header.csv").write_text("Id,Target\n")
    (tmp / "garbage.csv").write_bytes(b"\x00\xff\xfe binary \x00 junk\n\x01,\x02,\x03\n")
    (tmp / "empty.7z").write_bytes(b"")
    (tmp / "garbage.7z").write_text("this is not an archive\n")
    (tmp / "empty_dir").mkdir()
    (tmp / "junk_store").mkdir()
    (tmp / "junk_store" / "zarr.json").write_text("{not json")
    (tmp / "junk_run").mkdir()
    (tmp / "junk_run" / "config.yaml").write_text(": : :\n")
    (tmp / "ok.csv").write_text("Id,Target\na,0\n")
    return tmp


def walk(tmp):
    """(command line, what it is) for each command and each kind of bad input."""
    m = str(tmp / "missing")
    out = str(tmp / "out")
    runs = []
    for kind, csv in (("empty", "empty.csv"), ("missing", "missing.csv"), ("malformed", "garbage.csv"),
                      ("header only", "header.csv")):
        c = str(tmp / csv)
        runs += [
            (["synth", "--out", out + "_synth", "--labels-csv", c, "--n-train", "1", "--n-test", "1"], f"synth {kind}"),
            (["build-zarr", "--src", str(tmp / "empty_dir"), "--csv", c, "--out", out + "_b"], f"build-zarr {kind} csv"),
            (["ingest", str(tmp / "garbage.7z"), "--csv", c, "--out", out + "_i"], f"ingest {kind} csv"),
            (["evaluate", "--submission", c, "--labels", str(tmp / "ok.csv")], f"evaluate {kind} submission"),
            (["evaluate", "--submission", str(tmp / "ok.csv"), "--labels", c], f"evaluate {kind} labels"),
        ]
    for kind, archive in (("empty", "empty.7z"), ("missing", "missing.7z"), ("malformed", "garbage.7z")):
        a = str(tmp / archive)
        runs += [(["extract", a, "--out", out + "_x"], f"extract {kind}"),
                 (["ingest", a, "--csv", str(tmp / "ok.csv"), "--out", out + "_i2"], f"ingest {kind} archive")]
    for kind, store in (("empty", "empty_dir"), ("missing", "missing"), ("malformed", "junk_store")):
        s = str(tmp / store) if store != "missing" else m
        runs += [(["inspect", s], f"inspect {kind}"),
                 (["export-ngff", s, "--ids", "a", "--out", out + "_n"], f"export-ngff {kind}"),
                 (["train", "--store", s, "--out", out + "_t", "--workers", "0"], f"train {kind} store"),
                 (["predict", "--store", s, "--run", str(tmp / "junk_run"), "--out", out + ".csv"], f"predict {kind}")]
    for kind, run in (("empty", "empty_dir"), ("missing", "missing"), ("malformed", "junk_run")):
        runs.append((["predict", "--store", m, "--run", str(tmp / run), "--out", out + ".csv"], f"predict {kind} run"))
    return runs


def test_every_command_fails_cleanly_on_empty_missing_and_malformed_input(inputs):
    failures = []
    for args, what in walk(inputs):
        result = CliRunner().invoke(cli, args)
        clean = result.exit_code in (1, 2) and (result.exception is None or isinstance(result.exception, SystemExit))
        if not clean or "Traceback" in result.output or not result.output.strip():
            failures.append(f"{what}: exit {result.exit_code}, {type(result.exception).__name__}: "
                            f"{result.output.strip()[-300:]}")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("args, message", [
    (["--size", "301", "--levels", "2"], "cannot be halved"),
    (["--size", "300"], "--chunk 256 does not divide level 300 (levels 300); use --size 256 or 512, or --chunk 150"),
    (["--chunk", "100"], "--chunk 100 does not divide level 1024 (levels 1024, 512, 256); use --size 800 or 1200, "
                         "or --chunk 64"),
    (["--levels", "4"], "--levels 4 makes level 128 smaller than one --chunk 256 chunk (levels 1024, 512, 256, "
                        "128); use --levels 3, or --chunk 128"),
    (["--size", "512", "--levels", "3"], "use --levels 2, or --chunk 128"),
    (["--chunk", "0"], "--chunk must be a positive"),
    (["--clevel", "99"], "--clevel must be 0-9"),
    (["--size", "0"], "--size must be a positive"),
    (["--size", "-256"], "--size must be a positive"),
    (["--levels", "0"], "--levels at least 1"),
])
def test_store_options_are_checked_before_anything_is_created(inputs, tmp_path, args, message):
    out = tmp_path / "s.zarr"
    result = CliRunner().invoke(cli, ["build-zarr", "--src", str(inputs / "empty_dir"), "--csv", str(inputs / "ok.csv"),
                                      "--out", str(out), *args])
    assert result.exit_code == 2 and message in result.output, result.output
    assert not out.exists()


@pytest.mark.parametrize("size, chunk, levels", [(1024, 256, [1024, 512, 256]), (512, 256, [512, 256]),
                                                 (256, 256, [256]), (128, 256, [128]), (2048, 256, [2048, 1024, 512]),
                                                 (256, 64, [256, 128, 64])])
def test_without_levels_a_store_gets_as_many_as_stay_one_chunk_at_most_three(size, chunk, levels):
    from hpa_pipeline.contract.spec import StoreSpec

    assert StoreSpec(size=size, chunk=chunk).sizes == levels


def test_build_zarr_refuses_a_folder_without_any_image_before_making_a_store(inputs, tmp_path):
    src = tmp_path / "wrong"
    src.mkdir()
    (src / "notes.txt").write_text("x")
    (src / "scan_001.bmp").write_bytes(b"BM")
    out = tmp_path / "s.zarr"
    result = CliRunner().invoke(cli, ["build-zarr", "--src", str(src), "--csv", str(inputs / "ok.csv"), "--out",
                                      str(out)])
    assert result.exit_code == 1 and f"--src {src}: no <id>_<filter> image" in result.output
    assert "2 other files, e.g. notes.txt" in result.output
    assert not out.exists()


def test_a_folder_holding_only_a_first_zarr_json_is_resumable(small_store_inputs):
    tiff, csv, tmp = small_store_inputs
    out = tmp / "killed.zarr"
    out.mkdir()
    (out / "zarr.json").write_text(json.dumps({"zarr_format": 3, "node_type": "group", "attributes": {}}))
    result = CliRunner().invoke(cli, ["build-zarr", "--src", str(tiff), "--csv", str(csv), "--out", str(out),
                                      "--size", "64", "--levels", "1", "--chunk", "64", "--workers", "1"])
    assert result.exit_code == 0, result.output


def test_a_non_empty_folder_that_is_not_a_store_is_refused(small_store_inputs):
    tiff, csv, tmp = small_store_inputs
    out = tmp / "photos"
    out.mkdir()
    (out / "holiday.jpg").write_bytes(b"x")
    result = CliRunner().invoke(cli, ["build-zarr", "--src", str(tiff), "--csv", str(csv), "--out", str(out),
                                      "--size", "64", "--levels", "1", "--chunk", "64"])
    assert result.exit_code == 1 and "is not empty and is not an hpa-pipeline store" in result.output
    assert sorted(p.name for p in out.iterdir()) == ["holiday.jpg"]


@pytest.mark.parametrize("command", ["build-zarr", "ingest"])
@pytest.mark.parametrize("where, message", [
    ("notes.txt", "{out} is a file, not a store folder"),
    ("notes.txt/store.zarr", "{out}: cannot write a store there"),  # no folder can be made under a file
])
def test_an_out_that_is_a_file_or_under_one_is_refused_naming_it(small_store_inputs, command, where, message):
    tiff, csv, tmp = small_store_inputs
    (tmp / "notes.txt").write_text("keep me")
    out = tmp / where
    source = ["--src", str(tiff)] if command == "build-zarr" else [str(tmp / "data" / "train_full_size.7z")]
    result = CliRunner().invoke(cli, [command, *source, "--csv", str(csv), "--out", str(out),
                                      "--size", "64", "--levels", "1", "--chunk", "64", "--workers", "1"])
    assert result.exit_code == 1 and message.format(out=out) in result.output, result.output
    assert (tmp / "notes.txt").read_text() == "keep me"


@pytest.mark.parametrize("command", ["ingest", "extract"])
def test_a_folder_given_as_the_archive_points_to_build_zarr(small_store_inputs, command):
    tiff, csv, tmp = small_store_inputs
    more = ["--csv", str(csv), "--out", str(tmp / "f.zarr")] if command == "ingest" else ["--out", str(tmp / "f")]
    result = CliRunner().invoke(cli, [command, str(tiff), *more])
    assert result.exit_code == 1, result.output
    assert f"{tiff} is a folder, not an archive; for a folder of <id>_<filter> images use build-zarr --src" \
        in result.output


def test_rerunning_with_other_layout_options_names_both_values(small_store_inputs):
    tiff, csv, tmp = small_store_inputs
    out = tmp / "layout.zarr"
    base = ["build-zarr", "--src", str(tiff), "--csv", str(csv), "--out", str(out), "--size", "64", "--levels", "1"]
    assert CliRunner().invoke(cli, base + ["--chunk", "64"]).exit_code == 0
    result = CliRunner().invoke(cli, base + ["--chunk", "32", "--codec", "none"])
    assert result.exit_code == 1
    assert "--chunk 64 (stored) vs 32 (asked)" in result.output and "--codec zstd (stored) vs none (asked)" in result.output


@pytest.fixture(scope="module")
def small_store_inputs(tmp_path_factory):
    from hpa_pipeline.prep.extract import extract_archives
    from hpa_pipeline.prep.synth import SynthSpec, make_dataset

    tmp = tmp_path_factory.mktemp("small")
    d = make_dataset(tmp / "data", SynthSpec(n_train=2, n_test=1, image_sizes=(128,), seed=1), workers=1)
    extract_archives([d.train_archive], tmp / "tiff")
    return tmp / "tiff", d.train_csv, tmp


@pytest.mark.parametrize("section, key, message", [
    ("train", "learning_rate", "unknown option 'learning_rate'; did you mean 'lr'"),
    ("train", "epoch", "unknown option 'epoch'; did you mean 'epochs'"),
    ("ingest", "levells", "did you mean 'levels'"),
    ("trian", "lr", "unknown command 'trian'; did you mean 'train'"),
])
def test_recipe_typos_are_errors_naming_the_nearest_name(tmp_path, section, key, message):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"{section}:\n  {key}: 1\n")
    result = CliRunner().invoke(cli, ["--config", str(recipe), "evaluate", "--help"])
    assert result.exit_code == 2 and message in result.output and str(recipe) in result.output, result.output


def test_config_may_follow_the_command_name(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("synth:\n  n_train: 2\n  n_test: 1\n  image_sizes: '64'\n  workers: 1\n")
    result = CliRunner().invoke(cli, ["synth", "--config", str(recipe), "--out", str(tmp_path / "d")])
    assert result.exit_code == 0, result.output
    assert "wrote 2 train and 1 test samples" in result.output


@pytest.mark.parametrize("option, value", [("--amp", "bf61"), ("--backend", "keras"), ("--schedule", "step"),
                                           ("--decode", "tpu"), ("--head", "three-layer")])
def test_options_with_a_fixed_set_of_values_are_choices(tmp_path, option, value):
    result = CliRunner().invoke(cli, ["train", "--store", str(tmp_path), "--out", str(tmp_path / "r"), option, value])
    assert result.exit_code == 2 and "Invalid value" in result.output and value in result.output


@pytest.mark.parametrize("option, value, says", [("--arch", "resnet18", "nor timm:NAME"),
                                                 ("--loss", "mse", "one of bce, focal, lovasz, hard")])
def test_names_built_from_parts_are_checked_as_usage_errors(tmp_path, option, value, says):
    """--arch takes the SENets or timm:NAME, --loss terms joined by +: not fixed lists, but
    a wrong value is the same usage error, naming it."""
    result = CliRunner().invoke(cli, ["train", "--store", str(tmp_path), "--out", str(tmp_path / "r"), option, value])
    assert result.exit_code == 2 and value in result.output and says in result.output, result.output


@pytest.mark.parametrize("device, message", [("gpu", "--device must be auto, cpu, cuda or cuda:N"),
                                             ("cuda", "no CUDA GPU is available")])
def test_devices_are_checked(device, message, tmp_path):
    from hpa_pipeline.model.distributed import pick_device

    if device == "cuda":
        import torch

        if torch.cuda.is_available():
            pytest.skip("this machine has a GPU")
        with pytest.raises(ValueError, match=message):
            pick_device(device)
    else:
        result = CliRunner().invoke(cli, ["train", "--store", str(tmp_path), "--out", str(tmp_path / "r"),
                                          "--device", device])
        assert result.exit_code == 2 and message in result.output


def test_predict_checks_its_output_folder_before_any_work(tmp_path):
    result = CliRunner().invoke(cli, ["predict", "--store", str(tmp_path), "--run", str(tmp_path),
                                      "--out", str(tmp_path / "missing_dir" / "sub.csv")])
    assert result.exit_code == 2 and "missing_dir does not exist" in result.output


@pytest.mark.parametrize("montage, message", [("m2", "name it *.png"), ("nowhere/m.png", "does not exist")])
def test_inspect_checks_the_montage_path(tmp_path, montage, message):
    result = CliRunner().invoke(cli, ["inspect", str(tmp_path), "--montage", str(tmp_path / montage)])
    assert result.exit_code == 2 and message in result.output


def test_inspect_montage_of_zero_samples_is_a_usage_error(tmp_path):
    result = CliRunner().invoke(cli, ["inspect", str(tmp_path), "--montage", str(tmp_path / "m.png"), "--n", "0"])
    assert result.exit_code == 2 and "--n" in result.output


def test_an_unreachable_scheduler_fails_fast_before_the_store_exists(small_store_inputs):
    tiff, csv, tmp = small_store_inputs
    out = tmp / "sched.zarr"
    result = CliRunner().invoke(cli, ["build-zarr", "--src", str(tiff), "--csv", str(csv), "--out", str(out),
                                      "--size", "64", "--levels", "1", "--scheduler", "tcp://127.0.0.1:1"])
    assert result.exit_code == 1 and "no Dask scheduler answers at tcp://127.0.0.1:1" in result.output
    assert not out.exists()


def test_a_slurm_recipe_without_sbatch_is_a_clear_error(small_store_inputs, monkeypatch):
    tiff, csv, tmp = small_store_inputs
    monkeypatch.setenv("PATH", str(tmp / "no-bin"))
    result = CliRunner().invoke(cli, ["build-zarr", "--src", str(tiff), "--csv", str(csv), "--out", str(tmp / "sl"),
                                      "--size", "64", "--levels", "1", "--cluster", "pipelines/cluster-slurm.yaml"])
    assert result.exit_code == 1 and "submits jobs with sbatch, which is not on PATH" in result.output
    assert not (tmp / "sl").exists()


@pytest.mark.integration
def test_a_rejected_job_submission_is_named_and_times_out(small_store_inputs, tmp_path, monkeypatch):
    pytest.importorskip("dask_jobqueue")
    tiff, csv, tmp = small_store_inputs
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text("#!/bin/bash\necho 'sbatch: error: invalid partition specified: normal' >&2\nexit 1\n")
    (bin_dir / "scancel").write_text("#!/bin/bash\nexit 0\n")
    for name in ("sbatch", "scancel"):
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    recipe = tmp_path / "slurm.yaml"
    recipe.write_text(json.dumps({"kind": "slurm", "workers": 1, "options": {
        "cores": 1, "memory": "1GB", "python": sys.executable, "local_directory": str(tmp_path)}}))
    result = CliRunner().invoke(cli, ["build-zarr", "--src", str(tiff), "--csv", str(csv), "--out", str(tmp_path / "s"),
                                      "--size", "64", "--levels", "1", "--cluster", str(recipe),
                                      "--worker-timeout", "20"])
    assert result.exit_code == 1, result.output
    assert "invalid partition" in result.output or "no Dask worker joined within 20 s" in result.output
    assert result.output.count("Traceback") == 0


@pytest.mark.integration
def test_ctrl_c_exits_130_with_what_was_saved(small_store_inputs, tmp_path):
    from hpa_pipeline.prep.synth import SynthSpec, make_dataset

    d = make_dataset(tmp_path / "d", SynthSpec(n_train=24, n_test=1, image_sizes=(2048,), seed=3), workers=2)
    out = tmp_path / "s.zarr"
    # Ctrl-C once the third sample's task has returned (--workers 1: tasks run in the main process)
    interrupted = subprocess.run(
        hpa_pipe_signalled_at("hpa_pipeline.prep.tasks", "process_sample", 3, signal.SIGINT,
                              ["ingest", str(d.train_archive), "--csv", str(d.train_csv), "--out", str(out),
                               "--size", "2048", "--levels", "1", "--workers", "1"]),
        capture_output=True, text=True, timeout=300)
    stderr = interrupted.stderr
    assert interrupted.returncode == 130, stderr[-2000:]
    assert "interrupted:" in stderr and "samples saved in" in stderr and "Traceback" not in stderr
    rerun = subprocess.run([sys.executable, "-m", "hpa_pipeline", "ingest", str(d.train_archive), "--csv",
                            str(d.train_csv), "--out", str(out), "--size", "2048", "--levels", "1", "--workers", "1"],
                           capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0 and "24/24 samples done" in rerun.stdout
    done_before = json.loads((out / "report.json").read_text())["done_before"]
    assert 0 < done_before < 24  # what the interrupted run saved was kept
    import re

    said = int(re.search(r"interrupted: (\d+)/24 samples saved", stderr).group(1))
    assert said == done_before  # the summary counts what was saved, not what was sent


def test_every_option_of_every_command_has_help():
    missing = [f"{name} {param.opts[0]}" for name, command in cli.commands.items() for param in command.params
               if isinstance(param, __import__("click").Option) and not (param.help or "").strip()
               and param.opts[0] not in ("--help",)]
    assert not missing, missing


@pytest.mark.parametrize("command", sorted(cli.commands))
def test_help_shows_no_doubled_percent_signs(command):
    """Click formats help with %-style escapes; a literal per cent must not come out doubled."""
    result = CliRunner().invoke(cli, [command, "--help"])
    assert result.exit_code == 0 and "%%" not in result.output


def test_train_out_that_is_a_file_is_a_clear_error(tmp_path):
    target = tmp_path / "notes.txt"
    target.write_text("x")
    result = CliRunner().invoke(cli, ["train", "--store", str(tmp_path), "--out", str(target), "--workers", "0"])
    assert result.exit_code == 1 and "is a file, not a run folder" in result.output


def test_the_cluster_line_is_written_above_the_progress_bar(small_store_inputs):
    tiff, csv, tmp = small_store_inputs
    result = CliRunner().invoke(cli, ["build-zarr", "--src", str(tiff), "--csv", str(csv), "--out", str(tmp / "bar.zarr"),
                                      "--size", "64", "--levels", "1", "--workers", "1"])
    assert result.exit_code == 0, result.output
    line = next(l for l in result.output.splitlines() if "dask:" in l)
    import re

    line = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", line)  # tqdm moves the cursor up to write above the bar
    assert line.lstrip("\r ").startswith("dask:")  # on a line of its own, not inside the bar


@pytest.mark.integration
@pytest.mark.parametrize("command", ["ingest", "inspect"])
def test_an_object_store_without_credentials_is_a_clear_error(small_store_inputs, command):
    """No credentials found (none set, none in files, no instance metadata): the error names the
    store and what is missing, without a botocore traceback."""
    pytest.importorskip("s3fs")
    tiff, csv, tmp = small_store_inputs
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_SHARED_CREDENTIALS_FILE=str(tmp / "none"), AWS_CONFIG_FILE=str(tmp / "none"),
               AWS_EC2_METADATA_DISABLED="true")
    args = (["ingest", str(tmp / "data" / "train_full_size.7z"), "--csv", str(csv), "--out", "s3://nobucket/x.zarr",
             "--size", "64", "--levels", "1", "--chunk", "64", "--workers", "1"] if command == "ingest"
            else ["inspect", "s3://nobucket/x.zarr"])
    result = subprocess.run([sys.executable, "-m", "hpa_pipeline", *args], capture_output=True, text=True, env=env,
                            timeout=120)
    assert result.returncode == 1, result.stderr
    assert "s3://nobucket/x.zarr: cannot reach the store (NoCredentialsError" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("option, value, message", [
    ("--lr", "-1", "--lr must be a number above 0, got -1.0"),
    ("--lr", "0", "--lr must be a number above 0, got 0.0"),
    ("--lr", "nan", "--lr must be a number above 0, got nan"),
    ("--weight-decay", "-3", "--weight-decay must be a number of 0 or more, got -3.0"),
    ("--warmup-epochs", "-2", "--warmup-epochs must be a number of 0 or more, got -2.0"),
    ("--focal-gamma", "-1", "--focal-gamma must be a number of 0 or more, got -1.0"),
    ("--swa-bn-batches", "0", "--swa-bn-batches must be at least 1, got 0"),
    ("--steps-per-epoch", "0", "--steps-per-epoch must be at least 1, got 0"),
    ("--val-level", "0", "--val-level must be at least 1, got 0"),
])
def test_training_numbers_out_of_range_are_usage_errors(tmp_path, option, value, message):
    """Before any work, naming the option: not an optimizer's message, nor a silently odd run."""
    result = CliRunner().invoke(cli, ["train", "--store", str(tmp_path), "--out", str(tmp_path / "r"), option, value])
    assert result.exit_code == 2 and message in result.output, result.output
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("counts, message", [
    (["--n-train", "-2"], "Invalid value for '--n-train': -2 is not in the range x>=0"),
    (["--n-train", "0", "--n-test", "0"], "nothing to write"),
    (["--n-train", "0", "--form", "jpeg-folder"], "training samples only"),
])
def test_synth_sample_counts_are_checked(tmp_path, counts, message):
    result = CliRunner().invoke(cli, ["synth", "--out", str(tmp_path / "d"), *counts])
    assert result.exit_code == 2 and message in result.output, result.output
    assert not (tmp_path / "d").exists()



@pytest.mark.parametrize("text, message", [
    ("train:\n  n_train: [1, 2]\n", "expected a single value"),
    ("synth:\n  n_train: {a: 1}\n", "expected a single value"),
    ("a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
     "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\n",
     "YAML aliases"),
    ("train: !!python/object/apply:os.system ['echo pwned']\n", "cannot read recipe"),
])
def test_a_recipe_value_of_the_wrong_kind_or_a_yaml_bomb_is_one_line(tmp_path, text, message):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(text.replace("n_train: [1, 2]", "epochs: [1, 2]"))
    result = CliRunner().invoke(cli, ["--config", str(recipe), "synth", "--out", str(tmp_path / "o")])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("text, message", [("train:\n  epochs: many\n", "train: epochs: 'many' is not a valid integer"),
                                           ("ingest:\n  codec: brotli\n", "ingest: codec: 'brotli' is not one of"),
                                           ("predict:\n  tta: 9\n", "predict: tta: 9 is not in the range")])
def test_a_recipe_value_error_names_the_recipe_and_its_key(tmp_path, text, message):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(text)
    result = CliRunner().invoke(cli, ["--config", str(recipe), "evaluate", "--help"])
    assert result.exit_code == 2 and f"{recipe}: {message}" in result.output, result.output


def test_a_file_that_cannot_be_written_is_named_not_its_temporary(tmp_path):
    """Files are written under a temporary name and renamed; a folder that takes no new file
    (/proc: a real one, root included) gives one line naming the file the user asked for."""
    from hpa_pipeline.contract.atomic import write_bytes

    if not Path("/proc/self").exists():
        pytest.skip("no /proc here")
    with pytest.raises(OSError) as raised:
        write_bytes("/proc/hpa-montage.png", b"png")
    assert raised.value.filename == "/proc/hpa-montage.png" and ".partial" not in str(raised.value)
    result = CliRunner().invoke(cli, ["inspect", str(tmp_path), "--montage", "/proc/hpa-montage.png"])
    assert ".partial" not in result.output


def test_evaluate_says_a_probability_table_needs_its_thresholds(tmp_path):
    probs = tmp_path / "oof.csv"
    probs.write_text("Id," + ",".join(map(str, range(28))) + "\na," + ",".join(["0.5"] * 28) + "\n")
    labels = tmp_path / "train.csv"
    labels.write_text("Id,Target\na,0\n")
    result = CliRunner().invoke(cli, ["evaluate", "--submission", str(probs), "--labels", str(labels)])
    assert result.exit_code == 1 and "is a probability table" in result.output and "--thresholds" in result.output
