"""Dask clusters: build-zarr and ingest on a LocalCluster of worker processes, one of them killed mid-run."""
import os
import signal
import threading
import time

import numpy as np
import pytest
import zarr
from distributed import Client, LocalCluster

from hpa_pipeline.build_zarr import build_zarr
from hpa_pipeline.extract import extract_archives
from hpa_pipeline.ingest import ingest
from hpa_pipeline.store import StoreSpec
from hpa_pipeline.synth import SynthSpec, make_dataset

SPEC = StoreSpec(size=256, levels=2, chunk=128)
ARRAYS = ["images/256", "images/128", "source_shape", "source_dtype", "channel_sums", "done", "labels"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("scale")
    d = make_dataset(tmp / "data", SynthSpec(n_train=40, n_test=1, image_sizes=(512, 768), seed=21), workers=2)
    reference = tmp / "reference.zarr"
    assert ingest(d.train_archive, d.train_csv, reference, SPEC, workers=2).exit_code == 0
    extract_archives([d.train_archive], tmp / "tiff")
    return d, reference, tmp / "tiff"


def shards(store) -> int:
    level = store / "images" / "128" / "c"
    return sum(1 for _ in level.glob("*/0/0/0")) if level.exists() else 0


@pytest.mark.parametrize("command", ["build-zarr", "ingest"])
def test_a_worker_killed_mid_run_and_the_store_equals_a_single_process_run(data, tmp_path, command):
    d, reference, tiff = data
    out = tmp_path / "out.zarr"
    killed = []
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        pids = list(client.run(os.getpid).values())

        def kill_one_worker():
            while shards(out) < 8:
                time.sleep(0.01)
            os.kill(pids[0], signal.SIGKILL)
            killed.append(shards(out))

        killer = threading.Thread(target=kill_one_worker, daemon=True)
        killer.start()
        if command == "ingest":
            report = ingest(d.train_archive, d.train_csv, out, SPEC, scheduler=cluster.scheduler_address)
        else:
            report = build_zarr(tiff, d.train_csv, out, SPEC, scheduler=cluster.scheduler_address)
        killer.join(timeout=5)
    assert killed and killed[0] < 40, "the worker was not killed mid-run"
    assert report.exit_code == 0 and report.written == 40, report.failed
    a, b = zarr.open_group(str(reference), mode="r"), zarr.open_group(str(out), mode="r")
    for name in ARRAYS:
        assert np.array_equal(a[name][:], b[name][:]), name
    assert a.attrs["hpa"]["statistics"] == b.attrs["hpa"]["statistics"]


def test_cluster_processes_option(data, tmp_path):
    d, reference, _ = data
    report = ingest(d.train_archive, d.train_csv, tmp_path / "p.zarr", SPEC, workers=2, cluster="processes")
    assert report.written == 40
    a, b = zarr.open_group(str(reference), mode="r"), zarr.open_group(str(tmp_path / "p.zarr"), mode="r")
    assert np.array_equal(a["images/256"][:], b["images/256"][:])
