"""Optuna plumbing for :mod:`qbench.grid.tune`: importing optuna, opening a study's storage
(heartbeats, retries of killed trials, write-ahead logging for SQLite) and drawing its plots.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from qbench.core.errors import QbenchError, one_line

HEARTBEAT_S = 30
"""Seconds between a running trial's heartbeats in the storage."""

GRACE_S = 120
"""Seconds without a heartbeat after which a RUNNING trial counts as killed (failed)."""

MAX_RETRY = 2
"""How often a killed trial's parameters are retried."""


def optuna_module():
    """The optuna module, or a one-line error saying how to install it."""
    try:
        import optuna
    except ImportError:
        raise QbenchError("qbench tune needs optuna; install it: pip install 'optuna>=4.9'") \
            from None
    return optuna


def open_storage(url: str):
    """An Optuna RDB storage with heartbeats and retries of killed trials, or a one-line error."""
    optuna = optuna_module()
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, SQLAlchemyError

    try:
        make_url(url)
    except ArgumentError:
        raise QbenchError(f"--storage {url!r} is not a database URL; expected e.g. "
                          "sqlite:///path/study.db or postgresql://user@host/db") from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(
                url, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S,
                heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(
                    max_retry=MAX_RETRY),
            )
    except (SQLAlchemyError, ImportError, ValueError) as exc:
        raise QbenchError(f"--storage {redacted(url)} cannot be opened: {one_line(exc)}") \
            from None


OVER_BUDGET = "over_budget"
"""User attribute of a trial that ran nothing because other workers' trials had already
filled the study's budget (failed, so it never counts)."""


def fail_killed_trials(study) -> list[int]:
    """Fail the RUNNING trials of killed workers, so that they never count and their
    parameters are retried (``MAX_RETRY``); returns their numbers. Optuna's heartbeat check
    fails a trial whose last heartbeat is older than ``GRACE_S``. A trial killed between its
    creation and its first heartbeat has none, so it is failed here once it started more
    than ``GRACE_S`` ago (a live worker's first heartbeat follows its trial's creation
    within milliseconds; the Ray driver records its trials' heartbeats itself). Ages are
    read on this host's clock, as Optuna records the start: workers sharing one server
    database need clocks that agree to well within ``GRACE_S``. A killed trial counts no
    compute time (``wall_s`` 0): its end is when it was found, not when it stopped."""
    import datetime

    optuna = optuna_module()
    from optuna.trial import TrialState

    storage = study._storage
    rdb = getattr(storage, "_backend", storage)
    if not isinstance(rdb, optuna.storages.RDBStorage) or rdb.heartbeat_interval is None:
        return []
    from optuna.storages._rdb import models

    stale = set(rdb._get_stale_trial_ids(study._study_id))
    cutoff = datetime.datetime.now() - datetime.timedelta(seconds=GRACE_S)
    with rdb.scoped_session() as session:
        unbeaten = {
            trial.trial_id for trial in session.query(models.TrialModel)
            .filter(models.TrialModel.study_id == study._study_id)
            .filter(models.TrialModel.state == TrialState.RUNNING).all()
            if not trial.heartbeats and trial.datetime_start is not None
            and trial.datetime_start < cutoff}
    retry = rdb.get_heartbeat_stale_trial_callback()
    failed = []
    for trial_id in sorted(stale | unbeaten):
        frozen = storage.get_trial(trial_id)
        try:
            storage.set_trial_user_attr(trial_id, "wall_s", 0.0)
            storage.set_trial_user_attr(
                trial_id, "fail_reason", "killed before its first heartbeat"
                if trial_id in unbeaten else f"killed: no heartbeat for {GRACE_S} s")
            if not storage.set_trial_state_values(trial_id, state=TrialState.FAIL):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # another worker (or the trial itself) ended it first
        failed.append(frozen.number)
        if retry is not None:
            retry(study, storage.get_trial(trial_id))
    return failed


def write_ahead_log(rdb) -> None:
    """Switch the SQLite file qbench created to write-ahead logging: the heartbeat thread and
    readers no longer block the writer (measured: half the storage time per trial). Commits
    then sync only at checkpoints (``synchronous=NORMAL``, set on every connection): a killed
    process loses nothing, a power cut at most the last trials, never the file's integrity."""
    from sqlalchemy import event

    def relaxed_sync(dbapi_connection, _record) -> None:
        dbapi_connection.execute("PRAGMA synchronous=NORMAL")

    event.listen(rdb.engine, "connect", relaxed_sync)
    rdb.engine.dispose()  # pooled connections were opened before the listener
    with rdb.engine.connect() as connection:
        connection.exec_driver_sql("PRAGMA journal_mode=WAL")


def redacted(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def trial_counts(study) -> dict[str, int]:
    """Complete, pruned and failed trials of ``study``."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    counts = {key: sum(t.state == state for t in trials) for key, state in
              (("complete", TrialState.COMPLETE), ("pruned", TrialState.PRUNED),
               ("failed", TrialState.FAIL))}
    counts["over_budget"] = sum(t.state == TrialState.FAIL and OVER_BUDGET in t.user_attrs
                                for t in trials)
    counts["failed"] -= counts["over_budget"]
    return counts


def save_study_plots(study, folder: Path, name: str, space: list[str]) -> dict[str, str | None]:
    """Optimisation history and parameter importances as PNG; None where not drawable."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna
    from optuna.visualization import matplotlib as vis

    from qbench.core.atomic import atomic_write

    def save(ax, path: Path) -> str:
        fig = ax.figure
        fig.tight_layout()
        with atomic_write(path) as fh:
            fig.savefig(fh, format="png", dpi=120)
        plt.close(fig)
        return str(path)

    out: dict[str, str | None] = {"history": None, "importance": None}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        out["history"] = save(vis.plot_optimization_history(study),
                              folder / f"{name}-history.png")
        if trial_counts(study)["complete"] >= 2 and space:
            try:
                ax = vis.plot_param_importances(
                    study, params=space,
                    evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0))
            except (ValueError, RuntimeError):
                plt.close("all")  # too few distinct values to attribute importance
            else:
                out["importance"] = save(ax, folder / f"{name}-importance.png")
    return out
