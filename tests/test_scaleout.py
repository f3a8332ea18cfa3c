"""Dask clusters: build-zarr and ingest on a LocalCluster of worker processes, one of them killed mid-run."""
import os
import re
import signal
import threading
import time

import pytest
from click.testing import CliRunner
from distributed import Client, LocalCluster

from hpa_pipeline.prep.build_zarr import build_zarr
from hpa_pipeline.cli import cli
from hpa_pipeline.prep.ingest import ingest
from hpa_pipeline.contract.store import StoreSpec

from .helpers import assert_same_stores, dataset_with_reference, shards_written

pytestmark = pytest.mark.integration  # subprocesses, clusters, object stores or kills

SPEC = StoreSpec(size=256, levels=2, chunk=128)
ARRAYS = ["images/256", "images/128", "source_shape", "source_dtype", "channel_sums", "done", "labels"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return dataset_with_reference(tmp_path_factory.mktemp("scale"), 40, 21, SPEC)


@pytest.mark.parametrize("command", ["build-zarr", "ingest"])
def test_a_worker_killed_mid_run_and_the_store_equals_a_single_process_run(data, tmp_path, command):
    d, reference, tiff = data
    out = tmp_path / "out.zarr"
    killed = []
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        pids = list(client.run(os.getpid).values())

        def kill_one_worker():
            while shards_written(out, 128) < 8:
                time.sleep(0.01)
            os.kill(pids[0], signal.SIGKILL)
            killed.append(shards_written(out, 128))

        killer = threading.Thread(target=kill_one_worker, daemon=True)
        killer.start()
        if command == "ingest":
            report = ingest(d.train_archive, d.train_csv, out, SPEC, scheduler=cluster.scheduler_address)
        else:
            report = build_zarr(tiff, d.train_csv, out, SPEC, scheduler=cluster.scheduler_address)
        killer.join(timeout=5)
    assert killed and killed[0] < 40, "the worker was not killed mid-run"
    assert report.exit_code == 0 and report.written == 40, report.failed
    assert_same_stores(reference, out, ARRAYS, statistics=True)


def test_cluster_processes_option_prints_the_cluster_and_its_dashboard(data, tmp_path):
    d, reference, _ = data
    result = CliRunner().invoke(cli, ["ingest", str(d.train_archive), "--csv", str(d.train_csv),
                                      "--out", str(tmp_path / "p.zarr"), "--size", "256", "--levels", "2",
                                      "--chunk", "128", "--cluster", "processes", "--workers", "2",
                                      "--threads-per-worker", "2"])
    assert result.exit_code == 0, result.output
    assert "dask: 2 worker(s), 4 thread(s) at tcp://" in result.output
    assert re.search(r"dashboard http://[^ ]+/status", result.output), result.output
    assert "ingest: 40/40 samples (100%)" in result.output  # the progress line, fed by the distributed futures
    assert_same_stores(reference, tmp_path / "p.zarr", ARRAYS)


def test_the_threads_cluster_reports_no_dashboard_link():
    """It starts none (1.5 s saved); distributed's bare HTTP port would give a 404 link."""
    from hpa_pipeline.prep.scheduler import dask_client

    infos = []
    with dask_client(workers=2, cluster="threads", on_cluster=infos.append):
        pass
    assert infos and infos[0]["dashboard"] is None and infos[0]["threads"] == 2
