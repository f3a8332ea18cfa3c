"""Cluster recipes (pipelines/cluster-*.yaml): they parse and build their engine's job or resource,
and a SLURM recipe runs a whole build-zarr through dask-jobqueue.

There is no SLURM or Kubernetes here. For the end-to-end run, ``sbatch``/``squeue``/``scancel``
are three-line shell stand-ins that run the job script dask-jobqueue writes as a local
background process: everything from the recipe to the workers is the real code path.
"""
import json
import os
import stat
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from hpa_pipeline.cli import cli
from hpa_pipeline.prep.scheduler import ClusterError, kubernetes_spec, read_cluster_recipe
from hpa_pipeline.contract.store import StoreSpec

from .helpers import assert_same_stores, dataset_with_reference

pytestmark = pytest.mark.integration  # subprocesses, clusters, object stores or kills

PIPELINES = Path(__file__).resolve().parents[1] / "pipelines"
SPEC = StoreSpec(size=128, levels=2, chunk=64)
ARRAYS = ["images/128", "images/64", "source_shape", "source_dtype", "channel_sums", "done", "labels"]


def test_slurm_and_pbs_recipes_make_job_scripts():
    jobqueue = pytest.importorskip("dask_jobqueue")
    for name, engine, directive in (("cluster-slurm.yaml", jobqueue.SLURMCluster, "#SBATCH"),
                                    ("cluster-pbs.yaml", jobqueue.PBSCluster, "#PBS")):
        recipe = read_cluster_recipe(PIPELINES / name)
        assert recipe["workers"] == 8
        with engine(**recipe["options"], scheduler_options={"dashboard_address": None}) as cluster:
            script = cluster.job_script()
        assert directive in script and "--nthreads 4" in script, script
        assert "04:00:00" in script


def test_kubernetes_recipe_makes_a_daskcluster_resource():
    pytest.importorskip("dask_kubernetes")
    spec = kubernetes_spec(read_cluster_recipe(PIPELINES / "cluster-kubernetes.yaml"))
    assert spec["kind"] == "DaskCluster"
    worker = spec["spec"]["worker"]
    assert worker["replicas"] == 8
    assert worker["spec"]["containers"][0]["resources"]["limits"]["cpu"] == "4"


@pytest.mark.parametrize("text, message", [
    ("kind: lsf\n", "kind must be one of"),
    ("kind: slurm\nworkers: 0\n", "workers must be a positive integer"),
    ("kind: slurm\ncores: 4\n", "engine arguments go under options"),
])
def test_bad_recipes_say_what_is_wrong(tmp_path, text, message):
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    with pytest.raises(ClusterError, match=message):
        read_cluster_recipe(path)


def test_unknown_cluster_is_a_usage_error(small_dataset, tmp_path):
    result = CliRunner().invoke(cli, ["ingest", str(small_dataset.train_archive), "--csv",
                                      str(small_dataset.train_csv), "--out", str(tmp_path / "s.zarr"),
                                      "--cluster", "gpu-farm"])
    assert result.exit_code == 2 and "'gpu-farm' is not threads, processes or a cluster recipe file" in result.output


def _stand_in_slurm(bin_dir: Path, jobs_dir: Path) -> None:
    """sbatch runs the job script in the background and prints its id; scancel kills its group."""
    scripts = {
        # dask-jobqueue deletes the script when sbatch returns: run a copy
        "sbatch": f'#!/bin/bash\ncp "$1" "{jobs_dir}/job.$$.sh"\n'
                  f'setsid bash "{jobs_dir}/job.$$.sh" > "{jobs_dir}/job.$$.log" 2>&1 < /dev/null &\n'
                  f'echo "Submitted batch job $!"\n',
        "scancel": '#!/bin/bash\nfor id in "$@"; do kill -- -"$id" 2>/dev/null || kill "$id" 2>/dev/null; done\n'
                   'exit 0\n',
        "squeue": "#!/bin/bash\nexit 0\n",
    }
    for name, text in scripts.items():
        path = bin_dir / name
        path.write_text(text)
        path.chmod(path.stat().st_mode | stat.S_IXUSR)


def test_build_zarr_on_a_slurm_recipe(tmp_path, monkeypatch):
    pytest.importorskip("dask_jobqueue")
    d, reference, tiff = dataset_with_reference(tmp_path, 12, 8, SPEC)
    bin_dir, jobs_dir = tmp_path / "bin", tmp_path / "jobs"
    bin_dir.mkdir()
    jobs_dir.mkdir()
    _stand_in_slurm(bin_dir, jobs_dir)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    recipe = tmp_path / "slurm.yaml"
    recipe.write_text(json.dumps({"kind": "slurm", "workers": 2, "options": {
        "cores": 1, "processes": 1, "memory": "2GB", "walltime": "00:10:00", "python": sys.executable,
        "local_directory": str(tmp_path / "spill"), "log_directory": str(jobs_dir)}}))
    out = tmp_path / "slurm.zarr"
    result = CliRunner().invoke(cli, ["build-zarr", "--src", str(tiff), "--csv", str(d.train_csv), "--out", str(out),
                                      "--size", "128", "--levels", "2", "--chunk", "64", "--cluster", str(recipe)])
    assert result.exit_code == 0, result.output + "".join(p.read_text() for p in jobs_dir.glob("*.log"))
    assert "dask: " in result.output and "worker(s)" in result.output
    assert "12/12 samples done" in result.output
    # the progress line (not a terminal: a line, not a bar) counts the distributed tasks as they finish
    assert "build-zarr: 12/12 samples (100%)" in result.output
    assert_same_stores(reference, out, ARRAYS, statistics=True)
