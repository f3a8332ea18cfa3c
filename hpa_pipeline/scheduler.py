"""Running sample tasks on Dask with a bounded number in flight.

Where the tasks run (``dask_client``):

- ``cluster="threads"`` (default): an in-process ``distributed`` cluster with ``workers``
  threads (Dask's local scheduler; TIFF decoding, OpenCV and Blosc release the GIL, so
  threads scale, and TIFF bytes are handed over without copies);
- ``cluster="processes"``: a ``LocalCluster`` of ``workers`` single-threaded processes, each
  restarted by its nanny if it dies;
- ``scheduler="tcp://host:8786"``: any running ``dask.distributed`` scheduler.

At most ``max_in_flight`` tasks are submitted at once, so memory stays bounded whatever the
dataset size: the job iterator is only advanced when a slot frees up. A task whose worker
died (or whose scattered input was lost with it) is submitted again, up to ``retries`` times,
from the job the coordinator still holds; tasks are idempotent (each writes its own shards).
"""
from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Iterator

CLUSTERS = ("threads", "processes")


@contextlib.contextmanager
def dask_client(scheduler: str | None = None, workers: int = 2, cluster: str = "threads") -> Iterator:
    """A ``distributed.Client``: connected to ``scheduler`` or to a local cluster of ``cluster`` kind."""
    from distributed import Client, LocalCluster

    logging.getLogger("distributed").setLevel(logging.ERROR)
    if scheduler:
        with Client(scheduler) as client:
            yield client
        return
    if cluster not in CLUSTERS:
        raise ValueError(f"unknown cluster {cluster!r}; choose from {CLUSTERS}")
    processes = cluster == "processes"
    with LocalCluster(n_workers=max(1, workers) if processes else 1,
                      threads_per_worker=1 if processes else max(1, workers),
                      processes=processes, dashboard_address=None) as local, Client(local) as client:
        yield client


def _is_lost_worker(exc: BaseException) -> bool:
    """The task did not fail by itself: its worker died, or its input died with a worker."""
    from distributed import KilledWorker
    from distributed.client import FutureCancelledError

    return isinstance(exc, (KilledWorker, FutureCancelledError, OSError)) or "lost" in str(exc).lower()


def run_bounded(client, fn: Callable, jobs: Iterable, max_in_flight: int,
                on_result: Callable, on_error: Callable, retries: int = 2) -> None:
    """Submit ``fn(job)`` for each job, at most ``max_in_flight`` pending; results in completion order.

    ``on_result(result)`` gets each task's return value; ``on_error(job, exc)`` gets a task that
    raised, or whose workers died more than ``retries`` times.
    """
    from distributed import as_completed

    pending = as_completed(with_results=False)
    jobs_of: dict = {}

    def submit(job, attempt: int) -> None:
        # Scatter first: a job may carry ~20 MB of TIFF bytes, which distributed would
        # otherwise pickle into the task graph (slow, and it warns about large graphs).
        # A worker that just died can fail the scatter itself: try again after a pause.
        for pause in (0.2, 1.0, 3.0, None):
            try:
                [data] = client.scatter([job], hash=False)
                break
            except OSError:  # distributed's CommClosedError is an OSError
                if pause is None:
                    raise
                time.sleep(pause)
        future = client.submit(fn, data, pure=False)
        jobs_of[future.key] = (job, attempt)
        pending.add(future)

    def settle(future) -> None:
        job, attempt = jobs_of.pop(future.key)
        try:
            result = future.result()
        except Exception as exc:  # noqa: BLE001 - reported per sample, the run goes on
            future.release()
            if attempt < retries and _is_lost_worker(exc):
                submit(job, attempt + 1)
            else:
                on_error(job, exc)
            return
        future.release()
        on_result(result)

    for job in jobs:
        while pending.count() >= max_in_flight:
            settle(next(pending))
        submit(job, 0)
    while pending.count():
        settle(next(pending))


def total_threads(client) -> int:
    """Worker threads of the cluster a client is connected to."""
    return max(1, sum(client.nthreads().values()))
