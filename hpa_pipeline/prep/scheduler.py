"""Running sample tasks on Dask with a bounded number in flight.

Where the tasks run (``dask_client``):

- ``cluster="threads"`` (default): an in-process ``distributed`` cluster with ``workers``
  threads (Dask's local scheduler; TIFF decoding, OpenCV and Blosc release the GIL, so
  threads scale, and TIFF bytes are handed over without copies);
- ``cluster="processes"``: a ``LocalCluster`` of ``workers`` processes with
  ``threads_per_worker`` threads each (1 by default), each restarted by its nanny if it dies;
- ``cluster="pipelines/cluster-slurm.yaml"``: a cluster described by a recipe (below): a
  ``dask-jobqueue`` SLURM or PBS cluster, or a Dask Kubernetes operator cluster;
- ``scheduler="tcp://host:8786"``: any running ``dask.distributed`` scheduler.

At most ``max_in_flight`` tasks are submitted at once, so memory stays bounded whatever the
dataset size: the job iterator is only advanced when a slot frees up. A task whose worker
died (or whose scattered input was lost with it) is submitted again, up to ``retries`` times,
from the job the coordinator still holds; tasks are idempotent (each writes its own shards).

A cluster recipe is a small YAML file::

    kind: slurm            # slurm | pbs (dask-jobqueue) | kubernetes (dask-kubernetes operator)
    workers: 8             # jobs (slurm, pbs) or worker pods (kubernetes) to start
    options:               # keyword arguments of SLURMCluster / PBSCluster / make_cluster_spec
      cores: 4
      memory: 16GB

The options are the engine's own, documented by dask-jobqueue and dask-kubernetes; nothing
is renamed. The store must be reachable from the workers: a shared file system path, or an
object-store URL (``s3://...``).
"""
from __future__ import annotations

import contextlib
import logging
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from ..common.progress import Progress, ProgressCallback, report
from ..contract.errors import HpaError

#: what Dask's own loggers show while a cluster runs: its errors (``hpa-pipe -vv``: INFO too)
DASK_LOG_LEVEL = logging.ERROR
log = logging.getLogger(__name__)

LOCAL_CLUSTERS = ("threads", "processes")
#: seconds to wait for the first worker of a cluster (--worker-timeout); a queue may be slow
WORKER_TIMEOUT = 600.0
SUBMIT_COMMANDS = {"slurm": "sbatch", "pbs": "qsub"}

RECIPE_KINDS = {  # kind: (module, class, extra to install)
    "slurm": ("dask_jobqueue", "SLURMCluster", "hpa-pipeline[jobqueue]"),
    "pbs": ("dask_jobqueue", "PBSCluster", "hpa-pipeline[jobqueue]"),
    "kubernetes": ("dask_kubernetes.operator", "KubeCluster", "hpa-pipeline[kubernetes]"),
}


class ClusterError(HpaError, ValueError):
    """A cluster choice or recipe that cannot be used; says why."""


def read_cluster_recipe(path: str | Path) -> dict:
    """The ``kind``, ``workers`` and ``options`` of a cluster recipe, checked."""
    import yaml

    try:
        recipe = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ClusterError(f"cannot read cluster recipe {path}: {exc}") from None
    kind = recipe.get("kind")
    if kind not in RECIPE_KINDS:
        raise ClusterError(f"{path}: kind must be one of {sorted(RECIPE_KINDS)}, not {kind!r}")
    workers = recipe.get("workers", 1)
    if not isinstance(workers, int) or workers < 1:
        raise ClusterError(f"{path}: workers must be a positive integer, not {workers!r}")
    options = recipe.get("options") or {}
    if not isinstance(options, dict):
        raise ClusterError(f"{path}: options must be a mapping of {RECIPE_KINDS[kind][1]} arguments")
    unknown = sorted(set(recipe) - {"kind", "workers", "options"})
    if unknown:
        raise ClusterError(f"{path}: unknown keys {unknown}; engine arguments go under options:")
    return {"kind": kind, "workers": workers, "options": options}


