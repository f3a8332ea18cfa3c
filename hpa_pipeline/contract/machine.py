"""Facts about the machine that both halves size their work by, and the one setting they share.

One helper for the usable core count: ``os.cpu_count()`` counts every core of the host, while a
container or a batch job limited by CPU affinity (``taskset``, cgroups' cpusets, SLURM) may use
only some of them; sizing a pool by the host's count oversubscribes the cores it was given.
"""
import os


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
