"""Shared fixtures: the real reference data (skipped cleanly when absent) and small synthetic datasets."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from hpa_pipeline.prep.synth import SynthSpec, make_dataset

#: the reference data: ../shared/data beside the checkout, or where HPA_SHARED_DATA says
SHARED_DATA = Path(os.environ.get("HPA_SHARED_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
REAL_TRAIN_CSV = SHARED_DATA / "kaggle" / "train.csv"
REAL_SAMPLE_SUBMISSION = SHARED_DATA / "kaggle" / "sample_submission.csv"
REAL_PNG_DIR = SHARED_DATA / "hpa-real-png"


def need(path: Path) -> Path:
    """Skip the test when a piece of ../shared/data is absent."""
    if not path.exists():
        pytest.skip(f"reference data not found: {path}")
    return path


@pytest.fixture(scope="session")
def small_dataset(tmp_path_factory):
    """12 train + 4 test samples at 256/384, deflate TIFFs, stored 7z: the workhorse of the suite."""
    spec = SynthSpec(n_train=12, n_test=4, image_sizes=(256, 384), seed=7,
                     labels_csv=REAL_TRAIN_CSV if REAL_TRAIN_CSV.exists() else None)
    return make_dataset(tmp_path_factory.mktemp("small"), spec, workers=1)


@pytest.fixture(scope="session")
def train_and_test_stores(tmp_path_factory):
    """A train store (40 samples) and a test store (8) at levels 128/64, 64² chunks: what the
    training, cross-validation and run-folder tests train on, built once for all of them.
    Returns the synthetic dataset and the folder holding ``train.zarr`` and ``test.zarr``;
    tests only read them (each writes its runs elsewhere)."""
    from hpa_pipeline.contract.store import StoreSpec

    from .helpers import synthetic_stores

    tmp = tmp_path_factory.mktemp("stores")
    d, _, _ = synthetic_stores(tmp, SynthSpec(n_train=40, n_test=8, image_sizes=(256,), seed=11),
                               StoreSpec(size=128, levels=2, chunk=64))
    return d, tmp
