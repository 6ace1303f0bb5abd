"""The one small interface every backend implements (:class:`Backend`).

A backend gets the cells left to run (:class:`qbench.grid.cells.Cell`), how to run them
(:class:`qbench.grid.cells.CellOptions`) and a ``report`` callback. It submits every cell --
and, where it schedules them, the stage-1 encoder job that cells depend on -- and hands
each cell's :class:`qbench.grid.cells.Outcome` to ``report`` in the driver process as it
comes in. The driver (:func:`qbench.grid.runner.run_grid`) plans, records outcomes and
failures, and writes a result that a remote worker returned; the backend only runs things.
Implementations import this module and :mod:`qbench.grid.cells`, never the factory
(:func:`qbench.grid.backends.make_backend`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from qbench.grid.cells import Cell, CellOptions, Outcome


class Backend(Protocol):
    """Runs cells; see the module docstring. ``name``: as ``--backend`` spells it;
    ``jobs``: how many cells (or tuning studies) it runs at once on this machine."""

    name: str
    jobs: int

    def run(self, cells: list[Cell], options: CellOptions,
            report: Callable[[Outcome], None]) -> None:
        """Run every cell of ``cells`` once; call ``report`` here as each one finishes."""