def _engine(kind: str):
    import importlib

    module, name, extra = RECIPE_KINDS[kind]
    try:
        return getattr(importlib.import_module(module), name)
    except ImportError:
        raise ClusterError(f"a {kind} cluster needs {module.split('.')[0]}: pip install '{extra}'") from None


def kubernetes_spec(recipe: dict) -> dict:
    """The DaskCluster resource a Kubernetes recipe describes (made without contacting a cluster)."""
    from dask_kubernetes.operator import make_cluster_spec

    options = {"name": "hpa-pipeline", **recipe["options"], "n_workers": recipe["workers"]}
    return make_cluster_spec(**options)


def check_scheduler(address: str, timeout: float = 5.0) -> None:
    """A Dask scheduler answers at ``address`` (``tcp://host:port``); checked before any work."""
    import socket
    from urllib.parse import urlparse

    parsed = urlparse(address if "://" in address else f"tcp://{address}")
    if parsed.hostname is None or parsed.port is None:
        raise ClusterError(f"--scheduler {address}: expected tcp://HOST:PORT")
    try:
        socket.create_connection((parsed.hostname, parsed.port), timeout=timeout).close()
    except OSError as exc:
        raise ClusterError(f"no Dask scheduler answers at {address} ({exc.strerror or exc}); start one "
                           f"(dask scheduler) or check the address") from None


def check_submit_command(recipe: dict) -> None:
    """The batch system's submit command is on PATH (else dask-jobqueue fails in the background)."""
    import shutil

    command = SUBMIT_COMMANDS.get(recipe["kind"])
    if command and shutil.which(command) is None:
        raise ClusterError(f"a {recipe['kind']} cluster submits jobs with {command}, which is not on PATH here; "
                           f"run on the cluster's login node, or use --cluster threads|processes")


def _is_local(cluster: str) -> bool:
    """``threads``/``processes`` (True), a recipe file (False), or an error naming the choices."""
    if cluster in LOCAL_CLUSTERS:
        return True
    if Path(cluster).suffix in (".yaml", ".yml"):
        return False
    raise ClusterError(f"unknown cluster {cluster!r}: threads, processes, or a recipe .yaml "
                       f"(see pipelines/cluster-*.yaml)")


def check_cluster_choice(scheduler: str | None, cluster: str) -> None:
    """Everything about where the work runs that can be checked before a store is created."""
    if scheduler:
        check_scheduler(scheduler)
    elif not _is_local(cluster):
        recipe = read_cluster_recipe(cluster)
        check_submit_command(recipe)
        _engine(recipe["kind"])


def cluster_from_recipe(recipe: dict):
    """Start the cluster of a recipe and ask for its workers (they join as the queue starts them)."""
    check_submit_command(recipe)
    engine = _engine(recipe["kind"])
    if recipe["kind"] == "kubernetes":
        return engine(custom_cluster_spec=kubernetes_spec(recipe))
    cluster = engine(**recipe["options"])
    cluster.scale(jobs=recipe["workers"])
    return cluster


def cluster_line(info: dict) -> str:
    """The one line that says which cluster runs the samples (from :func:`describe`)."""
    if info["scheduler"].startswith("this process"):
        return "dask: not started; each sample runs in this process, one at a time"
    if info["scheduler"].startswith("inproc://"):  # threads of this process: no address or dashboard to visit
        return f"dask: {info['workers']} worker(s), {info['threads']} thread(s) in this process"
    dashboard = (f"; dashboard {info['dashboard']}" if info["dashboard"] else
                 " (no dashboard: it comes with --cluster processes, a recipe or --scheduler, and needs bokeh)")
    return f"dask: {info['workers']} worker(s), {info['threads']} thread(s) at {info['scheduler']}{dashboard}"


