"""The Ray backend: a grid's runs as Ray tasks on a cluster (Ray itself through
:mod:`qbench.grid.cluster`).

Joining the cluster, and the checks of its resources and shared folders before anything
runs, are :mod:`qbench.grid.cluster`'s.

Task graph
----------
One task per distinct stage-1 encoder (cells grouped by :func:`qbench.grid.worker.stage1_group`)
calls :func:`qbench.run.pipeline.train_stage1`; every run task that uses the encoder takes that
task's ObjectRef as an argument, so Ray starts it once the encoder is in the cache. A run
task asks for the grid's :class:`qbench.grid.cells.RunResources` (its CPUs are also its
threads, as a local worker's cores // jobs) and runs :func:`qbench.grid.worker.execute_cell` with
the result written to a folder local to its worker; it returns the outcome with the result
record, which the driver writes into ``--out``. A worker process that dies is retried by
Ray (:data:`MAX_RETRIES`) and leaves no partial or duplicate result; an exception in a run
is a failed outcome, recorded under ``failed/`` as in the local backend.

A tuned grid is one task graph (:meth:`RayBackend.run_fed`, :mod:`qbench.grid.tuned_graph`):
its studies' trials are tasks too, and each study's final runs are submitted as soon as the
study is done, their stage-1 tasks with them.
"""

from __future__ import annotations

import contextlib
import importlib.util
import tempfile
import threading
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from qbench.core.cores import set_worker_threads
from qbench.core.errors import QbenchError, one_line
from qbench.grid.cells import CellOptions, Outcome
from qbench.grid.cluster import (
    INSTALL_HINT,
    MAX_RETRIES,
    _ray,
    check_folders,
    check_resources,
    connect,
    task_device,
)
from qbench.grid.worker import execute_cell, stage1_group
from qbench.run.results import read_json

if TYPE_CHECKING:
    from qbench.grid.cells import Cell


FEED_POLL_S = 0.5
"""Seconds between two looks at the feed while a tuned grid's runs are in flight."""


class _WriteInto:
    """A runner that writes its result file into ``folder`` instead of ``--out``."""

    def __init__(self, runner: Callable, folder: Path):
        self.runner, self.folder = runner, folder

    def __call__(self, request) -> tuple[Path, dict]:
        return self.runner(replace(request, output_file=self.folder / request.output_file.name))


def _train_stage1(cell: Cell, options: CellOptions, threads: int) -> dict:
    """Task: train (or find) ``cell``'s stage-1 encoder in the cache; {"key", "cache"}, or
    {"error"}: its runs then meet the same error themselves and are recorded as failed."""
    from qbench.run.pipeline import train_stage1

    set_worker_threads(threads)
    try:
        return train_stage1(cell.request(options.out, options.data_dir, options.device,
                                         cache_dir=options.cache_dir,
                                         use_cache=options.use_cache)) or {}
    except Exception as exc:  # noqa: BLE001 -- reported by the runs that depend on it
        return {"error": one_line(exc)}


def _run_cell(cell: Cell, options: CellOptions, threads: int, *encoder: dict) -> Outcome:
    """Task: run ``cell`` once its stage-1 ``encoder`` task (if any) is done; the outcome
    carries the result record for the driver to write."""
    set_worker_threads(threads)
    with tempfile.TemporaryDirectory(prefix="qbench-run-") as folder:
        outcome = execute_cell(cell, options.out, options.data_dir, options.device,
                               _WriteInto(options.runner, Path(folder)), options.cache_dir,
                               options.use_cache)
        if outcome.ok:
            outcome.result = read_json(Path(outcome.path), "result")
            outcome.path = str(Path(options.out) / cell.filename)
    return outcome


