"""Equal tuning budget in grids (SPEC §7): a grid file's ``"tune": {"trials": N, "seed": S}``.

Before the grid's runs, every method (or variant) that has a non-empty search space is tuned
at each bit length with the same N trials, the same epochs per trial and the same split, on
training seed S (:func:`qbench.grid.tune.tune`, validation data only). The final runs then use
the best parameters on the grid's other seeds, and record ``tuning`` (trials, best value,
study, best parameters); methods without a space record ``tuning: null``. With
``"shared": true`` the shared stage-1 knobs (learning rate, weight decay) are first tuned
once on the ``float`` method and fixed for every method, so all of them still share one
stage-1 encoder per seed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, wait
from dataclasses import dataclass, replace
from pathlib import Path

from qbench.core.errors import QbenchError


def _tuning_record(path: Path, cell, shared_params: dict) -> tuple[dict, dict]:
    """(parameters for the runs, the ``tuning`` record with the tuned values only)."""
    from qbench.grid.tuned_params import load_tuned_params

    params, tuning = load_tuned_params(path, cell.method, cell.dataset, cell.bits)
    return params, {**tuning, "best_params": {**shared_params, **tuning["best_params"]}}


def _tune_study(template, trials: int, study: str, verbose: bool, pruner: str = "none") -> Path:
    """One study in a worker process (module level, so that it pickles); its lines are
    prefixed with the study's name."""
    from qbench.grid.tune import tune

    echo = (lambda line: print(f"[{study}] {line}", flush=True)) if verbose else None
    path, _ = tune(template, trials=trials, study_name=study, echo=echo, pruner=pruner)
    return path


def study_name(cell, seed: int, *, shared: bool = False) -> str:
    """A grid study's name (:func:`qbench.grid.tune.default_study_name` of the cell)."""
    from qbench.grid.tune import default_study_name

    return default_study_name(cell.dataset, cell.protocol, "float" if shared else cell.name,
                              cell.bits, seed, shared=shared, regime=cell.regime)


#: Seconds between two looks at the running studies' trial counts (the progress bar).
POLL_S = 5.0


class _TrialCounter:
    """Finished trials of a grid's studies while worker processes run them, read from each
    study's storage (``<out>/tune/<study>.db``), so the bar moves with every trial."""

    def __init__(self, todo: list):
        self.paths = {key: Path(template.out) / "tune" / f"{study}.db"
                      for key, template, study in todo}
        self.names = {key: study for key, _, study in todo}
        self.counts = dict.fromkeys(self.paths, 0)
        self.closed: set = set()

    def finish(self, key, trials: int) -> None:
        self.counts[key] = max(self.counts[key], trials)
        self.closed.add(key)

    def total(self) -> int:
        for key in set(self.paths) - self.closed:
            self.counts[key] = max(self.counts[key], self._finished(key))
        return sum(self.counts.values())

    def _finished(self, key) -> int:
        """Finished trials in the study's storage, read through a read-only connection
        (never optuna's: opening a storage another process is creating races its schema
        set-up); 0 before the storage exists, the last count while it cannot be read."""
        import sqlite3

        path = self.paths[key]
        if not path.is_file():
            return 0
        try:
            with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True,
                                                    timeout=1)) as db:
                (count,), = db.execute(
                    "SELECT COUNT(*) FROM trials JOIN studies USING (study_id) WHERE "
                    "study_name = ? AND state IN ('COMPLETE', 'PRUNED')", (self.names[key],))
            return int(count)
        except sqlite3.Error:  # schema not created yet, or busy: look again later
            return self.counts[key]


def _run_studies(todo: list, trials: int, jobs: int, echo, pruner: str = "none",
                 bar=None) -> dict:
    """{key: summary path} of the studies ``todo`` ((key, template, study) triples): one
    after another in this process, or ``jobs`` at a time in spawned worker processes with
    cores // jobs threads each (the trials of one study stay sequential: TPE learns from
    each)."""
    if jobs <= 1 or len(todo) <= 1:
        done = {}
        for key, template, study in todo:
            done[key] = _tune_study(template, trials, study, echo is not None, pruner)
            if bar is not None:
                bar.update(trials)
        return done
    from qbench.core.cores import worker_threads
    from qbench.grid.backends.local import stop_workers, worker_pool

    pool = worker_pool(min(jobs, len(todo)), worker_threads(jobs))
    counter = _TrialCounter(todo)
    try:
        futures = {pool.submit(_tune_study, template, trials, study, echo is not None,
                               pruner): key for key, template, study in todo}
        done = {}
        pending = set(futures)
        while pending:
            finished, pending = wait(pending, timeout=POLL_S, return_when=FIRST_COMPLETED)
            for future in finished:
                done[futures[future]] = future.result()
                counter.finish(futures[future], trials)
            if bar is not None:
                bar.update(counter.total() - bar.n)
    except BaseException:
        stop_workers(pool)
        raise
    pool.shutdown(wait=True)
    return done


def final_cells(spec: dict, cells: list) -> list:
    """The cells a tuned grid runs after tuning: those not on the tuning seed (whose runs
    are the studies' trials); an error when no other seed is left."""
    seed = spec["seed"]
    finals = [c for c in cells if c.seed != seed]
    if not finals:
        raise QbenchError(f"'tune.seed' {seed} is the grid's only seed: the final runs need "
                          "seeds other than the tuning seed")
    return finals


