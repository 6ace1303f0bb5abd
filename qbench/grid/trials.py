"""The pieces of one tuning trial that the local loop (:mod:`qbench.grid.tune`) and the Ray
ask-and-tell loop (:mod:`qbench.grid.tune_ray`) share: sampling a point, the run request,
reusing an earlier trial with the same point, how a trial ends and the per-trial line."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from qbench.registry import Param

Report = Callable[[int, float], bool]
Objective = Callable[[dict, Report], "float | dict"]
"""(sampled params, report) -> the value, or {"value", "epochs_trained", "epochs_budget"}."""


def trial_request(template, params: dict):
    """The :class:`qbench.run.pipeline.RunRequest` of one trial: ``template`` with the
    sampled ``params`` over its fixed method parameters, quiet."""
    return replace(template, method_params={**template.method_params, **params},
                   progress=False)


def outcome(value: float | None, pruned: bool) -> tuple[str, float | None, str | None]:
    """How a trial that ran ends, for the local and the Ray path alike: ``("pruned", None,
    None)``, ``("fail", None, reason)`` for a missing or non-finite value, else
    ``("complete", value, None)``."""
    if pruned:
        return "pruned", None, None
    if value is None or not math.isfinite(value):
        return "fail", None, f"objective returned {value!r}"
    return "complete", float(value), None


def trial_value(selection: dict) -> float | None:
    """The objective's value from a selection record (see :func:`pipeline_objective`)."""
    return selection.get("tuning_value", selection["chosen_value"])


def suggest(trial, name: str, param: Param) -> Any:
    space = param.tune
    if space.choices is not None:
        return trial.suggest_categorical(name, list(space.choices))
    if param.type is int:
        return trial.suggest_int(name, int(space.low), int(space.high), log=space.log)
    return trial.suggest_float(name, space.low, space.high, log=space.log)


def completed_with(trial, params: dict):
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


def replay(trial, earlier) -> int | None:
    """Give ``trial`` the curve of ``earlier`` (same parameters), as its objective would have
    reported it; the epoch where the pruner stops it (as it would stop a rerun), or None."""
    trial.set_user_attr("same_params_as", earlier.number)
    for step, value in sorted(earlier.intermediate_values.items()):
        trial.report(value, step)
        if trial.should_prune():
            return step
    return None


def budget_callback(trials: int, echo: Callable[[str], None] | None, *,
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
            trained = trial.user_attrs.get("epochs_trained")
            budget = trial.user_attrs.get("epochs_budget")
            of = "" if trained is None else f", {trained} of {budget} epochs trained"
            echo(f"{head}: pruned at epoch {trial.last_step}{of} [{params}]")
        else:
            echo(f"{head}: failed, {trial.user_attrs.get('fail_reason', '?')} [{params}]")

    return callback


def trained_epochs(study) -> dict:
    """What the study's finished trials trained: epochs trained and budgeted (summed over
    the trials that trained: a trial reusing an earlier one's point, or one whose encoder
    came from the cache, trains nothing and is left out; epochs a joint method took over
    from its warm start count in neither), and the share of the budget pruning saved."""
    from optuna.trial import TrialState

    trained = budget = counted = 0
    for trial in study.get_trials(deepcopy=False,
                                  states=(TrialState.COMPLETE, TrialState.PRUNED)):
        attrs = trial.user_attrs
        if attrs.get("epochs_budget"):  # 0: its encoder came from the cache
            trained += attrs["epochs_trained"]
            budget += attrs["epochs_budget"]
            counted += 1
    return {"trials_counted": counted, "trained": trained, "budget": budget,
            "saved_share": (1 - trained / budget) if budget else None}