class RayBackend:
    """Cells as Ray tasks, after one stage-1 task per distinct encoder; see the module
    docstring."""

    name = "ray"
    jobs = 1  # a tuned grid's studies run at once anyway (:mod:`qbench.grid.tuned_graph`)

    def __init__(self, address: str | None):
        if importlib.util.find_spec("ray") is None:
            raise QbenchError(f"--backend ray needs Ray, which is not installed: {INSTALL_HINT}")
        self.address = address

    def run(self, cells: list[Cell], options: CellOptions,
            report: Callable[[Outcome], None]) -> None:
        """Connect, check resources and folders, submit the task graph, report outcomes."""
        with self._joined(options) as options:
            self._collect(self._submit(cells, options, {}), report)

    def run_fed(self, feed: Callable, options: CellOptions, report: Callable[[Outcome], None],
                triage: Callable[[list[Cell]], list[Cell]]) -> None:
        """Run cells as ``feed(submit, stop)`` hands them over, from a driver thread (a tuned
        grid's studies, :mod:`qbench.grid.tuned_graph`), while this thread reports the runs
        as they finish. Each batch goes through ``triage`` first (the cells to run of it);
        ``report`` and ``triage`` are never called at once. An error of the feed is raised
        once the runs it handed over have finished; an interruption here sets ``stop``
        (the feed starts nothing more), cancels every run in flight and is raised once the
        feed has returned."""
        ray = _ray()
        with self._joined(options) as options:
            refs: dict = {}
            stage1: dict = {}
            lock = threading.Lock()
            stop = threading.Event()
            errors: list[BaseException] = []

            def submit(cells: list[Cell]) -> None:
                with lock:
                    pending = triage(cells)
                    if pending and not stop.is_set():
                        refs.update(self._submit(pending, options, stage1))

            def run_feed() -> None:
                try:
                    feed(submit, stop)
                except BaseException as exc:  # noqa: BLE001 -- raised by the driver below
                    errors.append(exc)

            feeder = threading.Thread(target=run_feed, name="qbench-grid-feed", daemon=True)
            feeder.start()
            try:
                while feeder.is_alive() or refs:
                    with lock:
                        waiting = list(refs)
                    if not waiting:
                        feeder.join(FEED_POLL_S)
                        continue
                    done, _ = ray.wait(waiting, num_returns=1, timeout=FEED_POLL_S)
                    for ref in done:
                        outcome = self._outcome(ref, refs[ref])
                        with lock:
                            del refs[ref]
                            report(outcome)
            except BaseException:
                stop.set()
                with lock:
                    for ref in refs:
                        ray.cancel(ref, force=True)
                feeder.join()
                raise
            feeder.join()
            if errors:
                raise errors[0]

    @contextlib.contextmanager
    def _joined(self, options: CellOptions):
        """Joined to the cluster (left again if this call joined it), its resources and
        folders checked; yields ``options`` with the runs' device."""
        options = replace(options, device=task_device(options.device, options.resources))
        ray = _ray()
        connected = connect(self.address)
        try:
            check_resources(options.resources, ray.nodes())
            folders = {"--out": options.out}
            if options.cache_dir is not None:
                folders["the cache"] = options.cache_dir
            check_folders(folders)
            yield options
        finally:
            if connected:
                ray.shutdown()

    def _submit(self, cells: list[Cell], options: CellOptions, stage1: dict) -> dict:
        """Submit one stage-1 task per encoder group not in ``stage1`` (group -> its
        ObjectRef, updated), then every cell; ObjectRef -> cell."""
        ray = _ray()
        resources = options.resources
        task = {"num_cpus": resources.cpu, "num_gpus": resources.gpu,
                "max_retries": MAX_RETRIES}
        train = ray.remote(_train_stage1).options(**task)
        run = ray.remote(_run_cell).options(**task)
        refs = {}
        for cell in cells:
            group = stage1_group(cell) if options.use_cache else None
            if group is not None and group not in stage1:
                stage1[group] = train.remote(cell, options, resources.cpu)
            depends = [stage1[group]] if group is not None else []
            refs[run.remote(cell, options, resources.cpu, *depends)] = cell
        return refs

    @staticmethod
    def _outcome(ref, cell: Cell) -> Outcome:
        """The outcome of a finished run task; a task Ray gave up on is a failed outcome."""
        ray = _ray()
        try:
            return ray.get(ref)
        except ray.exceptions.RayError as exc:
            return Outcome(cell.stem, False, 0.0, error_type=type(exc).__name__,
                           message=f"Ray gave up on the run: {one_line(exc)}")

    @classmethod
    def _collect(cls, refs: dict, report: Callable[[Outcome], None]) -> None:
        """Report each outcome as it finishes. An interruption cancels every task still
        pending."""
        ray = _ray()
        remaining = list(refs)
        try:
            while remaining:
                done, remaining = ray.wait(remaining, num_returns=1)
                for ref in done:
                    report(cls._outcome(ref, refs[ref]))
        except BaseException:
            for ref in remaining:
                ray.cancel(ref, force=True)
            raise
