"""Multi-GPU and multi-node training with ``torchrun`` (PyTorch's DistributedDataParallel).

``torchrun --nproc_per_node N -m hpa_pipeline train ...`` starts N copies of ``train``; torchrun
sets ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE`` and :func:`start` joins them into one process
group (NCCL on CUDA, gloo on CPU). Without those variables, ``train`` runs as one process and
nothing here does anything.

What each rank does:

- ``--batch-size`` is per process, as in timm and torchvision's references: the global batch is
  ``batch_size × world_size × accumulate``;
- the sampler deals out whole batches of one shared permutation (:class:`.data.EpochSampler`):
  batch ``k`` of the epoch goes to rank ``k % world_size``, so N processes see exactly the
  batches that one process with ``accumulate × N`` would see, micro-batch for micro-batch;
- gradients are averaged by DDP; BatchNorm statistics stay per process unless ``--sync-bn``
  (CUDA only: PyTorch's SyncBatchNorm has no CPU kernel). Without it, N processes train the
  same weights as one process accumulating N micro-batches of the same size (tested, bit for
  bit with one thread per process); the running statistics kept are rank 0's (DDP broadcasts
  its buffers), so validation scores differ slightly from the one-process run;
- validation is split across ranks and gathered, so every rank computes the same metrics;
- only rank 0 writes the run folder (config, folds, checkpoints, metrics, plots); every rank
  reads ``checkpoints/last.pt`` on ``--resume``.
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from ..contract.errors import OptionError


@dataclass(frozen=True)
class Ranks:
    """This process's place in the job (``rank 0 of 1`` when not under torchrun)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def ranks_from_env() -> Ranks:
    """The ranks torchrun (or any launcher using its variables) gave this process."""
    env = os.environ
    return Ranks(int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0)))


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto``: this process's GPU if there is one, else the CPU; otherwise the named device
    (``cuda`` without an index means GPU ``local_rank``)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise OptionError(f"--device must be auto, cpu, cuda or cuda:N, not {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise OptionError(f"--device {name}: no CUDA GPU is available on this machine; use --device cpu or auto")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise OptionError(f"--device {name}: this machine has {torch.cuda.device_count()} GPU(s)")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
    return device


@contextlib.contextmanager
def start(device_name: str) -> Iterator[tuple[Ranks, torch.device]]:
    """Join the process group (if launched by torchrun) and pick this rank's device."""
    ranks = ranks_from_env()
    device = pick_device(device_name, ranks.local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not ranks.active:
        yield ranks, device
        return
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        yield ranks, device
    finally:
        dist.destroy_process_group()


def barrier(ranks: Ranks) -> None:
    if ranks.active:
        dist.barrier()


def all_finite(loss: torch.Tensor, ranks: Ranks) -> bool:
    """Whether the loss is finite on every rank (all ranks must stop together, or they hang)."""
    ok = torch.isfinite(loss.detach()).to(torch.float32).reshape(1)
    if ranks.active:
        dist.all_reduce(ok, op=dist.ReduceOp.MIN)
    return bool(ok.item())


def broadcast_buffers(model: torch.nn.Module, ranks: Ranks) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every rank."""
    if ranks.active:
        for buffer in model.buffers():
            dist.broadcast(buffer, 0)


def sum_over_ranks(values: list[float], ranks: Ranks, device: torch.device) -> list[float]:
    """Element-wise sum of a few numbers over the ranks (e.g. loss sums and sample counts)."""
    if not ranks.active:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def gather_arrays(arrays: tuple[np.ndarray, ...], ranks: Ranks) -> tuple[np.ndarray, ...]:
    """Concatenate each array over the ranks (rank order), on every rank."""
    if not ranks.active:
        return arrays
    parts: list = [None] * ranks.world
    dist.all_gather_object(parts, arrays)
    return tuple(np.concatenate([p[i] for p in parts]) for i in range(len(arrays)))
