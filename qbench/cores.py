"""How many CPU cores this process may use: its share in a grid, else the machine's.

Grid workers set ``OMP_NUM_THREADS`` to their share of the cores before any library loads
(:func:`qbench.worker.set_worker_threads`); a plain run uses every core its affinity mask
allows. Thread counts queried from a library are no guide: torch and faiss may share one
OpenMP runtime, so a run that sets torch to one thread also sets faiss to one.
"""

from __future__ import annotations

import os


def available_cores() -> int:
    """Cores in this process's affinity mask (the CPU count where there is none)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        return os.cpu_count() or 1


def cpu_share() -> int:
    """This process's share of the cores: ``OMP_NUM_THREADS`` when set to a positive
    integer, else :func:`available_cores`."""
    share = os.environ.get("OMP_NUM_THREADS", "")
    return int(share) if share.isdigit() and int(share) > 0 else available_cores()
