"""The README's make targets, run as a user runs them."""
import shutil
import subprocess
from pathlib import Path

import pytest
import zarr

pytestmark = pytest.mark.integration  # subprocesses, clusters, object stores or kills

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("make") is None, reason="make not installed")
def test_make_ingest_builds_both_stores_and_resumes(small_dataset, tmp_path):
    if not (REPO / ".venv" / ".installed").exists():
        pytest.skip("make ingest uses the checkout's .venv (made by make install)")
    args = ["make", "-C", str(REPO), "--no-print-directory", "ingest", f"DATA={small_dataset.out_dir}",
            f"OUT={tmp_path}", "SIZE=128"]
    first = subprocess.run(args, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr[-2000:]
    train, test = zarr.open_group(str(tmp_path / "train.zarr"), mode="r"), zarr.open_group(str(tmp_path / "test.zarr"), mode="r")
    assert train["done"][:].all() and test["done"][:].all()
    assert sorted(k for k, _ in train["images"].arrays()) == ["128"]  # below one 256² chunk: one level
    again = subprocess.run(args, capture_output=True, text=True)
    assert again.returncode == 0 and "12/12 samples done (0 written now, 12 already done)" in again.stdout
