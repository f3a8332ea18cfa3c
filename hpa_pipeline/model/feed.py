"""The training feed: batches delivered to the training process at almost no cost to it.

PyTorch's DataLoader reads crops fast enough, but on a fast GPU delivering them takes time the
training thread needs (benchmarks/bench_gpu.py measures both): each batch is written by a worker into its own
array, copied into a new shared-memory block to cross the process boundary, rebuilt and
unmapped by the training process, copied again into pinned memory by its pin-memory thread
(holding the GIL), and only then copied to the GPU. More workers made it worse.

:class:`BatchFeed` (the design of FFCV's loader, with processes): a ring of batch **slots**
allocated once in shared memory (and registered with CUDA as pinned memory once, on a GPU);
worker processes that live for the whole run fill a slot in place (a crop is read from the
shard file straight into its place in the slot: ``ShardReader`` uses ``preadv`` into the slot's
rows for uncompressed stores) and answer with two integers; the training process copies the
slot to the GPU on a side CUDA stream while the previous batch trains, and gives the slot back
when that copy has finished. Per image: one copy from the file into the slot, one to the GPU;
per batch, the training process sends one small message and receives one.

Batches come out in the order the sampler gave (so runs are reproducible and resumable), each
item carrying its epoch, so workers need no ``set_epoch``. A worker's exception is raised in
the training process with the worker's traceback; a worker that dies is an error, not a hang.
"""
from __future__ import annotations

import math
import os
import multiprocessing
import queue
import time
import traceback
from collections.abc import Iterable, Iterator

import numpy as np
import torch

from ..contract.labels import N_CLASSES
from ..common.machine import (die_with_parent, leave_interrupts_to_the_parent, one_thread_per_task, parent_alive,
                              start_method)
from ..contract.errors import HpaError, sendable

#: seconds to wait for a batch before checking that the workers are alive
POLL_S = 5.0


class FeedError(RuntimeError):
    """A worker failed with an unexpected exception (a bug: its traceback is in the message)."""


class LoaderWorkerDied(HpaError, FeedError):
    """A worker process ended without answering: killed, most often by the OOM killer."""


def _worker_main(layout, tensors: dict, tasks, results, parent_pid: int) -> None:
    """A feed worker: fill the slot each task names, answer ``(seq, slot, count, error)``; it
    ends with the training process, however that ends (SIGKILL included)."""
    die_with_parent(parent_pid)
    leave_interrupts_to_the_parent()
    one_thread_per_task()
    arrays = {name: t.numpy() for name, t in tensors.items()}
    while True:
        try:
            task = tasks.get(timeout=POLL_S)
        except queue.Empty:
            if not parent_alive(parent_pid):  # where the OS cannot end it with its parent
                return
            continue
        if task is None:
            return
        seq, slot, items = task
        try:
            layout.fill(items, {name: a[slot] for name, a in arrays.items()})
            results.put((seq, slot, len(items), None))
        except HpaError as exc:  # the data's problem (a damaged shard), not a bug: raised there as itself
            results.put((seq, slot, 0, sendable(exc)))
        except Exception:  # sent to the training process, which raises it there
            results.put((seq, slot, 0, traceback.format_exc()))


class CropSlots:
    """What a slot holds for a :class:`.data.StoreDataset`: its items' pixels (crops or whole
    images), labels, sample indices and augmentation; a batch is those four tensors.

    A slot layout says what a slot holds (:meth:`shapes`), how a worker fills one (:meth:`fill`,
    on numpy views of the slot), which of its tensors go to the device (:meth:`parts`) and what
    the training process is handed (:meth:`batch`); :class:`.chunk_decode.CompressedSlots` is
    the other one.
    """

    def __init__(self, dataset):
        self.dataset = dataset

    def shapes(self, batch_size: int) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        size = self.dataset.item_size
        return {"images": ((batch_size, 4, size, size), _torch_dtype(self.dataset)),
                "labels": ((batch_size, N_CLASSES), torch.float32),
                "indices": ((batch_size,), torch.int64),
                "augmentation": ((batch_size, 9), torch.float32)}

    def fill(self, items: list, slot: dict[str, np.ndarray]) -> None:
        for j, item in enumerate(items):
            slot["labels"][j], slot["indices"][j], slot["augmentation"][j] = self.dataset.fill(item, slot["images"][j])

    def parts(self, slot: dict[str, torch.Tensor], count: int) -> dict[str, torch.Tensor]:
        return {name: t[:count] for name, t in slot.items()}

    def batch(self, parts: dict[str, torch.Tensor], slot: dict[str, torch.Tensor], count: int):
        return parts["images"], parts["labels"], parts["indices"], parts["augmentation"]


def raise_from_worker(error: HpaError | str) -> None:
    """Raise what a worker process sent (:func:`..contract.errors.sendable`): the user's error
    as itself, anything else as a bug with the worker's traceback."""
    if isinstance(error, HpaError):
        raise error
    raise FeedError(f"a loader worker failed:\n{error}")


