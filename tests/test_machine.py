"""Pools are sized by the cores this process may use (its CPU affinity), not the host's count:
a container or batch job limited to some cores must not start a worker per host core."""
import os
import subprocess
import sys

import pytest

from hpa_pipeline.common.machine import usable_cores

needs_affinity = pytest.mark.skipif(
    not hasattr(os, "sched_setaffinity") or (os.cpu_count() or 1) < 2,
    reason="needs CPU affinity and at least 2 cores")


def pinned_to_one_core():
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})


def run_pinned(*args: str) -> str:
    result = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=120,
                            preexec_fn=pinned_to_one_core, env={**os.environ, "COLUMNS": "200"})
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_usable_cores_is_at_least_one_and_at_most_the_host():
    assert 1 <= usable_cores() <= (os.cpu_count() or 1)


@needs_affinity
def test_every_default_pool_follows_the_affinity():
    out = run_pinned(
        "-c", "from hpa_pipeline.common.machine import usable_cores\n"
        "from hpa_pipeline.prep.ingest import ingest_workers\n"
        "print(usable_cores(), ingest_workers())")
    assert out.split() == ["1", "1"]


@needs_affinity
def test_synth_workers_default_follows_the_affinity():
    out = run_pinned("-m", "hpa_pipeline", "synth", "--help")
    workers_help = out.split("--workers", 1)[1].split("--help", 1)[0]
    assert "[default: 1;" in workers_help
