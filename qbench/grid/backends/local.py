"""The local backend: cells run in this process, or in ``jobs`` spawned worker processes.

Each worker gets cores // jobs threads for torch, faiss and BLAS (:func:`worker_threads`)
and calls :func:`qbench.grid.worker.execute_cell`; the runner writes the result file itself
(atomically), since every worker shares this machine's ``--out``.
"""

from __future__ import annotations

import collections
import multiprocessing
import os
import signal
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import TYPE_CHECKING

from qbench.core.cores import set_worker_threads, worker_threads
from qbench.grid.cells import CellOptions, Outcome
from qbench.grid.worker import execute_cell, set_worker_device
from qbench.run.reuse import enable_process_memo

if TYPE_CHECKING:
    from qbench.grid.cells import Cell


MAX_ATTEMPTS = 2
"""Times a cell is tried when worker processes die under it: in the pool, then alone."""


def interleave_seeds(cells: list[Cell]) -> list[Cell]:
    """``cells`` reordered round-robin over training seeds (seed 0's first cell, seed 1's
    first cell, ..., then each seed's second cell): neighbouring cells then need different
    stage-1 encoders, so parallel workers train them at once instead of one waiting on the
    other's cache lock."""
    by_seed: dict[int, list[Cell]] = {}
    for cell in cells:
        by_seed.setdefault(cell.seed, []).append(cell)
    queues = list(by_seed.values())
    return [q[i] for i in range(max(map(len, queues), default=0)) for q in queues if i < len(q)]


def worker_devices(device: str, jobs: int) -> list[str] | None:
    """The device of each of ``jobs`` workers: with ``cuda`` (or ``auto`` on a CUDA machine)
    the workers are spread over the visible GPUs round-robin; None: leave runs as asked."""
    if device not in ("cuda", "auto"):
        return None
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if not count:
        return None
    return [f"cuda:{i % count}" for i in range(jobs)]


def _init_worker(threads: int, devices: list[str] | None, counter) -> None:
    """Worker initializer: threads (:func:`qbench.core.cores.set_worker_threads`), its GPU (one
    of ``devices``, by the order workers start, with a share of its memory), signals and a
    watch on the parent process, and a memo of loaded inputs (:mod:`qbench.run.reuse`).

    Ctrl-C is left to the parent, which stops the workers; a worker whose parent was
    killed exits (its run's result, written atomically, is never half there).
    """
    set_worker_threads(threads)
    enable_process_memo()  # the grid's runs in this worker load their inputs once
    if devices:
        with counter.get_lock():
            index = counter.value
            counter.value += 1
        device = devices[index % len(devices)]
        set_worker_device(device, share=1.0 / devices.count(device))
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    parent = os.getppid()

    def watch_parent() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch_parent, name="qbench-parent-watch", daemon=True).start()