def _register_pinned(tensor: torch.Tensor) -> bool:
    """Page-lock a shared-memory tensor in place (``cudaHostRegister``), so that copies from it
    to the GPU are asynchronous DMA; False where CUDA refuses.

    A refusal is also CUDA's "last error", which PyTorch's check after the next kernel launch
    would raise as that kernel's failure: it is cleared here."""
    code = torch.cuda.cudart().cudaHostRegister(tensor.data_ptr(), tensor.numel() * tensor.element_size(), 0)
    if int(code) != 0:
        _clear_cuda_error()
        return False
    return True


def _unregister_pinned(tensor: torch.Tensor) -> None:
    """Undo :func:`_register_pinned` before the memory is unmapped. A registration outliving its
    mapping makes CUDA refuse whatever is later mapped at those addresses ("resource already
    mapped", which shows up as the next convolution's failure)."""
    if int(torch.cuda.cudart().cudaHostUnregister(tensor.data_ptr())) != 0:
        _clear_cuda_error()


def _clear_cuda_error() -> None:
    """``cudaGetLastError()`` from the CUDA runtime this process has loaded (PyTorch binds no
    call for it); nothing where none is found."""
    import ctypes

    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if "libcudart.so" in line}
    except OSError:
        return
    for path in paths:
        try:
            ctypes.CDLL(path).cudaGetLastError()
        except (OSError, AttributeError):
            continue


