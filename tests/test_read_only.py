"""Stores, run folders and packages where users find them: on a read-only mount (Kaggle's
``/kaggle/input``, a cluster's shared dataset) or in another user's folder. Every command that
only reads them works there and writes nothing there; a writer's lock leaves no litter.

The read-only place is a real read-only bind mount (skipped where this machine cannot mount)."""
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from hpa_pipeline.cli import cli
from hpa_pipeline.contract.locks import store_lock_path

pytestmark = pytest.mark.integration  # whole runs, mounts

STORE_ARGS = ["--size", "128", "--levels", "2", "--chunk", "64", "--workers", "1"]
TINY = ["--arch", "se_resnet_tiny", "--level", "64", "--crop", "48", "--folds", "3", "--epochs", "1", "--batch-size",
        "4", "--workers", "0", "--steps-per-epoch", "2", "--weights", "none", "--device", "cpu"]


def run(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module")
def shared(small_dataset, tmp_path_factory):
    """A store, a trained run and its package in ``data/``, then that folder mounted read-only at ``ro/``."""
    tmp = tmp_path_factory.mktemp("shared")
    data = tmp / "data"
    run("ingest", small_dataset.train_archive, "--csv", small_dataset.train_csv, "--out", data / "train.zarr",
        *STORE_ARGS)
    run("ingest", small_dataset.test_archive, "--csv", small_dataset.sample_submission, "--out", data / "test.zarr",
        *STORE_ARGS)
    run("train", "--store", data / "train.zarr", "--out", data / "run", *TINY)
    if _can_export():
        run("export", data / "run", "--out", data / "package")
    ro = tmp / "ro"
    ro.mkdir()
    mounted = subprocess.run(["mount", "--bind", str(data), str(ro)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"this machine cannot bind-mount: {mounted.stderr.decode().strip()}")
    try:
        if subprocess.run(["mount", "-o", "remount,bind,ro", str(ro)], capture_output=True).returncode != 0:
            pytest.skip("this machine cannot remount read-only")
        before = listing(data)
        yield ro, tmp
        assert listing(data) == before  # nothing written there, not even a lock file
    finally:
        subprocess.run(["umount", str(ro)], capture_output=True)


def _can_export() -> bool:
    try:
        import bioimageio.spec  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def listing(folder: Path) -> dict:
    """Every file under ``folder`` (the stores' lock files beside them included) with its size and mtime."""
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file()}


def test_a_read_only_mount_is_what_it_says(shared):
    ro, _ = shared
    with pytest.raises(OSError):
        (ro / "probe").write_text("")


def test_verify_and_inspect_read_a_read_only_store(shared):
    ro, _ = shared
    assert "12 done samples checked, 0 damaged" in run("verify", ro / "train.zarr")
    assert "12" in run("inspect", ro / "train.zarr")


def test_train_and_predict_read_read_only_stores_and_runs(shared):
    ro, tmp = shared
    run("train", "--store", ro / "train.zarr", "--out", tmp / "mine", *TINY)
    run("predict", "--store", ro / "test.zarr", "--run", ro / "run", "--out", tmp / "submission.csv")
    assert (tmp / "submission.csv").read_text().startswith("Id,Predicted")


def test_export_and_classify_read_read_only_runs_and_packages(shared, small_dataset):
    ro, tmp = shared
    if not (ro / "package").exists():
        pytest.skip("export needs onnxruntime and bioimageio.spec")
    run("export", ro / "run", "--out", tmp / "package")
    run("classify", small_dataset.test_archive, "--model", ro / "package", "--out", tmp / "classified.csv")
    assert len((tmp / "classified.csv").read_text().splitlines()) == 5


def test_a_missing_store_leaves_no_lock_file(tmp_path):
    result = CliRunner().invoke(cli, ["verify", str(tmp_path / "nothere.zarr")])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert list(tmp_path.iterdir()) == []


def test_a_refused_first_ingest_leaves_no_lock_file(small_dataset, tmp_path):
    """The CSV of other samples is refused before a store exists: nothing is left beside it."""
    out = tmp_path / "s.zarr"
    result = CliRunner().invoke(cli, ["ingest", str(small_dataset.test_archive), "--csv", str(small_dataset.train_csv),
                                      "--out", str(out), *STORE_ARGS])
    assert result.exit_code == 1
    assert not out.exists() and not store_lock_path(out).exists()


def test_an_extract_target_holds_only_the_images(small_dataset, tmp_path):
    """The lock lives beside the target, so the next step counts no unknown file there."""
    out = tmp_path / "tiff"
    run("extract", small_dataset.train_archive, "--out", out)
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]
    built = run("build-zarr", "--src", out, "--csv", small_dataset.train_csv, "--out", tmp_path / "s.zarr",
                *STORE_ARGS)
    assert "unknown" not in built


def test_another_users_store_and_run_are_read_as_they_are(shared, tmp_path_factory):
    """As an unprivileged user (setpriv), reading root's store and run in a folder it cannot write."""
    import os
    import shutil
    import sys
    import tempfile

    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to act as another user")
    ro, _ = shared
    theirs = Path(tempfile.mkdtemp(dir="/tmp"))
    try:
        for name in ("test.zarr", "run"):
            shutil.copytree(ro / name, theirs / name)
        os.chmod(theirs, 0o755)
        mine = theirs / "mine"
        mine.mkdir()
        os.chmod(mine, 0o777)
        before = listing(theirs)
        as_nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-m", "hpa_pipeline"]
        for args in (["verify", theirs / "test.zarr"],
                     ["predict", "--store", theirs / "test.zarr", "--run", theirs / "run", "--out", mine / "s.csv"]):
            result = subprocess.run([*as_nobody, *map(str, args)], capture_output=True, text=True, timeout=300,
                                    env={**os.environ, "HOME": str(mine)})
            assert result.returncode == 0, result.stderr[-2000:]
        assert {k: v for k, v in listing(theirs).items() if "/mine/" not in k} == before
    finally:
        shutil.rmtree(theirs, ignore_errors=True)