class LocalBackend:
    """Cells in this process (``jobs`` = 1 or a single cell) or a ``spawn`` process pool."""

    name = "local"

    def __init__(self, jobs: int = 1):
        self.jobs = jobs  # checked by qbench.grid.backends.make_backend

    def run(self, cells: list[Cell], options: CellOptions,
            report: Callable[[Outcome], None]) -> None:
        """Run ``cells``; ``report`` each outcome as it comes in."""
        if self.jobs == 1 or len(cells) <= 1:
            self._run_serial(cells, options, report)
        else:
            self._run_parallel(cells, options, report)

    @staticmethod
    def _run_serial(cells: list[Cell], options: CellOptions,
                    report: Callable[[Outcome], None]) -> None:
        """One cell after another; a cell another grid is running goes to the back of the
        queue, and when every cell left is busy the next one is waited for."""
        queue, busy_in_a_row = collections.deque(cells), 0
        while queue:
            cell = queue.popleft()
            outcome = execute_cell(cell, options.out, options.data_dir, options.device,
                                   options.runner, options.cache_dir, options.use_cache,
                                   options.lock_dir, options.planned_at,
                                   wait=busy_in_a_row > len(queue))
            if outcome.busy:
                queue.append(cell)
                busy_in_a_row += 1
                continue
            busy_in_a_row = 0
            report(outcome)

    def _run_parallel(self, cells: list[Cell], options: CellOptions,
                      report: Callable[[Outcome], None]) -> None:
        """A pool of ``jobs`` workers. A worker that dies (killed, out of memory, a crash)
        breaks the pool and every unfinished future with it. The cells that had started
        (a marker file per running cell tells) are retried one at a time, each in a pool of
        its own, so that only a run under which a worker dies again is recorded as failed;
        the cells that had not started go to a fresh pool of ``jobs`` workers."""
        devices = worker_devices(options.device, self.jobs)
        with tempfile.TemporaryDirectory(prefix="qbench-running-") as running:
            todo, suspects, wait_busy = interleave_seeds(cells), [], False
            while todo:
                unstarted, busy = [], []
                for cell, outcome in self._pool_pass(todo, options, devices, self.jobs,
                                                     running, wait_busy):
                    if outcome is not None and outcome.busy:  # another grid runs it
                        busy.append(cell)
                    elif outcome is not None:
                        report(outcome)
                    elif (Path(running) / cell.stem).exists():
                        suspects.append(cell)
                    else:
                        unstarted.append(cell)
                # cells another grid was running are waited for once the rest are done
                todo, wait_busy = (unstarted, False) if unstarted else (busy, True)
                if unstarted:
                    todo += busy
            for cell in suspects:  # one at a time: a death is this cell's own
                (_, outcome), = self._pool_pass([cell], options, devices, 1, running, True)
                report(outcome or Outcome(
                    cell.stem, False, 0.0, error_type="BrokenProcessPool",
                    message=f"a worker process died under this run {MAX_ATTEMPTS} times "
                            "(killed, out of memory or a crash)"))

    def _pool_pass(self, cells: list[Cell], options: CellOptions, devices, workers: int,
                   running: str, wait_busy: bool):
        """Yield (cell, outcome) as cells finish; outcome None when the pool broke under it.
        ``wait_busy``: wait for cells another grid holds (else they come back ``busy``)."""
        pool = worker_pool(workers, worker_threads(self.jobs), devices)
        try:
            futures = {pool.submit(_tracked_cell, running, c, options, wait_busy): c for c in cells}
            remaining = set(futures)
            while remaining:
                finished, remaining = wait(remaining, return_when=FIRST_COMPLETED)
                for fut in finished:
                    try:
                        yield futures[fut], fut.result()
                    except BrokenProcessPool:
                        yield futures[fut], None
        except BaseException:
            stop_workers(pool)
            raise
        pool.shutdown(wait=True)


def worker_pool(workers: int, threads: int,
                devices: list[str] | None = None) -> ProcessPoolExecutor:
    """A ``spawn`` pool of ``workers`` processes with ``threads`` threads each, a GPU each
    from ``devices``, Ctrl-C left to the parent and a watch on it (see
    :func:`_init_worker`): the one process pool of the grid, for cells and tuning studies
    alike. Stop it with :func:`stop_workers` on an error."""
    context = multiprocessing.get_context("spawn")
    return ProcessPoolExecutor(max_workers=workers, mp_context=context,
                               initializer=_init_worker,
                               initargs=(threads, devices, context.Value("i", 0)))


def _tracked_cell(running: str, cell: Cell, options: CellOptions, wait: bool) -> Outcome:
    """:func:`qbench.grid.worker.execute_cell` with a marker file in ``running`` while it runs."""
    marker = Path(running) / cell.stem
    marker.touch()
    outcome = execute_cell(cell, options.out, options.data_dir, options.device,
                           options.runner, options.cache_dir, options.use_cache,
                           options.lock_dir, options.planned_at, wait)
    marker.unlink()
    return outcome


def stop_workers(pool: ProcessPoolExecutor) -> None:
    """Cancel queued cells and terminate the workers now (Ctrl-C, kill, an error here).

    Their unfinished runs are dropped; finished results were written atomically.
    """
    processes = list(getattr(pool, "_processes", {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        if process.is_alive():
            process.terminate()
    for process in processes:
        process.join(timeout=10)
