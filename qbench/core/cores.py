"""How many CPU cores this process may use: its share in a grid, else the machine's.

Grid workers set ``OMP_NUM_THREADS`` to their share of the cores before any library loads
(:func:`qbench.grid.worker.set_worker_threads`); a plain run uses every core its affinity mask
allows. Thread counts queried from a library are no guide: torch and faiss may share one
OpenMP runtime, so a run that sets torch to one thread also sets faiss to one.
"""

from __future__ import annotations

import os
import threading

_thread = threading.local()


def available_cores() -> int:
    """Cores in this process's affinity mask (the CPU count where there is none)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        return os.cpu_count() or 1


def keep_to_one_core() -> None:
    """Make :func:`cpu_share` answer 1 in the calling thread (a worker thread of a pool
    that already spreads work over the cores, e.g. :func:`qbench.quant.quantizers.side_by_side`),
    so that nothing it calls starts threads of its own."""
    _thread.one_core = True


def cpu_share() -> int:
    """This process's share of the cores: 1 in a thread marked by :func:`keep_to_one_core`,
    else ``OMP_NUM_THREADS`` when set to a positive integer, else :func:`available_cores`."""
    if getattr(_thread, "one_core", False):
        return 1
    share = os.environ.get("OMP_NUM_THREADS", "")
    return int(share) if share.isdigit() and int(share) > 0 else available_cores()