@dataclass
class GridStudies:
    """A tuned grid's plan after its shared study: the final cells (``finals``), the
    parameters of the cells that need no study of their own (``tuned``: (name, bits) ->
    (params, tuning record or None)), and one study per (name, bits) left to run
    (``todo``: (key, trial template, study name) triples; :meth:`finals_of` gives the final
    cells of one once it has run)."""

    spec: dict
    finals: list
    tuned: dict
    todo: list
    firsts: dict

    @property
    def trials(self) -> int:
        return self.spec["trials"]

    @property
    def pruner(self) -> str:
        return self.spec.get("pruner", "none")

    def record(self, key, path: Path) -> None:
        """Take the best parameters of study ``key`` from its summary ``path``."""
        cell, base = self.firsts[key]
        params, record = _tuning_record(path, cell, base)
        self.tuned[key] = ({**base, **params}, record)

    def finals_of(self, keys) -> list:
        """The final cells of the (name, bits) ``keys``, in grid order, with their best
        parameters and ``tuning`` records (every key must be in :attr:`tuned`)."""
        keys = set(keys)
        return [replace(c, params={**c.params, **self.tuned[(c.name, c.bits)][0]},
                        tuning=self.tuned[(c.name, c.bits)][1])
                for c in self.finals if (c.name, c.bits) in keys]


def _shared_cell(cells: list, seed: int):
    """The cell of the shared stage-1 study: float on the tuning seed, with the grid's
    parameters that float declares (the grid's "*")."""
    from qbench.registry import METHODS

    first = next((c for c in cells if c.method == "float"), cells[0])
    declared = {p.name for p in METHODS.get("float").params}
    params = {k: v for k, v in first.params.items() if k in declared}
    return replace(first, method="float", name="float", params=params, seed=seed)


def _own_space(cell) -> set:
    """The names the cell's method tunes itself (its space less the cell's fixed values)."""
    from qbench.registry import METHODS, space_of

    return set(space_of(METHODS.get(cell.method), shared=False)) - set(cell.params)


def studies_finished(spec: dict, cells: list, out: Path) -> bool:
    """Whether every study of the tuned grid (``"tune"`` block ``spec``, its cells) has a
    summary under ``<out>/tune/`` with its full budget of finished trials, read without
    opening a storage (a finished grid's rerun on Ray then starts no cluster)."""
    import json

    seed, trials = spec["seed"], spec["trials"]
    names = {study_name(cell, seed) for cell in final_cells(spec, cells) if _own_space(cell)}
    if spec.get("shared"):
        names.add(study_name(_shared_cell(cells, seed), seed, shared=True))
    for name in names:
        try:
            counts = json.loads((Path(out) / "tune" / f"{name}.json").read_text())["trials"]
            if counts["complete"] + counts["pruned"] < trials:
                return False
        except (OSError, ValueError, KeyError, TypeError):
            return False
    return True


def plan_studies(spec: dict, cells: list, request: Callable, *,
                 echo: Callable[[str], None] | None = None, tune_kwargs: dict | None = None
                 ) -> GridStudies:
    """Run the grid's shared study (``"shared": true``: the stage-1 knobs on float, with
    ``tune_kwargs`` for :func:`qbench.grid.tune.tune`, e.g. the Ray backend's), then plan
    one study per (method or variant, bits) whose method has a space of its own."""
    from qbench.grid.tune import tune
    from qbench.registry import METHODS

    seed, trials, pruner = spec["seed"], spec["trials"], spec.get("pruner", "none")
    finals = final_cells(spec, cells)
    shared_params: dict = {}
    shared_tuning = None
    if spec.get("shared"):
        float_cell = _shared_cell(cells, seed)
        path, _ = tune(request(float_cell), trials=trials, shared=True,
                       study_name=study_name(float_cell, seed, shared=True), echo=echo,
                       pruner=pruner, **(tune_kwargs or {}))
        shared_params, shared_tuning = _tuning_record(path, float_cell, {})

    tuned: dict[tuple[str, int], tuple[dict, dict | None]] = {}
    todo, firsts = [], {}
    for cell in finals:
        key = (cell.name, cell.bits)
        if key in tuned or key in firsts:
            continue
        declared = {p.name for p in METHODS.get(cell.method).params}
        base = {k: v for k, v in shared_params.items() if k in declared}
        if not _own_space(cell):
            tuned[key] = (base, shared_tuning if base else None)
            continue
        trial_cell = replace(cell, seed=seed, params={**cell.params, **base})
        todo.append((key, request(trial_cell), study_name(cell, seed)))
        firsts[key] = (cell, base)
    return GridStudies(spec, finals, tuned, todo, firsts)


def tune_cells(spec: dict, cells: list, request: Callable, *,
               echo: Callable[[str], None] | None = None, jobs: int = 1) -> list:
    """The grid's final cells after tuning: every cell not on ``spec["seed"]``, with the
    best parameters and the ``tuning`` record. ``request(cell)`` builds a cell's
    :class:`qbench.run.pipeline.RunRequest` (output folder, cache and device of the grid).
    Studies live under ``<out>/tune/`` and resume: a rerun adds only missing trials.
    ``jobs`` > 1: after the shared stage-1 study, that many studies run at once (each in
    its own process, its trials in order). (On Ray, :mod:`qbench.grid.tuned_graph` runs
    the studies' trials as tasks and each study's final runs as soon as it is done.)"""
    from tqdm.auto import tqdm

    plan = plan_studies(spec, cells, request, echo=echo)
    bar = tqdm(total=len(plan.todo) * plan.trials, unit="trial", desc="tuning studies",
               disable=not plan.todo or echo is None, dynamic_ncols=True)
    with bar:
        studies = _run_studies(plan.todo, plan.trials, jobs, echo, plan.pruner, bar)
    for key, path in studies.items():
        plan.record(key, path)
    return plan.finals_of(plan.tuned)
