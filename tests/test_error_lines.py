"""A user's mistake is one line, a bug is a traceback: the project's errors (HpaError) and the OS
errors it can explain are one line; anything else shows its traceback and asks for a report;
--debug shows every traceback. Also: outputs an unprivileged user cannot write, a symlinked
--out, and extract's rerun checking each kept file's CRC."""
import shutil
import subprocess
import sys

import pytest
from click.testing import CliRunner

from hpa_pipeline.cli import cli

_WITH_A_BUG = """
import sys
import hpa_pipeline.prep.inspect as inspect
def broken(path):
    return {}["a bug"]
inspect.inspect_store = broken
sys.argv = ["hpa-pipe", *sys.argv[1:]]
from hpa_pipeline.cli import main
main()
"""


def _hpa_pipe(*args, program=None):
    command = [sys.executable, "-c", program, *args] if program else [sys.executable, "-m", "hpa_pipeline", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def test_a_bug_shows_its_traceback_and_asks_for_a_report(tmp_path):
    result = _hpa_pipe("inspect", str(tmp_path), program=_WITH_A_BUG)
    assert result.returncode == 1
    assert "Traceback" in result.stderr and "KeyError: 'a bug'" in result.stderr
    assert "this is a bug in hpa-pipeline" in result.stderr


def test_a_users_mistake_is_one_line_and_debug_shows_its_traceback(tmp_path):
    plain = _hpa_pipe("inspect", str(tmp_path))
    assert plain.returncode == 1 and plain.stderr.strip() == f"Error: {tmp_path}: no dataset store there"
    debug = _hpa_pipe("--debug", "inspect", str(tmp_path))
    assert debug.returncode == 1 and "Traceback" in debug.stderr and "StoreError" in debug.stderr
    # the traceback, then the same line and status: a user's error is not called a bug
    assert debug.stderr.rstrip().endswith(f"Error: {tmp_path}: no dataset store there")
    assert "this is a bug" not in debug.stderr


@pytest.mark.integration  # a subprocess
def test_train_without_out_is_a_usage_error(tmp_path):
    result = _hpa_pipe("train", "--store", str(tmp_path / "s.zarr"))
    assert result.returncode == 2 and result.stderr.strip().startswith("Error: --out is required"), result.stderr


def test_an_unexpected_per_sample_failure_keeps_its_exception_type(small_dataset, tmp_path, monkeypatch):
    import json

    import hpa_pipeline.prep.tasks as tasks

    def broken(*args, **kwargs):
        raise ZeroDivisionError("a bug in a task")

    monkeypatch.setattr(tasks, "make_levels", broken)
    out = tmp_path / "s.zarr"
    result = CliRunner().invoke(cli, ["ingest", str(small_dataset.train_archive), "--csv", str(small_dataset.train_csv),
                                      "--out", str(out), "--size", "128", "--levels", "1", "--workers", "1"])
    assert result.exit_code == 3
    assert "failed (unexpected ZeroDivisionError: a bug? see the report)" in result.output
    failed = json.loads((out / "report.json").read_text())["failed"]
    assert {f["exception"] for f in failed} == {"ZeroDivisionError"} and len(failed) == 12


def _as_nobody(*args):
    """``hpa-pipe ARGS`` run as the unprivileged user nobody (setpriv; root only)."""
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv is not available")
    command = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-m", "hpa_pipeline",
               *args]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env={"PATH": "/usr/bin:/bin",
                                                                                       "HOME": "/tmp"})
    if "Operation not permitted" in result.stderr and "setpriv" in result.stderr:
        pytest.skip("setpriv needs root here")
    return result


@pytest.fixture
def readable(small_dataset):
    """A folder every user can read (pytest's own are its owner's only), holding the small
    dataset's archive and CSV, and a folder (``locked``) an unprivileged user cannot write in."""
    import tempfile
    from pathlib import Path

    root = Path(tempfile.mkdtemp(prefix="hpa-shared-", dir="/tmp"))
    for f in (small_dataset.train_archive, small_dataset.train_csv):
        shutil.copy(f, root / f.name)
    (root / "locked").mkdir()
    for p in (root, *root.iterdir()):
        p.chmod(0o755 if p.is_dir() else 0o644)
    yield root
    shutil.rmtree(root)


@pytest.mark.integration
@pytest.mark.parametrize("command", ["extract", "ingest", "synth"])
def test_an_unwritable_out_is_one_line(readable, command):
    archive, csv = readable / "train_full_size.7z", readable / "train.csv"
    out = readable / "locked" / "out"
    args = {"extract": ["extract", str(archive), "--out", str(out)],
            "ingest": ["ingest", str(archive), "--csv", str(csv), "--out", str(out), "--size", "128", "--levels",
                       "1", "--workers", "1"],
            "synth": ["synth", "--out", str(out), "--n-train", "2", "--n-test", "1", "--image-sizes", "256",
                      "--workers", "1"]}[command]
    result = _as_nobody(*args)
    assert result.returncode == 1, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert "permission denied" in result.stderr or "cannot write" in result.stderr


def test_an_out_that_is_a_symlink_to_a_half_made_store_is_built_there(small_dataset, tmp_path):
    target = tmp_path / "elsewhere" / "s.zarr"
    target.mkdir(parents=True)
    (target / "zarr.json").write_text('{"zarr_format": 3, "node_type": "group", "attributes": {}}')  # killed at creation
    link = tmp_path / "s.zarr"
    link.symlink_to(target)
    result = CliRunner().invoke(cli, ["ingest", str(small_dataset.train_archive), "--csv", str(small_dataset.train_csv),
                                      "--out", str(link), "--size", "128", "--levels", "1", "--workers", "1"])
    assert result.exit_code == 0, result.output
    assert link.is_symlink() and (target / "images" / "128").is_dir()


def test_extract_rerun_replaces_a_damaged_file_of_the_same_size(small_dataset, tmp_path):
    out = tmp_path / "tiff"
    assert CliRunner().invoke(cli, ["extract", str(small_dataset.train_archive), "--out", str(out)]).exit_code == 0
    victim = sorted(out.glob("*.tif"))[3]
    good = victim.read_bytes()
    damaged = bytearray(good)
    damaged[len(damaged) // 2] ^= 0xFF
    victim.write_bytes(bytes(damaged))
    again = CliRunner().invoke(cli, ["extract", str(small_dataset.train_archive), "--out", str(out)])
    assert again.exit_code == 0, again.output
    assert victim.read_bytes() == good
    import json

    assert json.loads((out / "extract_report.json").read_text())["written"] == 1
