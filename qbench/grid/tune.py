"""Equal-budget hyper-parameter tuning (SPEC §7): Optuna, a seeded TPE sampler, resumable storage.

``qbench tune`` gives one method a budget of trials on the validation data only. Each
trial samples the method's search space (the parameters that declare ``tune=Space(...)``,
:func:`qbench.registry.space_of`), runs the same pipeline as ``qbench run`` up to model
selection (:func:`qbench.run.pipeline.run_selection`) and scores the validation MAP of the
method's evaluated representation on the selection pool -- never the query split.

- **Budget**: ``trials`` is the study's total of finished (complete + pruned) trials. A
  rerun runs only the missing ones; the same number again adds nothing; a larger one adds
  the difference. Failed trials do not count: a rerun replaces them.
- **Storage**: any Optuna RDB URL (``sqlite:///...``, ``postgresql://...``), passed through.
  The default is a SQLite file ``<out>/tune/<study>.db`` (write-ahead logging, so several
  workers on one machine can share it): SQLite is for one machine only;
  several machines share a study through a server database (PostgreSQL, MySQL).
  A trial whose process is killed stops sending heartbeats: after the grace period it is
  marked failed and retried with the same parameters by the next trial of any worker.
- **Failures**: a trial whose objective raises or returns NaN is failed, its reason kept
  as the trial's user attribute ``fail_reason``, and the study goes on.
- **Seed**: the same seed gives the same suggestions in a new study (a resumed session
  reseeds from the seed and the trial count, so it never repeats the startup trials).
- **Identity**: a study records what it tunes (method, dataset, protocol, bits, seed, fixed
  parameters, space); reopening it for anything else is refused.
- **Output**: ``<out>/tune/<study>.json`` (best parameters and value, trial counts, space,
  sampler, pruner, compute) and PNG plots of the optimisation history and the parameter
  importances beside it.

The objective is a plain function ``(params, report) -> validation score``; ``params``
holds the sampled values (name -> value) and ``report(epoch, value)`` records a point of
the validation curve and returns True when the pruner would stop the trial.
"""

from __future__ import annotations

import json
import math
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

from qbench import __version__
from qbench.core.errors import QbenchError, choice_error, one_line
from qbench.core.validation import SAFE_NAME, check_int
from qbench.grid.storage import (
    OVER_BUDGET,
    fail_killed_trials,
    open_storage,
    optuna_module,
    redacted,
    save_study_plots,
    trial_counts,
    write_ahead_log,
)
from qbench.grid.trials import (
    Objective,
    Report,
    budget_callback,
    completed_with,
    outcome,
    replay,
    suggest,
    trained_epochs,
    trial_request,
    trial_value,
)
from qbench.registry import METHODS, space_of

STARTUP_TRIALS = 10
"""TPE's first trials sample the space at random before the model of good values is used."""

PRUNERS = ("none", "median")

_PLOTTING = threading.Lock()
"""Held while a study's plots are drawn (a grid on Ray runs studies in driver threads)."""



def default_study_name(dataset: str, protocol: str, method: str, bits: int, seed: int, *,
                       shared: bool = False, regime: str = "full") -> str:
    """``<dataset>-<protocol>-<method>-<bits>b-seed<S>``; a shared (stage-1) study has no
    bit length: ``<dataset>-<protocol>-<method>-stage1-seed<S>``; ``-head`` ends the name
    of a study in the frozen-backbone regime."""
    middle = "stage1" if shared else f"{bits}b"
    head = f"-{regime}" if regime != "full" else ""
    return f"{dataset}-{protocol}-{method}-{middle}-seed{seed}{head}"


