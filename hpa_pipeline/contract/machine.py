"""Facts about the machine that both halves size their work by.

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
