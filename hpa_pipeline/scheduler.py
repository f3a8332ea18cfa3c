"""Running sample tasks on Dask with a bounded number in flight.

By default an in-process ``distributed`` cluster with ``workers`` threads (Dask's local
scheduler; TIFF decoding, OpenCV and Blosc release the GIL, so threads scale); ``scheduler``
takes the address of any running ``dask.distributed`` scheduler instead. At most
``max_in_flight`` tasks are submitted at once, so memory stays bounded whatever the dataset
size: the job iterator is only advanced when a slot frees up.
"""
from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable, Iterator


@contextlib.contextmanager
def dask_client(scheduler: str | None = None, workers: int = 2) -> Iterator:
    """A ``distributed.Client``: connected to ``scheduler`` or to a local in-process cluster."""
    from distributed import Client, LocalCluster

    logging.getLogger("distributed").setLevel(logging.WARNING)
    if scheduler:
        with Client(scheduler) as client:
            yield client
        return
    with LocalCluster(n_workers=1, threads_per_worker=max(1, workers), processes=False,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        yield client


def run_bounded(client, fn: Callable, jobs: Iterable, max_in_flight: int,
                on_result: Callable, on_error: Callable) -> None:
    """Submit ``fn(job)`` for each job, at most ``max_in_flight`` pending; results in completion order.

    ``on_result(result)`` gets each task's return value; ``on_error(job, exc)`` gets a task that
    raised or whose workers kept dying (``KilledWorker``).
    """
    from distributed import as_completed

    pending = as_completed(with_results=False)
    jobs_of = {}

    def settle(future):
        job = jobs_of.pop(future.key)
        try:
            on_result(future.result())
        except Exception as exc:  # noqa: BLE001 - reported per sample, the run goes on
            on_error(job, exc)
        future.release()

    for job in jobs:
        while pending.count() >= max_in_flight:
            settle(next(pending))
        # Scatter first: a job may carry ~20 MB of TIFF bytes, which distributed would
        # otherwise pickle into the task graph (slow, and it warns about large graphs).
        [data] = client.scatter([job], hash=False)
        future = client.submit(fn, data, pure=False)
        jobs_of[future.key] = job
        pending.add(future)
    for future in pending:
        settle(future)


def total_threads(client) -> int:
    """Worker threads of the cluster a client is connected to."""
    return max(1, sum(client.nthreads().values()))