def pipeline_objective(template) -> Objective:
    """The objective of ``qbench tune``: validation score of one run of the pipeline.

    ``template`` is the :class:`qbench.run.pipeline.RunRequest` of every trial; a trial's
    sampled values update its ``method_params``. The score is the selection's
    ``chosen_value`` (validation MAP of the method's representation on the selection pool),
    or its ``tuning_value`` where the method's final representation comes after selection
    (householder's rotation).
    Methods that train under the trial (dqn, ssm, gsl) report each candidate's value
    during training, and the training stops when the pruner says so. Where the candidates
    come from the shared, cached stage-1 encoder (a stopped training must not be cached as
    if complete), the selection curve is reported point by point after the run: the
    pruner then takes the same decisions but saves no training time. Returns the value
    and the epochs trained against the budget (``epochs_trained``, ``epochs_budget``).
    The trials share one :class:`qbench.run.reuse.InputMemo` (the process's in a grid
    worker): the dataset and the backbone's features are loaded once per study.
    """
    from qbench.run.reuse import InputMemo, process_memo

    memo = process_memo() or InputMemo()  # the study's trials load their inputs once

    def objective(params: dict, report: Report) -> dict:
        from qbench.run.pipeline import run_selection

        live: set[int] = set()
        stopped: list[bool] = []

        def during_training(epoch: int, value: float) -> bool:
            live.add(epoch)
            stopped.append(bool(report(epoch, value)))
            return stopped[-1]

        selection = run_selection(trial_request(template, params), report=during_training,
                                  memo=memo)
        if not any(stopped):
            for epoch, value in zip(selection["epochs"], selection["values"]):
                if epoch in live or value is None or not math.isfinite(value):
                    continue
                if report(epoch, value):
                    break
        return {"value": trial_value(selection),
                "epochs_trained": selection.get("epochs_trained"),
                "epochs_budget": selection.get("epochs_budget")}

    return objective


def sampler_seed(seed: int, trials_so_far: int) -> int:
    """The TPE sampler's seed for a session that finds ``trials_so_far`` trials in its study.

    The same ``seed`` gives the same suggestions in a new study; a session resuming a study
    draws other random startup trials than the sessions before it instead of repeating them.
    """
    return int(np.random.SeedSequence([seed, trials_so_far]).generate_state(1)[0])


def trial_wall_s(trial) -> float:
    """Seconds ``trial`` ran: its own measured ``wall_s``; for a trial from before it was
    recorded, complete minus start, except a killed trial (failed by its heartbeat, no
    reason), whose end is when a later session found it, not when it stopped: 0."""
    from optuna.trial import TrialState

    if "wall_s" in trial.user_attrs:
        return float(trial.user_attrs["wall_s"])
    if trial.datetime_start is None or trial.datetime_complete is None or (
            trial.state == TrialState.FAIL and "fail_reason" not in trial.user_attrs):
        return 0.0
    return (trial.datetime_complete - trial.datetime_start).total_seconds()


def _make_pruner(name: str):
    optuna = optuna_module()
    if name not in PRUNERS:
        raise choice_error("pruner", name, PRUNERS)
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=0), {
            "name": "MedianPruner", "n_startup_trials": 5, "n_warmup_steps": 0}
    return optuna.pruners.NopPruner(), {"name": "none"}


#: What a study made before training regimes existed holds for the keys it lacks.
IDENTITY_BEFORE_REGIMES = {"regime": "full", "backbone": None}


def _check_identity(study, identity: dict, storage_text: str) -> None:
    """Record ``identity`` in a new study; refuse a study made for something else."""
    stored = study.user_attrs.get("qbench")
    if stored is None:
        if study.get_trials(deepcopy=False):
            raise QbenchError(f"study {study.study_name!r} in {storage_text} was not made by "
                              "qbench tune; give another --study or --storage")
        study.set_user_attr("qbench", identity)
        return
    for key, value in identity.items():
        recorded = stored.get(key, IDENTITY_BEFORE_REGIMES.get(key))
        if recorded != value:
            raise QbenchError(
                f"study {study.study_name!r} in {storage_text} was created for {key} "
                f"{recorded!r}, not {value!r}; give another --study or --storage")


