"""One grid cell in a worker process, for every backend: thread and device setup, the
default runner, and :func:`execute_cell`, which turns any failure of a run into an
:class:`Outcome` instead of stopping the grid.

The grid driver (:mod:`qbench.grid.runner`) and the backends (:mod:`qbench.grid.backends.local`,
:mod:`qbench.grid.backends.ray`) import this module; it imports neither.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from qbench.run.results import load_result

if TYPE_CHECKING:
    from qbench.grid.gridfile import Cell

THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


@dataclass
class Outcome:
    """What a worker reports about one cell. ``result``: the result record when the worker
    could not write it itself (a remote backend); the driver then writes it to ``path``."""

    stem: str
    ok: bool
    seconds: float
    path: str | None = None
    error_type: str = ""
    message: str = ""
    traceback: str = ""
    result: dict | None = None


# intra-op threads of this worker process (None: the main process, no limit)
_WORKER_THREADS: int | None = None
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


def set_worker_threads(threads: int) -> None:
    """Make this worker process (of any backend) run with ``threads`` torch, faiss (OpenMP)
    and BLAS threads: the environment is set for libraries not loaded yet, the ones already
    loaded (numpy's and scipy's BLAS, imported with qbench) are limited through
    threadpoolctl, and :func:`run_pipeline` calls ``torch.set_num_threads`` before each run.
    """
    from threadpoolctl import threadpool_limits

    global _WORKER_THREADS
    _WORKER_THREADS = threads
    for name in THREAD_ENV:
        os.environ[name] = str(threads)
    threadpool_limits(limits=threads)


def run_pipeline(request) -> tuple[Path, dict]:
    """The default runner: :func:`qbench.run.pipeline.run_experiment`, looked up at call time."""
    from qbench.run import pipeline

    if _WORKER_THREADS is not None:
        import torch

        torch.set_num_threads(_WORKER_THREADS)
    if _WORKER_DEVICE is not None and request.device in ("cuda", "auto"):
        request = dataclasses.replace(request, device=_WORKER_DEVICE)
    return pipeline.run_experiment(request)


def execute_cell(cell: Cell, out: Path, data_dir: Path | None, device: str,
                 runner: Callable = run_pipeline, cache_dir: Path | None = None,
                 use_cache: bool = True) -> Outcome:
    """Run one cell in this process; an :class:`Exception` becomes a failed outcome.

    KeyboardInterrupt and SystemExit propagate: they stop the grid, not one cell.
    """
    started = time.perf_counter()
    try:
        path, _ = runner(cell.request(out, data_dir, device, cache_dir=cache_dir,
                                      use_cache=use_cache))
        load_result(path)
    except Exception as exc:  # noqa: BLE001 -- isolate every failure of one run
        return Outcome(cell.stem, False, time.perf_counter() - started,
                       error_type=type(exc).__name__, message=str(exc),
                       traceback=traceback.format_exc())
    return Outcome(cell.stem, True, time.perf_counter() - started, path=str(path))


def prepare_dataset_params(cell: Cell) -> dict:
    """The cell's resolved dataset parameters."""
    from qbench.registry import DATASETS

    return DATASETS.resolve_params(cell.dataset, cell.dataset_params)


def stage1_group(cell: Cell, out: Path, data_dir: Path | None) -> tuple | None:
    """A cheap stand-in for the stage-1 encoder key of ``cell`` (no data loaded): cells with
    the same group use the same cached encoder. None when its method trains none.

    The group is (dataset, resolved dataset parameters, protocol, split seed, seed, the
    method's engine parameters (:data:`qbench.train.engine.STAGE1_KEYS`), D, tanh); the exact key
    adds the data and split checksums, equal for every cell of one grid.
    """
    from qbench.run.pipeline import prepare
    from qbench.train.engine import STAGE1_KEYS

    method = prepare(cell.request(out, data_dir, "cpu")).method
    spec = method.stage1_spec(cell.bits)
    if spec is None:
        return None
    engine = {k: method.params.get(k) for k in STAGE1_KEYS}
    return (cell.dataset, json.dumps(prepare_dataset_params(cell), sort_keys=True),
            cell.protocol, cell.split_seed, cell.seed, json.dumps(engine, sort_keys=True),
            int(spec[0]), bool(spec[1]))
