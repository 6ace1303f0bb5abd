"""Where a grid's runs execute: one module per backend behind one small interface.

A backend gets the cells left to run (:class:`qbench.grid.gridfile.Cell`), how to run them
(:class:`CellOptions`) and a ``report`` callback. It submits every cell -- and, where it
schedules them, the stage-1 encoder job that cells depend on -- and hands each cell's
:class:`qbench.grid.worker.Outcome` to ``report`` in the driver process as it comes in. The
driver (:func:`qbench.grid.runner.run_grid`) plans, records outcomes and failures, and writes a
result that a remote worker returned; the backend only runs things.

- ``local`` (:mod:`qbench.grid.backends.local`): this process, or ``jobs`` spawned processes.
- ``ray`` (:mod:`qbench.grid.backends.ray`): Ray tasks on a cluster; the only module that
  imports Ray (the ``ray`` extra: ``pip install 'qbench[ray]'``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from qbench.core.errors import choice_error

if TYPE_CHECKING:
    from qbench.grid.gridfile import Cell
    from qbench.grid.worker import Outcome

BACKENDS = ("local", "ray")


@dataclass(frozen=True)
class RunResources:
    """What one run asks of a node: ``cpu`` whole CPUs, which are also its torch, faiss and
    BLAS threads, and ``gpu``, a share of one GPU (0: none; 0.25: four runs share one GPU)
    or a whole number of GPUs."""

    cpu: int = 1
    gpu: float = 0.0


@dataclass(frozen=True)
class CellOptions:
    """How every cell of one grid runs (the arguments of
    :func:`qbench.grid.worker.execute_cell`)."""

    out: Path
    data_dir: Path | None
    device: str
    runner: Callable
    cache_dir: Path | None
    use_cache: bool


class Backend(Protocol):
    """Runs cells; see the module docstring."""

    def run(self, cells: list[Cell], options: CellOptions,
            report: Callable[[Outcome], None]) -> None:
        """Run every cell of ``cells`` once; call ``report`` here as each one finishes."""


def make_backend(name: str, *, jobs: int = 1, address: str | None = None,
                 resources: RunResources = RunResources()) -> Backend:
    """The backend called ``name``, its options checked; nothing is started yet.

    ``jobs``: local worker processes. ``address`` and ``resources``: the Ray cluster and
    what each run asks of it (ignored by the local backend, which shares out its cores).
    """
    if name == "local":
        from qbench.grid.backends.local import LocalBackend

        return LocalBackend(jobs)
    if name == "ray":
        from qbench.grid.backends.ray import RayBackend

        return RayBackend(address, resources)
    raise choice_error("--backend", name, BACKENDS)