class BatchFeed:
    """Batches ``(images, targets, sample indices, augmentation)`` of a :class:`.data.StoreDataset`
    from ``workers`` persistent processes through ``slots`` shared batch buffers (another
    ``layout`` fills and hands out other batches: :class:`.chunk_decode.CompressedSlots`).

    ``device``: where batches are delivered; on CUDA they arrive there (copied on a side stream,
    the current stream waiting for the copy), elsewhere they are views of the slot that stay
    valid until the next batch is asked for.
    """

    def __init__(self, dataset, batch_size: int, workers: int, device: torch.device | str = "cpu",
                 slots: int | None = None, context: str | None = None, layout=None):
        if workers < 1:
            raise ValueError("a BatchFeed needs at least one worker process")
        self.dataset, self.batch_size, self.workers = dataset, batch_size, workers
        self.layout = layout or CropSlots(dataset)
        self.device = torch.device(device)
        self.n_slots = slots or max(4, 2 * workers)
        # every part of a slot that is handed out was written by its worker first: nothing to clear
        self.tensors = {name: torch.empty((self.n_slots, *shape), dtype=dtype).share_memory_()
                        for name, (shape, dtype) in self.layout.shapes(batch_size).items()}
        self.pinned = False
        if self.device.type == "cuda":  # every slot tensor pinned, or none (then plain synchronous copies)
            registered = [t for t in self._slot_tensors() if _register_pinned(t)]
            self.pinned = len(registered) == len(self.tensors)
            for tensor in registered if not self.pinned else ():
                _unregister_pinned(tensor)
        self.copy_stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        self._context = multiprocessing.get_context(context or start_method())
        self._processes: list = []
        self.worker_starts = 0  # processes started over the feed's life (== workers: started once)
        self._copy_done: dict[int, torch.cuda.Event] = {}
        self.wait_s = 0.0  # time the training process spent blocked waiting for a batch
        self._window_start: float | None = None  # of the wait measured for autoscale()

    # -- workers ------------------------------------------------------------------------------

    def _start(self) -> None:
        if self._processes:
            return
        self.dataset.forget_readers()  # each worker opens its own files
        self._tasks, self._results = self._context.Queue(), self._context.Queue()
        for _ in range(self.workers):
            self._start_one()

    def _start_one(self) -> None:
        process = self._context.Process(
            target=_worker_main, daemon=True,
            args=(self.layout, self.tensors, self._tasks, self._results, os.getpid()))
        process.start()
        self._processes.append(process)
        self.worker_starts += 1

    def grow(self, workers: int) -> int:
        """Start more workers (never fewer), up to ``workers`` in all; they share the same queue,
        so a pass under way uses them at once. Returns the number of workers."""
        self._start()
        while len(self._processes) < workers:
            self._start_one()
        self.workers = len(self._processes)
        return self.workers

    def balance(self, max_workers: int, elapsed_s: float, threshold: float = 0.03) -> int:
        """Workers for the measured rates: if the training loop waited for batches more than
        ``threshold`` of ``elapsed_s``, the feed delivers about ``1 - wait`` of what the step
        consumes, so ``workers / (1 - wait)`` (and a fifth more) are started, at most
        ``max_workers``. Resets the wait count; returns the number of workers."""
        wait = min(self.wait_s / max(elapsed_s, 1e-9), 0.9)
        self.wait_s = 0.0
        if wait > threshold and self.workers < max_workers:
            return self.grow(min(max_workers, math.ceil(1.2 * self.workers / (1 - wait))))
        return self.workers

    def start_measuring(self) -> None:
        """Start the window of wait that :meth:`autoscale` reads: waits before this (start-up,
        the first batches) are not a sign of too few workers."""
        self.wait_s, self._window_start = 0.0, time.perf_counter()

    def autoscale(self, max_workers: int) -> int:
        """:meth:`balance` over the window since the last call or :meth:`start_measuring` (a
        no-op before that); returns the number of workers."""
        if self._window_start is None:
            return self.workers
        now = time.perf_counter()
        workers = self.balance(max_workers, now - self._window_start)
        self._window_start = now
        return workers

    def close(self, kill: bool = False) -> None:
        """Stop the workers (also done at exit: they are daemons); ``kill`` without waiting for
        the tasks still queued."""
        for process in self._processes:
            if kill:
                process.kill()
            elif process.is_alive():
                self._tasks.put(None)
        for process in self._processes:
            process.join(timeout=5)
            if process.is_alive():
                process.kill()
                process.join()
        self._processes = []
        self._unpin()

    def _unpin(self) -> None:
        """Unregister the slots from CUDA (once; after the last copy from them has finished)."""
        if not self.pinned:
            return
        if self._copy_done:
            torch.cuda.synchronize(self.device)
        for tensor in self._slot_tensors():
            _unregister_pinned(tensor)
        self.pinned = False

    def _slot_tensors(self) -> tuple[torch.Tensor, ...]:
        return tuple(self.tensors.values())

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def _receive(self) -> tuple[int, int, int]:
        started = time.perf_counter()
        try:
            return self._receive_waiting()
        finally:
            self.wait_s += time.perf_counter() - started

    def _receive_waiting(self) -> tuple[int, int, int]:
        while True:
            try:
                seq, slot, count, error = self._results.get(timeout=POLL_S)
            except queue.Empty:
                dead = [p for p in self._processes if not p.is_alive()]
                if dead:
                    how = ", ".join(f"process {p.pid} ended by {_ending(p.exitcode)}" for p in dead)
                    raise LoaderWorkerDied(f"a loader worker died: out of memory? ({how})",
                                           hint="use fewer --workers or a smaller --batch-size, or give the job "
                                                "more memory") from None
                continue
            if error is not None:
                raise_from_worker(error)
            return seq, slot, count

    # -- batches ------------------------------------------------------------------------------

    def batches(self, items: Iterable, drop_last: bool = False) -> Iterator:
        """The batches of ``items`` (dataset positions or ``(epoch, position)``), in order, as the
        slot layout makes them (four tensors for :class:`CropSlots`)."""
        self._start()
        chunks = in_batches(items, self.batch_size, drop_last)
        free = list(range(self.n_slots))
        sent = received = 0
        ready: dict[int, tuple[int, int]] = {}
        held = None  # the slot of the batch handed out last (CPU), or whose copy is in flight
        try:
            exhausted = False
            while True:
                while free and not exhausted:  # keep every free slot working
                    chunk = next(chunks, None)
                    if chunk is None:
                        exhausted = True
                        break
                    slot = free.pop()
                    self._wait_for_copy(slot)
                    self._tasks.put((sent, slot, chunk))
                    sent += 1
                if received == sent:
                    return
                while received not in ready:
                    seq, slot, count = self._receive()
                    ready[seq] = (slot, count)
                slot, count = ready.pop(received)
                received += 1
                batch = self._deliver(slot, count)
                if held is not None:
                    free.append(held)
                held = slot
                yield batch
        except Exception:
            self.close(kill=True)  # a failed worker's batch never comes: start afresh on the next pass
            raise
        finally:
            if self._processes:  # the consumer stopped early: drain what is still in flight
                for _ in range(sent - received - len(ready)):
                    self._receive()

    def _deliver(self, slot: int, count: int):
        views = {name: t[slot] for name, t in self.tensors.items()}
        parts = self.layout.parts(views, count)
        if self.copy_stream is None:
            return self.layout.batch(parts, views, count)
        with torch.cuda.stream(self.copy_stream):
            moved = {name: t.to(self.device, non_blocking=self.pinned) for name, t in parts.items()}
            done = torch.cuda.Event()
            done.record(self.copy_stream)
        current = torch.cuda.current_stream(self.device)
        current.wait_event(done)  # the GPU, not the host, waits for the copy
        for t in moved.values():
            t.record_stream(current)
        self._copy_done[slot] = done
        return self.layout.batch(moved, views, count)

    def _wait_for_copy(self, slot: int) -> None:
        """Before a slot is refilled: its copy to the GPU must have finished (long since, normally)."""
        done = self._copy_done.pop(slot, None)
        if done is not None:
            done.synchronize()


def _ending(exitcode: int | None) -> str:
    """How a worker process ended, in words (``-9``: SIGKILL, what the OOM killer sends)."""
    import signal

    if exitcode is not None and exitcode < 0:
        try:
            return signal.Signals(-exitcode).name
        except ValueError:
            return f"signal {-exitcode}"
    return f"exit status {exitcode}"


def in_batches(items: Iterable, size: int, drop_last: bool) -> Iterator[list]:
    """``items`` in lists of ``size`` (the last one shorter, or left out with ``drop_last``)."""
    chunk = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk and not drop_last:
        yield chunk


def _torch_dtype(dataset) -> torch.dtype:
    return {np.dtype("uint8"): torch.uint8, np.dtype("uint16"): torch.uint16}[dataset.dtype]
