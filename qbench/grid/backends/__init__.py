"""Where a grid's cells run: one module per backend behind the small protocol of
:mod:`.base`, and the one place that names them (:func:`make_backend`, as optuna's
``storages/__init__.py`` names its storages above their modules).

- ``local`` (:mod:`.local`): this process, or ``jobs`` spawned processes;
- ``ray`` (:mod:`.ray`): Ray tasks on a cluster (the ``ray`` extra:
  ``pip install 'qbench[ray]'``); Ray itself is imported only by :mod:`qbench.grid.cluster`.
"""

from __future__ import annotations

from qbench.core.errors import choice_error
from qbench.core.validation import check_int
from qbench.grid.backends.base import Backend

BACKENDS = ("local", "ray")


def make_backend(name: str, *, jobs: int = 1, address: str | None = None) -> Backend:
    """The backend called ``name``, its options checked; nothing is started yet.

    ``jobs``: local worker processes (the Ray backend ignores it: a tuned grid's studies
    and runs are all Ray tasks there, :mod:`qbench.grid.tuned_graph`). ``address``: the
    Ray cluster (None joins the local cluster or starts one, "auto", "HOST:PORT" or
    "ray://HOST:PORT").
    """
    check_int(jobs, "--jobs", low=1)
    if name == "local":
        from qbench.grid.backends.local import LocalBackend

        return LocalBackend(jobs)
    if name == "ray":
        from qbench.grid.backends.ray import RayBackend

        return RayBackend(address)
    raise choice_error("--backend", name, BACKENDS)


__all__ = ["BACKENDS", "Backend", "make_backend"]
