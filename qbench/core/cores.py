"""How many CPU cores this process may use: its share in a grid, else the machine's.

Grid workers set ``OMP_NUM_THREADS`` to their share of the cores before any library loads
(:func:`set_worker_threads`); a plain run uses every core its affinity mask
allows. Thread counts queried from a library are no guide: torch and faiss may share one
OpenMP runtime, so a run that sets torch to one thread also sets faiss to one.
"""

from __future__ import annotations

import os
import sys
import threading

_thread = threading.local()

THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
# intra-op threads of this worker process (None: the main process, no limit)
_worker_threads: int | None = None


def available_cores() -> int:
    """Cores in this process's affinity mask (the CPU count where there is none)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        return os.cpu_count() or 1


def keep_to_one_core() -> None:
    """Make :func:`cpu_share` answer 1 in the calling thread (a worker thread of a pool
    that already spreads work over the cores, e.g. :func:`qbench.quant.side_by_side`),
    so that nothing it calls starts threads of its own."""
    _thread.one_core = True


def cpu_share() -> int:
    """This process's share of the cores: 1 in a thread marked by :func:`keep_to_one_core`,
    else ``OMP_NUM_THREADS`` when set to a positive integer, else :func:`available_cores`."""
    if getattr(_thread, "one_core", False):
        return 1
    share = os.environ.get("OMP_NUM_THREADS", "")
    return int(share) if share.isdigit() and int(share) > 0 else available_cores()


def worker_threads(jobs: int) -> int:
    """Threads per worker: the usable cores shared out, at least 1 (1 each for 2 jobs on 2
    cores; oversubscribed OpenMP threads spin and slow small runs down many times)."""
    return max(1, available_cores() // jobs)


def set_worker_threads(threads: int) -> None:
    """Make this worker process (of any backend) run with ``threads`` torch, faiss (OpenMP)
    and BLAS threads: the environment is set for libraries not loaded yet, the ones already
    loaded (numpy's and scipy's BLAS, imported with qbench) are limited through
    threadpoolctl, torch (when loaded) at once, and :func:`use_worker_threads` again before
    each run (a run restores torch's count when it ends)."""
    from threadpoolctl import threadpool_limits

    global _worker_threads
    _worker_threads = threads
    for name in THREAD_ENV:
        os.environ[name] = str(threads)
    threadpool_limits(limits=threads)
    use_worker_threads()


def use_worker_threads() -> None:
    """Set torch's thread count to this worker's (nothing in the main process, or before
    torch is loaded: it then reads ``OMP_NUM_THREADS``)."""
    if _worker_threads is not None and "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(_worker_threads)
