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

import datetime as _dt
import functools
import json
import math
import re
import time
import warnings
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from qbench import __version__
from qbench.core.errors import QbenchError, choice_error, one_line
from qbench.grid.storage import (
    open_storage,
    optuna_module,
    redacted,
    save_study_plots,
    trial_counts,
    write_ahead_log,
)
from qbench.registry import METHODS, Param, space_of

STARTUP_TRIALS = 10
"""TPE's first trials sample the space at random before the model of good values is used."""

PRUNERS = ("none", "median")

Report = Callable[[int, float], bool]
Objective = Callable[[dict, Report], float]

_STUDY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")


def default_study_name(dataset: str, protocol: str, method: str, bits: int, seed: int, *,
                       shared: bool = False) -> str:
    """``<dataset>-<protocol>-<method>-<bits>b-seed<S>``; a shared (stage-1) study has no
    bit length: ``<dataset>-<protocol>-<method>-stage1-seed<S>``."""
    middle = "stage1" if shared else f"{bits}b"
    return f"{dataset}-{protocol}-{method}-{middle}-seed{seed}"


def pipeline_objective(template) -> Objective:
    """The objective of ``qbench tune``: validation score of one run of the pipeline.

    ``template`` is the :class:`qbench.run.pipeline.RunRequest` of every trial; a trial's
    sampled values update its ``method_params``. The score is the selection's
    ``chosen_value`` (validation MAP of the method's representation on the selection pool),
    or its ``tuning_value`` where the method's final representation comes after selection
    (householder's rotation).
    The selection curve is reported point by point after the run, so a pruner takes the
    same decisions as it would during training, but saves no training time.
    """

    def objective(params: dict, report: Report) -> float:
        from qbench.run.pipeline import run_selection

        req = replace(template, method_params={**template.method_params, **params},
                      progress=False)
        selection = run_selection(req)
        for epoch, value in zip(selection["epochs"], selection["values"]):
            if value is not None and math.isfinite(value) and report(epoch, value):
                break
        return _trial_value(selection)

    return objective


def sampler_seed(seed: int, trials_so_far: int) -> int:
    """The TPE sampler's seed for a session that finds ``trials_so_far`` trials in its study.

    The same ``seed`` gives the same suggestions in a new study; a session resuming a study
    draws other random startup trials than the sessions before it instead of repeating them.
    """
    return int(np.random.SeedSequence([seed, trials_so_far]).generate_state(1)[0])


def _suggest(trial, name: str, param: Param) -> Any:
    space = param.tune
    if space.choices is not None:
        return trial.suggest_categorical(name, list(space.choices))
    if param.type is int:
        return trial.suggest_int(name, int(space.low), int(space.high), log=space.log)
    return trial.suggest_float(name, space.low, space.high, log=space.log)


def _make_pruner(name: str):
    optuna = optuna_module()
    if name not in PRUNERS:
        raise choice_error("pruner", name, PRUNERS)
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=0), {
            "name": "MedianPruner", "n_startup_trials": 5, "n_warmup_steps": 0}
    return optuna.pruners.NopPruner(), {"name": "none"}


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
        if stored.get(key) != value:
            raise QbenchError(
                f"study {study.study_name!r} in {storage_text} was created for {key} "
                f"{stored.get(key)!r}, not {value!r}; give another --study or --storage")


def _completed_with(trial, params: dict):
    """An earlier complete trial of ``trial``'s study with exactly ``params``, or None.

    A trial's value is a function of its parameters up to nondeterminism (the seed, split
    and epochs are fixed per study), so a repeated point -- common in small discrete spaces,
    e.g. a single choice -- is not run again: the trial is told the earlier value and counts
    towards the budget as a complete trial (its wall time, near zero, is what the summary's
    compute adds for it).
    """
    from optuna.trial import TrialState

    for other in trial.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if other.number != trial.number and other.params == params:
            return other
    return None


def _replay(trial, earlier) -> int | None:
    """Give ``trial`` the curve of ``earlier`` (same parameters), as its objective would have
    reported it; the epoch where the pruner stops it (as it would stop a rerun), or None."""
    trial.set_user_attr("same_params_as", earlier.number)
    for step, value in sorted(earlier.intermediate_values.items()):
        trial.report(value, step)
        if trial.should_prune():
            return step
    return None


