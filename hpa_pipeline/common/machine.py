"""Facts about the machine that both halves size their work by, and the settings they share.

One helper for the usable core count: ``os.cpu_count()`` counts every core of the host, while a
container or a batch job limited by CPU affinity (``taskset``, cgroups' cpusets, SLURM) may use
only some of them; sizing a pool by the host's count oversubscribes the cores it was given.
"""
import os
import sys


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity where the OS reports one), at least 1."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def one_blas_thread() -> None:
    """Keep NumPy's OpenBLAS to one thread unless the user set a count.

    OpenBLAS starts a thread per core when NumPy loads, and those threads spin, taking CPU from
    the decoder that ``ingest`` runs beside its workers; no stage does its work in NumPy's BLAS
    (the parallelism is Dask's tasks, the loader's workers and torch's own threads). It only
    works before anything imports NumPy, so the command line calls it first.
    """
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


def start_method() -> str:
    """How worker processes start: fork where the OS has it (the workers inherit the dataset
    and its open metadata at no cost), spawn elsewhere."""
    return "fork" if hasattr(os, "fork") else "spawn"


def one_thread_per_task() -> None:
    """OpenCV, Blosc and (where it is loaded) torch run on the calling thread only.

    Each would start its own thread pool. The parallelism of a build is its tasks and that of
    training its loader workers: N of them use N cores, and pools inside each only add thread
    hand-offs and spinning threads that take CPU from the others (in ``ingest``, from 7zz).
    Blosc starts its pool only when called from the main thread, which is where ``--workers 1``
    runs the samples. OpenCV is set only where it is installed: the training half
    (``pip install 'hpa-pipeline[train]'``) has none, and its loader workers call this too.
    """
    import numcodecs.blosc

    try:
        import cv2
    except ImportError:
        cv2 = None
    if cv2 is not None:
        cv2.setNumThreads(0)
    numcodecs.blosc.use_threads = False
    numcodecs.blosc.set_nthreads(1)
    if "torch" in sys.modules:  # never imported for it: the preprocessing half runs without torch
        sys.modules["torch"].set_num_threads(1)


def leave_interrupts_to_the_parent() -> None:
    """In a worker process: ignore Ctrl-C and SIGTERM, which a terminal or a batch system sends
    to the whole process group. The parent stops its workers when it handles them, and says
    what it kept in one line; a worker that raised KeyboardInterrupt would print its traceback."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def die_with_parent(parent_pid: int) -> None:
    """Make this worker process end when the process that started it (``parent_pid``) ends, even
    by SIGKILL: a loader worker blocked on its queue would otherwise live on, orphaned, holding
    its memory. Linux's ``PR_SET_PDEATHSIG`` does it; elsewhere the worker's own checks of
    :func:`parent_alive` must. A parent that died before the call is caught by the check here."""
    import signal

    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
    if not parent_alive(parent_pid):
        os._exit(1)


def parent_alive(parent_pid: int) -> bool:
    """Whether the process that started this one still runs (an orphan is adopted by another)."""
    return os.getppid() == parent_pid