def announcing(progress: ProgressCallback | None, task: str) -> Callable[[dict], None]:
    """The ``on_cluster`` of :func:`dask_client` that reports the cluster line as a message of ``task``."""
    return lambda info: report(progress, Progress(task, message=cluster_line(info)))


@contextlib.contextmanager
def dask_client(scheduler: str | None = None, workers: int = 2, cluster: str = "threads",
                on_cluster: Callable[[dict], None] | None = None, threads_per_worker: int = 1,
                worker_timeout: float = WORKER_TIMEOUT) -> Iterator:
    """A ``distributed.Client``: connected to ``scheduler``, to a local cluster (``threads`` or
    ``processes``), or to the cluster a recipe file describes.

    It yields once the first worker has joined (a batch queue may take a while to start one);
    ``on_cluster(describe(client))`` then gets the dashboard link and worker counts.
    """
    if scheduler is None and cluster == "threads" and workers <= 1:
        # one worker thread: the tasks run in this thread, without starting (or importing) Dask
        if on_cluster:
            on_cluster({"scheduler": "this process (no Dask cluster for --workers 1)", "dashboard": None,
                        "workers": 1, "threads": 1})
        yield None
        return
    from distributed import Client, LocalCluster

    logging.getLogger("distributed").setLevel(DASK_LOG_LEVEL)
    if scheduler:
        check_scheduler(scheduler)
        with Client(scheduler, timeout=30) as client:
            yield _ready(client, on_cluster, True, worker_timeout)
        return
    if _is_local(cluster):
        processes = cluster == "processes"
        with warnings.catch_warnings():  # "Port 8787 is already in use": another port is taken, nothing is wrong
            warnings.filterwarnings("ignore", message="Port .* is already in use", category=UserWarning)
            local = LocalCluster(n_workers=max(1, workers) if processes else 1,
                                 threads_per_worker=max(1, threads_per_worker) if processes else max(1, workers),
                                 processes=processes, dashboard_address=_dashboard_address() if processes else None)
        with local, Client(local) as client:
            # without a dashboard, distributed still answers on its HTTP port (health, metrics) and
            # lists it as "dashboard": the link would be a 404, so say there is none
            yield _ready(client, on_cluster, processes, worker_timeout)
        return
    recipe = read_cluster_recipe(cluster)
    with contextlib.ExitStack() as stack:
        with _engine_errors() as errors:
            try:
                local = cluster_from_recipe(recipe)
                stack.callback(_close_quietly, local)  # a failed start must not hide why it failed
                local.__enter__()
                client = Client(local)
                stack.callback(_close_quietly, client)
            except ClusterError:
                raise
            except Exception as exc:  # the engine's own failure, often only in its log
                reason = errors[0] if errors else f"{type(exc).__name__}: {exc}"
                raise ClusterError(f"the {recipe['kind']} cluster could not start: {reason[:500]}") from None
        yield _ready(client, on_cluster, True, worker_timeout)


def _close_quietly(thing) -> None:
    try:
        thing.close()
    except Exception:  # noqa: BLE001 - closing a cluster that never started raises; the cause is reported
        pass


class _Captured(logging.Handler):
    """Errors the cluster engine logs in the background (a rejected job submission), kept to be
    reported as one message instead of a screen of asyncio tracebacks."""

    def __init__(self):
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record):
        text = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            text = f"{text}: {record.exc_info[1]}"
        self.messages.append(text.strip())


@contextlib.contextmanager
def _engine_errors() -> Iterator[list[str]]:
    """Collect (instead of printing) the errors the cluster engine logs in the background."""
    captured = _Captured()
    loggers = [logging.getLogger(name) for name in ("distributed", "distributed.deploy", "dask_jobqueue", "asyncio",
                                                    "tornado")]
    saved = [(lg, lg.propagate) for lg in loggers]
    for lg in loggers:
        lg.addHandler(captured)
        lg.propagate = False
    try:
        yield captured.messages
    finally:
        for lg, propagate in saved:
            lg.removeHandler(captured)
            lg.propagate = propagate


