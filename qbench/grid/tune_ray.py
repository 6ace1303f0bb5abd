"""Tuning trials as Ray tasks: ask-and-tell, the driver alone talking to the study (so the
default SQLite storage works), up to ``parallel`` trials at once on the cluster
(:func:`qbench.grid.cluster.run_trials`)."""

from __future__ import annotations

import datetime
import functools
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import replace

from qbench.core.errors import one_line
from qbench.grid.storage import HEARTBEAT_S, optuna_module
from qbench.grid.trials import completed_with, outcome, replay, suggest, trial_request, trial_value

RUN_START, RUN_END = "run_start", "run_end"
"""User attributes of a Ray trial: when its run started and ended on the worker (Unix
seconds), so its time excludes the wait in Ray's queue."""


def remote_selection(template, params: dict) -> dict:
    """One trial on a Ray worker: the selection record of the pipeline with ``params``,
    with the run's start and end on the worker (:data:`RUN_START`, :data:`RUN_END`)."""
    from qbench.run.pipeline import run_selection

    started = time.time()
    selection = dict(run_selection(trial_request(template, params)))
    selection[RUN_START], selection[RUN_END] = started, time.time()
    return selection


def optimize_on_ray(study, space: dict, template, remaining: int, *, timeout: float | None,
                     parallel: int, address: str | None, gpus_per_run: float | None,
                     callback: Callable, stop=None, cpus_per_run: int = 1) -> None:
    """Ask-and-tell: ``remaining`` trials, ``parallel`` at a time, as Ray tasks; none
    starts once ``stop`` (a :class:`threading.Event`) is set, and those in flight fail."""
    from qbench.grid.cells import RunResources
    from qbench.grid.cluster import run_trials, task_device

    optuna = optuna_module()
    state = optuna.trial.TrialState
    resources = RunResources(cpu=cpus_per_run, gpu=gpus_per_run or 0.0)
    run_template = replace(template, device=task_device(template.device, resources))
    deadline = None if timeout is None else time.monotonic() + timeout
    asked = [0]
    rdb = getattr(study._storage, "_backend", study._storage)

    def heartbeat(trial) -> None:
        if getattr(rdb, "heartbeat_interval", None) is not None:
            rdb.record_heartbeat(trial._trial_id)

    def ask():
        while True:
            if asked[0] >= remaining or (deadline is not None and time.monotonic() > deadline) \
                    or (stop is not None and stop.is_set()):
                return None
            asked[0] += 1
            with warnings.catch_warnings():  # ask-and-tell: this driver is the heartbeat
                warnings.filterwarnings("ignore", "Heartbeat of storage")
                trial = study.ask()
            heartbeat(trial)  # this driver beats for its trials: a killed driver's go stale
            params = {k: suggest(trial, k, p) for k, p in space.items()}
            earlier = completed_with(trial, params)
            if earlier is None:
                return trial, params
            if replay(trial, earlier) is not None:  # told at once, no task
                study.tell(trial, state=state.PRUNED)
            else:
                study.tell(trial, earlier.value)
            callback(study, study.get_trials(deepcopy=False)[trial.number])

    def tell(trial, selection, error) -> None:
        # the trial's own time: its run on the worker; without one (failed), ask to now
        if error is None and RUN_START in selection:
            for key in (RUN_START, RUN_END):
                trial.set_user_attr(key, float(selection[key]))
            trial.set_user_attr("wall_s", selection[RUN_END] - selection[RUN_START])
        else:
            trial.set_user_attr("wall_s", (datetime.datetime.now()
                                           - trial.datetime_start).total_seconds())
        if error is not None:
            trial.set_user_attr("fail_reason", one_line(error))
            study.tell(trial, state=state.FAIL)
        else:
            for key in ("epochs_trained", "epochs_budget"):  # remote trials train fully
                if selection.get(key) is not None:
                    trial.set_user_attr(key, int(selection[key]))
            pruned = False
            for epoch, value in zip(selection["epochs"], selection["values"]):
                if value is not None and math.isfinite(value):
                    trial.report(value, epoch)
                    if trial.should_prune():  # as the local objective asks: every epoch
                        pruned = True
                        break
            ending, value, reason = outcome(trial_value(selection), pruned)
            if ending == "pruned":
                study.tell(trial, state=state.PRUNED)
            elif ending == "fail":
                trial.set_user_attr("fail_reason", reason)
                study.tell(trial, state=state.FAIL)
            else:
                study.tell(trial, value)
        callback(study, study.get_trials(deepcopy=False)[trial.number])

    run_trials(ask, functools.partial(remote_selection, run_template), tell,
               parallel=parallel, address=address, resources=resources,
               beat=lambda trials: [heartbeat(t) for t in trials], beat_s=HEARTBEAT_S,
               stop=stop)
