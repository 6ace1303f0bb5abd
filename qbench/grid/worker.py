"""One grid cell in a worker process, for every backend: thread and device setup, the
default runner, and :func:`execute_cell`, which turns any failure of a run into an
:class:`Outcome` instead of stopping the grid.

The grid driver (:mod:`qbench.grid.runner`) and the backends (:mod:`qbench.grid.backends.local`,
:mod:`qbench.grid.backends.ray`) import this module; it imports neither.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from qbench.core.cores import use_worker_threads
from qbench.core.errors import QbenchError
from qbench.grid.cells import Outcome
from qbench.run.results import load_result

if TYPE_CHECKING:
    from qbench.grid.cells import Cell

# the GPU of this worker process (None: runs keep the device they ask for)
_WORKER_DEVICE: str | None = None


def set_worker_device(device: str, share: float = 1.0) -> None:
    """Make this worker's runs use ``device`` (e.g. ``cuda:1``), capped at ``share`` of its
    memory, so that several workers on one GPU cannot take it all."""
    import torch

    global _WORKER_DEVICE
    _WORKER_DEVICE = device
    if share < 1.0:
        torch.cuda.set_per_process_memory_fraction(share, torch.device(device))


def run_pipeline(request) -> tuple[Path, dict]:
    """The default runner: :func:`qbench.run.pipeline.run_experiment`, looked up at call time."""
    from qbench.run import pipeline

    use_worker_threads()
    if _WORKER_DEVICE is not None and request.device in ("cuda", "auto"):
        request = dataclasses.replace(request, device=_WORKER_DEVICE)
    return pipeline.run_experiment(request)


@contextlib.contextmanager
def cell_lock(lock_dir: Path | None, stem: str, wait: bool = True):
    """Hold the lock of cell ``stem`` (``lock_dir/<stem>.lock``) until the block ends;
    yields whether this process holds it (always True with ``wait``, which blocks).

    Grids sharing an ``--out`` take a cell's lock before running it, so a second grid
    leaves a cell the first is running for later, or waits for it, and then finds its
    result. ``lock_dir`` None: no lock (a cluster's driver writes every result itself).
    The lock files stay (empty): removing one while another process waits on it would let
    two processes hold "the" lock."""
    if lock_dir is None:
        yield True
        return
    path = Path(lock_dir) / f"{stem}.lock"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(path, "a+")  # noqa: SIM115 -- closed below, after the unlock
    except OSError as exc:
        raise QbenchError(f"cannot take the lock of cell {stem} ({path}): "
                          f"{exc.strerror or exc}") from None
    try:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
    finally:
        fh.close()


def _written_since(cell: Cell, out: Path, planned_at: float) -> Path | None:
    """The cell's result when another process wrote a valid one of this cell's run (not a
    result of other choices) after the grid planned."""
    from qbench.run.identity import conflicts

    path = Path(out) / cell.filename
    try:
        if path.stat().st_mtime < planned_at:
            return None
        if conflicts(load_result(path), cell.choices(out)):
            return None  # running it reports the clash
    except (OSError, QbenchError):
        return None
    return path


def execute_cell(cell: Cell, out: Path, data_dir: Path | None, device: str,
                 runner: Callable = run_pipeline, cache_dir: Path | None = None,
                 use_cache: bool = True, lock_dir: Path | None = None,
                 planned_at: float = 0.0, wait: bool = True) -> Outcome:
    """Run one cell in this process; an :class:`Exception` becomes a failed outcome.

    With ``lock_dir`` the cell runs under its lock (:func:`cell_lock`). Another process
    holding it: without ``wait`` the outcome is ``busy`` (nothing ran; try it later), with
    ``wait`` this waits for it. When, holding the lock, a valid result written after
    ``planned_at`` is there (another grid on the same ``--out`` ran the cell meanwhile),
    nothing runs and the outcome is ``skipped``.
    KeyboardInterrupt and SystemExit propagate: they stop the grid, not one cell.
    """
    started = time.perf_counter()
    try:
        with cell_lock(lock_dir, cell.stem, wait) as held:
            if not held:
                return Outcome(cell.stem, False, 0.0, busy=True)
            if lock_dir is not None and (done := _written_since(cell, out, planned_at)):
                return Outcome(cell.stem, True, 0.0, path=str(done), skipped=True)
            path, _ = runner(cell.request(out, data_dir, device, cache_dir=cache_dir,
                                          use_cache=use_cache))
            load_result(path)
    except Exception as exc:  # noqa: BLE001 -- isolate every failure of one run
        return Outcome(cell.stem, False, time.perf_counter() - started,
                       error_type=type(exc).__name__, message=str(exc),
                       traceback=traceback.format_exc())
    return Outcome(cell.stem, True, time.perf_counter() - started, path=str(path))


def stage1_group(cell: Cell) -> tuple | None:
    """The stage-1 encoder group of ``cell`` without loading data: cells with the same group
    use the same cached encoder. None when its method trains none.

    The group is the part of the encoder key (:func:`qbench.train.encoder_cache.stage1_engine`
    and the fields beside it) that a grid can know before loading data: dataset, resolved
    dataset parameters, protocol, split seed, seed, the stage-1 engine fields, D, tanh; the
    exact key adds the data and split checksums, equal for every cell of one grid.
    """
    from qbench.registry import METHODS
    from qbench.train.encoder_cache import stage1_engine

    if cell.regime == "head":  # every method of a seed needs its backbone first
        return ("backbone", cell.dataset, json.dumps(cell.resolved_dataset_params,
                                                     sort_keys=True),
                cell.protocol, cell.split_seed, cell.seed,
                json.dumps(cell.resolved_backbone, sort_keys=True))
    method = METHODS.get(cell.method)(cell.resolved)
    spec = method.stage1_spec(cell.bits)
    if spec is None:
        return None
    return (cell.dataset, json.dumps(cell.resolved_dataset_params, sort_keys=True),
            cell.protocol, cell.split_seed, cell.seed,
            json.dumps(stage1_engine(method.params), sort_keys=True),
            int(spec[0]), bool(spec[1]))
