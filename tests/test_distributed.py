"""torchrun: 2 processes (gloo, CPU) train the same weights as 1 process with the same global batch,
only rank 0 writes the run folder, and a 2-process run killed with SIGKILL resumes exactly."""
import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from hpa_pipeline.model.data import EpochSampler
from hpa_pipeline.contract.store import StoreSpec
from hpa_pipeline.prep.synth import SynthSpec

from .helpers import synthetic_stores

pytestmark = pytest.mark.integration  # subprocesses, clusters, object stores or kills

# per-process batch 4: two processes, or one process accumulating two micro-batches of 4;
# BatchNorm sees 4 samples at a time in both (no SyncBatchNorm on CPU)
# (no dropout: each rank draws its own dropout masks, so only dropout-free runs can match bit for bit)
OPTIONS = dict(arch="se_resnet_tiny", drop_rate=0.0, level=32, crop=32, folds=4, fold=0, epochs=3, batch_size=4, lr=2e-3,
               warmup_epochs=0.5, workers=0, seed=3, amp="none", device="cpu")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    _, out, _ = synthetic_stores(tmp, SynthSpec(n_train=32, n_test=1, image_sizes=(256,), seed=4),
                                 StoreSpec(size=64, levels=2, chunk=32), test=False)
    return out


def command(store, run, processes: int, *extra):
    """``hpa-pipe train`` in 1 process, or under torchrun in several; one thread each.

    One thread in every process: CPU kernels round differently with other thread counts, and
    AdamW's first steps (about lr × sign of the gradient) turn that noise into visible changes.
    """
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
    args = [sys.executable, *(launcher if processes > 1 else []), "-m", "hpa_pipeline", "train",
            "--store", str(store), "--out", str(run)]
    for key, value in OPTIONS.items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    return args + list(extra), {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def one_process_run(store, tmp_path_factory):
    run = tmp_path_factory.mktemp("one") / "run"
    args, env = command(store, run, 1, "--accumulate", "2")
    result = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return run


def parameters(run) -> dict[str, torch.Tensor]:
    """The trainable weights of ``last.pt`` (BatchNorm running statistics are per process)."""
    from hpa_pipeline.model.models import create_model

    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    names = {name for name, _ in create_model("se_resnet_tiny").named_parameters()}
    return {k: v for k, v in state["model"].items() if k in names}, state["step"]


def assert_same_weights(a, b):
    (wa, step_a), (wb, step_b) = parameters(a), parameters(b)
    assert step_a == step_b > 0
    assert wa.keys() == wb.keys()
    for name in wa:
        torch.testing.assert_close(wa[name], wb[name], rtol=1e-5, atol=1e-6, msg=name)


def test_sampler_deals_whole_batches_of_one_order_to_the_ranks():
    one = list(EpochSampler(26, seed=1))
    ranks = [list(EpochSampler(26, seed=1, rank=r, world=2, batch_size=4)) for r in (0, 1)]
    assert all(len(r) == 12 for r in ranks)  # 6 whole batches of 4 between two ranks; 2 left over
    dealt = [ranks[k % 2][(k // 2) * 4:(k // 2 + 1) * 4] for k in range(6)]
    assert sum(dealt, []) == one[:24]


def test_two_processes_match_one_process_with_the_same_global_batch(store, one_process_run, tmp_path):
    run = tmp_path / "ddp"
    args, env = command(store, run, 2)
    result = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert_same_weights(one_process_run, run)
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]  # rank 0 alone wrote the metrics
    # validation was split over the ranks and gathered: the whole fold was scored
    n_valid = [json.loads((r / "thresholds.json").read_text())["n_valid"] for r in (run, one_process_run)]
    assert n_valid[0] == n_valid[1] > 0
    assert result.stdout.count("train: best validation macro F1") == 1


def test_a_killed_two_process_run_resumes_to_the_same_weights(store, one_process_run, tmp_path):
    run = tmp_path / "ddp"
    args, env = command(store, run, 2)
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    last = run / "checkpoints" / "last.pt"
    while proc.poll() is None and not last.exists():
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # torchrun and both workers
    proc.wait()
    epoch_at_kill = torch.load(last, weights_only=True)["epoch"]
    assert epoch_at_kill < 2, "the run finished before it was killed"
    result = subprocess.run(args + ["--resume"], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert_same_weights(one_process_run, run)