def _ready(client, on_cluster, serves_dashboard: bool = True, worker_timeout: float = WORKER_TIMEOUT):
    """Wait for the first worker: at most ``worker_timeout`` seconds, failing at once with the
    engine's own error when it reports one (e.g. sbatch rejected the job)."""
    with _engine_errors() as errors:
        deadline = time.monotonic() + worker_timeout
        while not client.scheduler_info().get("workers"):
            if errors:
                raise ClusterError(f"the cluster could not start a worker: {errors[0][:500]}")
            if time.monotonic() > deadline:
                raise ClusterError(f"no Dask worker joined within {worker_timeout:.0f} s (--worker-timeout); check the "
                                   f"batch queue and the workers' logs")
            time.sleep(0.2)
    if on_cluster:
        on_cluster(describe(client, serves_dashboard))
    return client


def _dashboard_address() -> str | None:
    """Dask's default dashboard port (or the next free one) when bokeh is installed, else none.

    The in-process ``threads`` cluster runs without one: starting it costs ~1.5 s, a fifth of
    a 48-sample benchmark run; ``--cluster processes`` and recipe clusters have it."""
    try:
        import bokeh  # noqa: F401
    except ImportError:
        return None
    return ":8787"


def describe(client, serves_dashboard: bool = True) -> dict:
    """Scheduler address, dashboard link (or None), worker and thread counts, for the CLI to print."""
    info = client.scheduler_info()
    link = client.dashboard_link if serves_dashboard and "dashboard" in info.get("services", {}) else None
    return {"scheduler": client.scheduler.address, "dashboard": link,
            "workers": len(info.get("workers", {})), "threads": total_threads(client)}


def _is_lost_worker(exc: BaseException) -> bool:
    """The task did not fail by itself: its worker died, or its input died with a worker."""
    from distributed import KilledWorker
    from distributed.client import FutureCancelledError

    return isinstance(exc, (KilledWorker, FutureCancelledError, OSError)) or "lost" in str(exc).lower()


def in_flight_limit(client, per_thread: int = 2, every_seconds: float = 1.0) -> Callable[[], int]:
    """``per_thread`` tasks per worker thread, recounted at most once a second: workers of a
    batch-queue cluster keep joining (and leaving) during a run."""
    if client is None:
        return lambda: per_thread
    cache = {"at": -float("inf"), "limit": per_thread}

    def limit() -> int:
        if time.monotonic() - cache["at"] > every_seconds:
            cache["at"], cache["limit"] = time.monotonic(), per_thread * total_threads(client)
        return cache["limit"]
    return limit


def _run_here(fn: Callable, jobs: Iterable, on_result: Callable, on_error: Callable) -> None:
    """:func:`run_bounded` without a cluster: each job in this thread, in order."""
    for job in jobs:
        try:
            result = fn(job)
        except Exception as exc:  # noqa: BLE001 - reported per sample, the run goes on
            on_error(job, exc)
            continue
        on_result(result)


def run_bounded(client, fn: Callable, jobs: Iterable, max_in_flight: Callable[[], int],
                on_result: Callable, on_error: Callable, retries: int = 2) -> None:
    """Submit ``fn(job)`` for each job, at most ``max_in_flight()`` pending (the current limit,
    e.g. :func:`in_flight_limit`); results in completion order.

    ``on_result(result)`` gets each task's return value; ``on_error(job, exc)`` gets a task that
    raised, or whose workers died more than ``retries`` times. Without a client (``--workers 1``)
    each job runs here, in order.
    """
    if client is None:
        _run_here(fn, jobs, on_result, on_error)
        return
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
        while pending.count() >= max_in_flight():
            settle(next(pending))
        submit(job, 0)
    while pending.count():
        settle(next(pending))


def total_threads(client) -> int:
    """Worker threads of the cluster a client is connected to."""
    return max(1, sum(client.nthreads().values()))
