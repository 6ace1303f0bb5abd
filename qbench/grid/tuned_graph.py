"""A tuned grid on Ray as one task graph: stage-1 encoders -> studies' trials -> final runs.

Under ``qbench grid --backend ray`` a grid's ``"tune"`` block does not run its studies on
the driver. The shared stage-1 study (``"shared": true``) runs first, its trials as Ray
tasks (every other study needs its values). Then every study of the grid runs at once,
each from its own driver thread through the same ask-and-tell path as ``qbench tune
--backend ray`` (:func:`qbench.grid.tune_ray.optimize_on_ray`): up to ``"parallel"``
trials of a study in flight (default :data:`PARALLEL`), TPE with ``constant_liar`` as
today, the study's storage touched by the driver alone. The cells that need no study are
handed to the backend once the shared study is done (at once without one); the final cells
of a study as soon as that study is done,
so they run while other studies still tune (the backend adds one stage-1 task per new
encoder before them). Ray's scheduler shares the cluster's CPUs between all these tasks.

Each trial asks Ray for the grid's ``resources`` (its CPUs, and ``--gpus-per-run``), as a
run does. Budget: each study asks for exactly its missing trials (``trials`` minus its finished
ones); a trial whose worker died is retried by Ray as the same trial, and one Ray gave up
on is a failed trial, which never counts, so the budget is never exceeded. A rerun finds
every study complete (no trial runs) and every final result current (no run runs).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

from qbench.grid.tuning import plan_studies

PARALLEL = 2
"""Trials of one study in flight at once, unless the grid's ``"tune"`` block says
``"parallel"``."""


def feed_tuned_cells(spec: dict, cells: list, request: Callable, submit: Callable,
                     stop: threading.Event, *, address: str | None,
                     gpus_per_run: float | None, cpus_per_run: int = 1,
                     echo: Callable[[str], None] | None) -> None:
    """Tune the grid ``spec`` on Ray and hand its final cells to ``submit`` in batches
    (see the module docstring). ``stop`` set (the driver stopping): no study starts
    another trial. A study that fails (no trial completed) stops nothing else: the other
    studies finish and their final runs are handed over, then its error is raised. An error
    handing over a batch stops every study and is raised."""
    from qbench.grid.tune import tune

    kwargs = {"backend": "ray", "parallel": spec.get("parallel", PARALLEL),
              "address": address, "gpus_per_run": gpus_per_run,
              "cpus_per_run": cpus_per_run, "stop": stop}
    plan = plan_studies(spec, cells, request, echo=echo, tune_kwargs=kwargs)
    untuned = plan.finals_of(plan.tuned)
    if untuned:
        submit(untuned)
    if not plan.todo or stop.is_set():
        return

    def one_study(template, study: str):
        say = (lambda line: echo(f"[{study}] {line}")) if echo is not None else None
        return tune(template, trials=plan.trials, study_name=study, echo=say,
                    pruner=plan.pruner, **kwargs)[0]

    with ThreadPoolExecutor(max_workers=len(plan.todo),
                            thread_name_prefix="qbench-study") as pool:
        futures = {pool.submit(one_study, template, study): key
                   for key, template, study in plan.todo}
        pending, failure = set(futures), None
        try:
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    try:
                        path = future.result()
                    except Exception as exc:  # noqa: BLE001 -- raised once the others end
                        failure = failure or exc
                        continue
                    if not stop.is_set():
                        plan.record(futures[future], path)
                        submit(plan.finals_of([futures[future]]))
        except BaseException:
            stop.set()  # a batch could not be handed over: the studies start nothing more
            raise
    if failure is not None:
        raise failure