def _budget_callback(trials: int, echo: Callable[[str], None] | None, *,
                     stop: bool = True) -> Callable:
    """After each trial: one line to ``echo``, and (``stop``) stop ``study.optimize`` once
    the study holds ``trials`` finished trials (what ``optuna.study.MaxTrialsCallback``
    does, with one storage read for both; it stops every worker of a shared study at the
    same total). Ask-and-tell loops count their own trials and pass ``stop=False``."""
    from optuna.trial import TrialState

    def callback(study, trial) -> None:
        finished = study.get_trials(deepcopy=False,
                                    states=(TrialState.COMPLETE, TrialState.PRUNED))
        if stop and len(finished) >= trials:
            study.stop()
        if echo is None:
            return
        wall = (trial.datetime_complete - trial.datetime_start).total_seconds()
        head = f"trial {trial.number} ({len(finished)}/{trials} finished, {wall:.1f} s)"
        params = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                           for k, v in trial.params.items())
        if trial.state == TrialState.COMPLETE:
            best = max(t.value for t in finished if t.state == TrialState.COMPLETE)
            same = trial.user_attrs.get("same_params_as")
            again = "" if same is None else f"; same parameters as trial {same}, not rerun"
            echo(f"{head}: {trial.value:.4f} (best {best:.4f}{again}) [{params}]")
        elif trial.state == TrialState.PRUNED:
            echo(f"{head}: pruned at epoch {trial.last_step} [{params}]")
        else:
            echo(f"{head}: failed, {trial.user_attrs.get('fail_reason', '?')} [{params}]")

    return callback


def tune(template, *, trials: int, shared: bool = False, storage: str | None = None,
         study_name: str | None = None, timeout: float | None = None, pruner: str = "none",
         objective: Objective | None = None,
         echo: Callable[[str], None] | None = None, backend: str = "local",
         address: str | None = None, parallel: int = 1,
         gpus_per_run: float | None = None) -> tuple[Path, dict]:
    """Tune ``template.method`` on ``template.dataset`` at ``template.bits``; write the summary.

    ``template``: the :class:`qbench.run.pipeline.RunRequest` every trial runs; its
    ``method_params`` are fixed (removed from the space), its ``seed`` is the trials' seed
    and the sampler's, its ``out`` holds ``tune/``. ``trials``: the study's total of
    finished trials. ``shared``: tune the shared stage-1 knobs (once per dataset, on the
    float method) instead of the method's own space. ``timeout``: seconds after which no
    new trial starts. ``objective``: default :func:`pipeline_objective` of ``template``.
    ``echo``: receives one line per trial (None: silent). ``backend="ray"``: up to
    ``parallel`` trials at once as Ray tasks (``address``, ``gpus_per_run`` as for grids);
    this process alone asks and tells the study, so the default SQLite storage works.

    Returns ``(path, record)``: the summary JSON written atomically and its content.
    Every input is checked before the storage is opened, so bad input leaves no study.
    """
    from qbench.core.provenance import environment
    from qbench.run.pipeline import prepare
    from qbench.run.results import SCHEMA_VERSION, write_json_atomic

    optuna = optuna_module()
    if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
        raise QbenchError(f"--trials must be a positive integer, got {trials!r}")
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
                                            template.bits, template.seed, shared=shared)
    if not _STUDY_NAME.match(name):
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
        params = {k: _suggest(trial, k, p) for k, p in space.items()}
        earlier = _completed_with(trial, params)
        if earlier is not None:  # TPE repeats points of small discrete spaces: reuse
            pruned = _replay(trial, earlier)
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
        except Exception as exc:
            trial.set_user_attr("fail_reason", one_line(exc))
            raise
        if pruned_at:
            raise optuna.TrialPruned(f"pruned at epoch {pruned_at[0]}")
        if value is None or not math.isfinite(value):
            trial.set_user_attr("fail_reason", f"objective returned {value!r}")
            return float("nan")
        return float(value)

    counts = trial_counts(study)
    remaining = trials - counts["complete"] - counts["pruned"]
    if remaining > 0 and backend == "ray":
        _optimize_on_ray(study, space, template, remaining, timeout=timeout,
                         parallel=parallel, address=address, gpus_per_run=gpus_per_run,
                         callback=_budget_callback(trials, echo, stop=False))
    elif remaining > 0:
        study.optimize(run_trial, n_trials=remaining, timeout=timeout, catch=(Exception,),
                       callbacks=[_budget_callback(trials, echo)])
    counts = trial_counts(study)
    if counts["complete"] == 0:
        reasons = [t.user_attrs["fail_reason"] for t in study.get_trials(deepcopy=False)
                   if "fail_reason" in t.user_attrs]
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
    wall_s = sum((t.datetime_complete - t.datetime_start).total_seconds()
                 for t in study.get_trials(deepcopy=False)
                 if t.datetime_start is not None and t.datetime_complete is not None)
    best = study.best_trial
    record = {
        "schema_version": SCHEMA_VERSION,
        "kind": "tuning",
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
                     if t.state == optuna.trial.TrialState.FAIL],
        "objective": "validation MAP of the method's evaluated representation on the "
                     "selection pool (model selection's), never the query split",
        "sampler": {"name": "TPESampler", "seed": template.seed,
                    "n_startup_trials": STARTUP_TRIALS, "constant_liar": True,
                    "multivariate": True},
        "pruner": pruner_record,
        "compute": {"trial_wall_s": wall_s, "device": device},
        "notes": notes,
        "qbench_version": __version__,
        "env": environment(device),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    record["plots"] = save_study_plots(study, folder, name, list(space))
    path = write_json_atomic(folder / f"{name}.json", record)
    return path, record


