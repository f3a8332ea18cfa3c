"""Stores on an object store: a real S3 API on localhost (moto's server), reached through s3fs.

build-zarr writes to ``s3://``, the store equals a local build, inspect reads it, a resumed run
skips what is done, a run killed mid-way resumes to the same store, and train and predict read
from it.
"""
import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
import zarr
from click.testing import CliRunner

from hpa_pipeline.cli import cli
from hpa_pipeline.contract.store import StoreSpec

from .helpers import assert_same_stores, dataset_with_reference, hpa_pipe_signalled_at

pytestmark = pytest.mark.integration  # subprocesses, clusters, object stores or kills

pytest.importorskip("s3fs")
moto_server = pytest.importorskip("moto.server")

SPEC = StoreSpec(size=128, levels=2, chunk=64)
STORE_OPTIONS = ["--size", "128", "--levels", "2", "--chunk", "64", "--workers", "2"]
ARRAYS = ["images/128", "images/64", "source_shape", "source_dtype", "channel_sums", "done", "labels"]


@pytest.fixture(scope="module")
def s3_bucket():
    """An S3 endpoint on localhost with one bucket; AWS_* variables point s3fs (botocore) at it."""
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": f"http://{host}:{port}"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    s3fs.S3FileSystem().mkdir("hpa")
    yield "s3://hpa"
    server.stop()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    s3fs.S3FileSystem.clear_instance_cache()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return dataset_with_reference(tmp_path_factory.mktemp("s3"), 16, 3, SPEC)


def test_build_zarr_to_s3_equals_a_local_build_and_resumes(data, s3_bucket):
    import s3fs

    d, reference, tiff = data
    url = f"{s3_bucket}/train.zarr"
    runner = CliRunner()
    result = runner.invoke(cli, ["build-zarr", "--src", str(tiff), "--csv", str(d.train_csv), "--out", url,
                                 *STORE_OPTIONS])
    assert result.exit_code == 0, result.output
    assert_same_stores(reference, url, ARRAYS, statistics=True)
    fs = s3fs.S3FileSystem()
    report = json.loads(fs.cat_file("hpa/train.zarr/report.json"))
    assert report["written"] == 16 and report["failed"] == []
    # one object per sample and level: the shards were PUT whole
    assert len(fs.find("hpa/train.zarr/images/128/c")) == 16

    again = runner.invoke(cli, ["build-zarr", "--src", str(tiff), "--csv", str(d.train_csv), "--out", url,
                                *STORE_OPTIONS])
    assert again.exit_code == 0, again.output
    assert json.loads(fs.cat_file("hpa/train.zarr/report.json"))["done_before"] == 16

    shown = runner.invoke(cli, ["inspect", url, "--json"])
    assert shown.exit_code == 0, shown.output
    info = json.loads(shown.output)
    assert info["done"] == 16 and info["levels"][0]["bytes_on_disk"] > 0


def test_train_and_predict_from_s3(data, s3_bucket, tmp_path):
    d, _, tiff = data
    runner = CliRunner()
    train_url, test_url = f"{s3_bucket}/t/train.zarr", f"{s3_bucket}/t/test.zarr"
    for archive, csv, url in ((d.train_archive, d.train_csv, train_url),
                              (d.test_archive, d.sample_submission, test_url)):
        result = runner.invoke(cli, ["ingest", str(archive), "--csv", str(csv), "--out", url, *STORE_OPTIONS])
        assert result.exit_code == 0, result.output
    run = tmp_path / "run"
    # one worker process: the forked DataLoader worker opens its own s3fs session
    result = runner.invoke(cli, ["train", "--store", train_url, "--out", str(run), "--arch", "se_resnet_tiny",
                                 "--level", "64", "--crop", "64", "--folds", "4", "--epochs", "1",
                                 "--batch-size", "4", "--steps-per-epoch", "2", "--workers", "1"])
    assert result.exit_code == 0, result.output
    assert (run / "checkpoints" / "best.pt").exists()
    # streaming order: one GET per sample's shard, shuffled in a buffer
    streamed = tmp_path / "streamed"
    result = runner.invoke(cli, ["train", "--store", train_url, "--out", str(streamed), "--arch", "se_resnet_tiny",
                                 "--level", "64", "--crop", "64", "--folds", "4", "--epochs", "1",
                                 "--batch-size", "4", "--workers", "1", "--stream", "--stream-buffer", "4"])
    assert result.exit_code == 0, result.output
    assert torch.load(streamed / "checkpoints" / "last.pt", weights_only=True)["step"] >= 2
    submission = tmp_path / "submission.csv"
    result = runner.invoke(cli, ["predict", "--store", test_url, "--run", str(run), "--out", str(submission),
                                 "--workers", "0"])
    assert result.exit_code == 0, result.output
    rows = submission.read_text().splitlines()
    assert rows[0] == "Id,Predicted" and len(rows) == 1 + 1
    assert np.all([r.split(",")[1] != "" for r in rows[1:]])


def test_build_zarr_to_s3_killed_mid_run_resumes_to_the_same_store(data, s3_bucket):
    """SIGKILL while shards are being PUT, then the same command again: the store equals a local build."""
    d, reference, tiff = data
    url = f"{s3_bucket}/killed.zarr"
    options = ["build-zarr", "--src", str(tiff), "--csv", str(d.train_csv), "--out", url, *STORE_OPTIONS]
    killed = subprocess.run(hpa_pipe_signalled_at("hpa_pipeline.prep.tasks", "write_levels", 4, signal.SIGKILL,
                                                  options), capture_output=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    done = int(zarr.open_group(url, mode="r")["done"][:].sum())
    assert done < 16
    args = [sys.executable, "-m", "hpa_pipeline", *options]
    final = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert final.returncode == 0, final.stderr[-2000:]
    assert "16/16 samples done" in final.stdout
    assert_same_stores(reference, url, ARRAYS, statistics=True)


def test_a_store_on_s3_made_before_the_whole_chunk_rule_resumes_and_a_new_one_is_refused(data, s3_bucket,
                                                                                          monkeypatch):
    """The CLI cannot see whether an s3:// --out holds a store yet: it leaves the new-store
    check to the store module, so an old store there resumes as a local one does."""
    from hpa_pipeline.prep.ingest import ingest

    d, _, _ = data
    old, new = f"{s3_bucket}/old.zarr", f"{s3_bucket}/new.zarr"
    with monkeypatch.context() as m:
        m.setattr(StoreSpec, "check_new", lambda self: None)  # as the earlier version wrote it
        assert ingest(d.train_archive, d.train_csv, old, StoreSpec(size=128, levels=3, chunk=64),
                      workers=1).exit_code == 0
    args = ["ingest", str(d.train_archive), "--csv", str(d.train_csv), "--size", "128", "--levels", "3",
            "--chunk", "64", "--workers", "1"]
    again = CliRunner().invoke(cli, [*args, "--out", old])
    assert again.exit_code == 0 and "16 already done" in again.output, again.output
    refused = CliRunner().invoke(cli, [*args, "--out", new])
    assert refused.exit_code == 2 and "--levels 3 makes level 32 smaller than one --chunk 64 chunk" in refused.output
    import s3fs

    assert not s3fs.S3FileSystem().exists("hpa/new.zarr/zarr.json")