def tune(template, *, trials: int, shared: bool = False, storage: str | None = None,
         study_name: str | None = None, timeout: float | None = None, pruner: str = "none",
         objective: Objective | None = None,
         echo: Callable[[str], None] | None = None, backend: str = "local",
         address: str | None = None, parallel: int = 1,
         gpus_per_run: float | None = None, stop=None,
         cpus_per_run: int = 1) -> tuple[Path, dict]:
    """Tune ``template.method`` on ``template.dataset`` at ``template.bits``; write the summary.

    ``template``: the :class:`qbench.run.pipeline.RunRequest` every trial runs; its
    ``method_params`` are fixed (removed from the space), its ``seed`` is the trials' seed
    and the sampler's, its ``out`` holds ``tune/``. ``trials``: the study's total of
    finished trials. ``shared``: tune the shared stage-1 knobs (once per dataset, on the
    float method) instead of the method's own space. ``timeout``: seconds after which no
    new trial starts. ``objective``: default :func:`pipeline_objective` of ``template``.
    ``echo``: receives one line per trial (None: silent). ``backend="ray"``: up to
    ``parallel`` trials at once as Ray tasks (``address``, ``gpus_per_run`` and
    ``cpus_per_run``, each trial's share, as for grids);
    this process alone asks and tells the study, so the default SQLite storage works;
    ``stop`` (a :class:`threading.Event`, Ray only) set: no further trial starts and those
    in flight are failed (a grid's driver stopping, :mod:`qbench.grid.tuned_graph`).

    Returns ``(path, record)``: the summary JSON written atomically and its content.
    Every input is checked before the storage is opened, so bad input leaves no study.
    """
    from qbench.run.pipeline import prepare
    from qbench.run.results import new_record, write_json_atomic

    optuna = optuna_module()
    check_int(trials, "--trials", low=1)
    if timeout is not None and not timeout > 0:
        raise QbenchError(f"--timeout must be a positive number of seconds, got {timeout!r}")
    study_pruner, pruner_record = _make_pruner(pruner)
    prep = prepare(template)
    method_cls = METHODS.get(template.method)
    declared = space_of(method_cls, shared=shared)
    space = {k: p for k, p in declared.items() if k not in template.method_params}
    if not space:
        what = "shared stage-1" if shared else "own"
        tunable = [n for n, c in METHODS.items() if space_of(c, shared=shared)]
        left = f" left after fixing {', '.join(sorted(declared))}" if declared else ""
        raise QbenchError(f"method {template.method} has no {what} search space{left}; "
                          f"methods with one: {', '.join(tunable) or '(none)'}")
    resolved = METHODS.resolve_params(template.method, template.method_params)
    fixed = {k: resolved[k] for k in template.method_params}
    if template.epochs is not None and "epochs" in resolved:
        fixed["epochs"] = template.epochs
    protocol = prep.protocol_spec.name
    name = study_name or default_study_name(template.dataset, protocol, template.method,
                                            template.bits, template.seed, shared=shared,
                                            regime=template.regime)
    if not SAFE_NAME.match(name):
        raise QbenchError(f"--study {name!r} is not a valid name; allowed: letters, digits "
                          "and . _ + - (not first)")
    folder = Path(template.out) / "tune"
    default_storage = storage is None
    if default_storage:
        folder.mkdir(parents=True, exist_ok=True)
        storage = f"sqlite:///{(folder / f'{name}.db').resolve()}"
    storage_text = redacted(storage) if "://" in storage else storage
    identity = {
        "scope": "shared" if shared else "method", "method": template.method,
        "dataset": template.dataset, "dataset_params": dict(template.dataset_params),
        "protocol": protocol, "bits": None if shared else template.bits,
        "seed": template.seed, "split_seed": template.split_seed,
        "select": template.select, "pool_size": template.pool_size,
        "regime": template.regime, "backbone": prep.backbone,
        "fixed": json.loads(json.dumps(fixed)),
        "space": {k: p.tune.as_dict() for k, p in space.items()},
    }

    rdb = open_storage(storage)
    if default_storage:
        write_ahead_log(rdb)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.create_study(storage=rdb, pruner=study_pruner, study_name=name,
                                direction="maximize", load_if_exists=True)
    _check_identity(study, identity, storage_text)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.sampler = optuna.samplers.TPESampler(
            seed=sampler_seed(template.seed, len(study.get_trials(deepcopy=False))),
            n_startup_trials=STARTUP_TRIALS, constant_liar=True, multivariate=True)

    objective = objective or pipeline_objective(template)

    def run_trial(trial) -> float:
        if ahead_of(trial) >= trials:  # other workers' trials fill the budget: run nothing
            trial.set_user_attr(OVER_BUDGET, True)
            trial.set_user_attr("fail_reason", "the budget was reached by other workers")
            trial.study.stop()
            return float("nan")
        started = time.perf_counter()
        try:
            return timed_trial(trial)
        finally:  # the trial's own run time: a killed trial's downtime never counts
            trial.set_user_attr("wall_s", time.perf_counter() - started)

    def ahead_of(trial) -> int:
        """Trials that count before this one: the finished ones and the running ones that
        other workers created earlier (killed workers' trials failed first). Two workers
        starting at once never both give up: only the later-numbered one sees the other."""
        fail_killed_trials(study)
        states = optuna.trial.TrialState
        return sum(t.state in (states.COMPLETE, states.PRUNED)
                   or (t.state == states.RUNNING and t.number < trial.number)
                   for t in study.get_trials(deepcopy=False))

    def timed_trial(trial) -> float:
        params = {k: suggest(trial, k, p) for k, p in space.items()}
        earlier = completed_with(trial, params)
        if earlier is not None:  # TPE repeats points of small discrete spaces: reuse
            pruned = replay(trial, earlier)
            if pruned is not None:
                raise optuna.TrialPruned(f"pruned at epoch {pruned}")
            return earlier.value
        pruned_at: list[int] = []

        def report(epoch: int, value: float) -> bool:
            trial.report(value, epoch)
            if not pruned_at and trial.should_prune():
                pruned_at.append(epoch)
            return bool(pruned_at)

        try:
            value = objective(params, report)
            if isinstance(value, dict):  # the value and what the trial trained
                for key in ("epochs_trained", "epochs_budget"):
                    if value.get(key) is not None:
                        trial.set_user_attr(key, int(value[key]))
                value = value["value"]
        except Exception as exc:
            trial.set_user_attr("fail_reason", one_line(exc))
            raise
        state, value, reason = outcome(value, bool(pruned_at))
        if state == "pruned":
            raise optuna.TrialPruned(f"pruned at epoch {pruned_at[0]}")
        if state == "fail":
            trial.set_user_attr("fail_reason", reason)
            return float("nan")
        return value

    fail_killed_trials(study)  # a killed session's trials must not count below
    counts = trial_counts(study)
    remaining = trials - counts["complete"] - counts["pruned"]
    if remaining > 0 and backend == "ray":
        from qbench.grid.tune_ray import optimize_on_ray

        optimize_on_ray(study, space, template, remaining, timeout=timeout,
                         parallel=parallel, address=address, gpus_per_run=gpus_per_run,
                         callback=budget_callback(trials, echo, stop=False), stop=stop,
                         cpus_per_run=cpus_per_run)
    elif remaining > 0:
        study.optimize(run_trial, n_trials=remaining, timeout=timeout, catch=(Exception,),
                       callbacks=[budget_callback(trials, echo)])
    counts = trial_counts(study)
    if counts["complete"] == 0:
        reasons = [t.user_attrs["fail_reason"] for t in study.get_trials(deepcopy=False)
                   if "fail_reason" in t.user_attrs and t.state == optuna.trial.TrialState.FAIL]
        raise QbenchError(f"no trial of study {name!r} completed ({counts['failed']} failed"
                          + (f"; last: {reasons[-1]}" if reasons else "") + ")")

    finished = counts["complete"] + counts["pruned"]
    notes = []
    if finished <= STARTUP_TRIALS:
        notes.append(f"all {finished} finished trials were random: TPE samples its first "
                     f"{STARTUP_TRIALS} trials at random before it models good values")
    if finished < trials:
        notes.append(f"{finished} of {trials} trials finished (timeout or failures); rerun "
                     "the same command to run the missing ones")
    device = prep.device
    wall_s = sum(trial_wall_s(t) for t in study.get_trials(deepcopy=False))
    best = study.best_trial
    record = new_record({
        "study": name,
        "storage": storage_text,
        **identity,
        "trials_asked": trials,
        "best_params": best.params,
        "best_value": best.value,
        "best_trial": best.number,
        "trials": counts,
        "failures": [{"trial": t.number, "reason": t.user_attrs.get("fail_reason")}
                     for t in study.get_trials(deepcopy=False)
                     if t.state == optuna.trial.TrialState.FAIL
                     and OVER_BUDGET not in t.user_attrs],
        "objective": "validation MAP of the method's evaluated representation on the "
                     "selection pool (model selection's), never the query split",
        "sampler": {"name": "TPESampler", "seed": template.seed,
                    "n_startup_trials": STARTUP_TRIALS, "constant_liar": True,
                    "multivariate": True},
        "pruner": pruner_record,
        "compute": {"trial_wall_s": wall_s, "device": device,
                    "epochs": trained_epochs(study)},
        "notes": notes,
        "qbench_version": __version__,
    }, kind="tuning", device=device)
    with _PLOTTING:  # pyplot's current figure is one per process: studies in threads wait
        record["plots"] = save_study_plots(study, folder, name, list(space))
    path = write_json_atomic(folder / f"{name}.json", record)
    return path, record