def _trial_value(selection: dict) -> float | None:
    """The objective's value from a selection record (see :func:`pipeline_objective`)."""
    return selection.get("tuning_value", selection["chosen_value"])


def _remote_selection(template, params: dict) -> dict:
    """One trial on a Ray worker: the selection record of the pipeline with ``params``."""
    from qbench.run.pipeline import run_selection

    return run_selection(replace(template, method_params={**template.method_params, **params},
                                 progress=False))


def _optimize_on_ray(study, space: dict, template, remaining: int, *, timeout: float | None,
                     parallel: int, address: str | None, gpus_per_run: float | None,
                     callback: Callable) -> None:
    """Ask-and-tell: ``remaining`` trials, ``parallel`` at a time, as Ray tasks."""
    from qbench.grid.backends.base import RunResources
    from qbench.grid.backends.ray import run_device, run_trials

    optuna = optuna_module()
    state = optuna.trial.TrialState
    resources = RunResources(cpu=1, gpu=gpus_per_run or 0.0)
    run_template = replace(template, device=run_device(template.device, resources))
    deadline = None if timeout is None else time.monotonic() + timeout
    asked = [0]

    def ask():
        while True:
            if asked[0] >= remaining or (deadline is not None and time.monotonic() > deadline):
                return None
            asked[0] += 1
            with warnings.catch_warnings():  # ask-and-tell: this driver is the heartbeat
                warnings.filterwarnings("ignore", "Heartbeat of storage")
                trial = study.ask()
            params = {k: _suggest(trial, k, p) for k, p in space.items()}
            earlier = _completed_with(trial, params)
            if earlier is None:
                return trial, params
            if _replay(trial, earlier) is not None:  # told at once, no task
                study.tell(trial, state=state.PRUNED)
            else:
                study.tell(trial, earlier.value)
            callback(study, study.get_trials(deepcopy=False)[trial.number])

    def tell(trial, selection, error) -> None:
        if error is not None:
            trial.set_user_attr("fail_reason", one_line(error))
            study.tell(trial, state=state.FAIL)
        else:
            for epoch, value in zip(selection["epochs"], selection["values"]):
                if value is not None and math.isfinite(value):
                    trial.report(value, epoch)
            value = _trial_value(selection)
            if trial.should_prune():
                study.tell(trial, state=state.PRUNED)
            elif value is None or not math.isfinite(value):
                trial.set_user_attr("fail_reason", f"objective returned {value!r}")
                study.tell(trial, state=state.FAIL)
            else:
                study.tell(trial, float(value))
        callback(study, study.get_trials(deepcopy=False)[trial.number])

    run_trials(ask, functools.partial(_remote_selection, run_template), tell,
               parallel=parallel, address=address, resources=resources)


def load_tuned_params(path: Path, method: str, dataset: str, bits: int, *,
                      protocol: str | None = None) -> tuple[dict, dict]:
    """The parameters a tuning summary (``qbench tune``'s JSON) gives a run, validated.

    A method study applies to its method, dataset and bits only; a shared (stage-1) study
    to any method of its dataset that declares those parameters. ``protocol``: also
    checked when given. Returns ``(params, tuning)``: the study's fixed parameters updated
    by its best ones (name -> parsed value), and the record a result carries,
    ``{"trials": finished trials, "best_value": ..., "study": name, "best_params": {...}}``.
    Unknown parameters and out-of-range values raise :class:`QbenchError`.
    """
    path = Path(path)
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        raise QbenchError(f"--params-from {path}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise QbenchError(f"--params-from {path}: not a JSON file ({one_line(exc)})") from None
    keys = ("scope", "method", "dataset", "bits", "fixed", "best_params", "best_value",
            "trials", "study")
    if not isinstance(record, dict) or record.get("kind") != "tuning" or \
            any(k not in record for k in keys):
        raise QbenchError(f"--params-from {path}: not a qbench tune summary (needs kind "
                          f"'tuning' and {', '.join(keys)})")
    wanted = {"dataset": dataset, "protocol": protocol}
    if record["scope"] == "method":
        wanted.update(method=method, bits=bits)
    for key, value in wanted.items():
        if value is not None and record.get(key) != value:
            raise QbenchError(f"--params-from {path} was tuned for {key} {record.get(key)!r}, "
                              f"not {value!r}")
    given = {**record["fixed"], **record["best_params"]}
    resolved = METHODS.resolve_params(method, given)
    params = {k: resolved[k] for k in given}
    trials = record["trials"]
    tuning = {"trials": trials.get("complete", 0) + trials.get("pruned", 0),
              "best_value": record["best_value"], "study": record["study"],
              "best_params": {k: params[k] for k in record["best_params"]}}
    return params, tuning
