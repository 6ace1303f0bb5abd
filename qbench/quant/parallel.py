"""The thread policy of small fits: one faiss (OpenMP) thread for a small training set
(:func:`fit_threads`), and a pool that runs small independent fits side by side, each on
one thread (:func:`fit_workers`, :func:`side_by_side`).

Layer: imports ``qbench.core`` only; no training engine, no method.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import faiss
import numpy as np

from qbench.core.cores import cpu_share, keep_to_one_core

SMALL_PROBLEM = 1 << 21
"""Training sets of at most this many floats (n * d) are fitted on one OpenMP thread."""


@contextlib.contextmanager
def fit_threads(x: np.ndarray) -> Iterator[None]:
    """Fit on one faiss (OpenMP) thread when ``x`` is small, then restore the count.

    The training sets of this benchmark are small (at most tens of thousands of vectors):
    each OPQ or k-means iteration is milliseconds of work, and with two threads the OpenMP
    barriers cost more than they save -- much more when other processes share the cores
    (OPQ of 1,000 x 66 vectors on 2 busy cores: 1.6-1.8 s on one thread, 9.9-11.9 s on two).
    """
    threads = faiss.omp_get_max_threads()
    small = x.size <= SMALL_PROBLEM and threads > 1
    if small:
        faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        if small:
            faiss.omp_set_num_threads(threads)


def fit_workers(size: int, fits: int) -> int:
    """How many fits of ``size`` floats each to run side by side (:func:`side_by_side`):
    one per core of this process's share (:func:`qbench.core.cores.cpu_share`) when they are
    small; 0 when they are not (one at a time in the caller, each on every thread)."""
    if size > SMALL_PROBLEM:
        return 0
    return max(1, min(fits, cpu_share()))


def _one_thread_each() -> None:
    faiss.omp_set_num_threads(1)
    keep_to_one_core()  # the evaluator scoring a fit opens no thread pool of its own


@contextlib.contextmanager
def side_by_side(workers: int) -> Iterator[ThreadPoolExecutor]:
    """A pool of ``workers`` threads for small independent fits: faiss and the evaluator
    (per thread) and BLAS (for the block) on one thread each.

    Two fits on two threads then overlap without thread barriers between them, and share
    busy cores gracefully; faiss and numpy release the GIL in their loops. Every fit runs
    single-threaded and seeded whatever ``workers`` is, so results do not depend on the
    pool's size or on the order fits finish in. On an error, fits not yet started are
    cancelled.
    """
    from threadpoolctl import threadpool_limits

    pool = ThreadPoolExecutor(workers, initializer=_one_thread_each)
    try:
        with threadpool_limits(1, user_api="blas"):
            yield pool
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    finally:
        pool.shutdown(wait=True)
