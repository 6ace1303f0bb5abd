"""Pruning that saves compute (issue 23, part 2): a trial reports each candidate while it
trains, and the pruner stops the training itself."""

from __future__ import annotations

import pytest

from qbench.grid import tune as tune_module
from qbench.grid.tune import tune
from qbench.run.pipeline import RunRequest, run_selection

EPOCHS = 10
TRIALS = 10  # all within TPE's random start-up: both studies sample the same points


def template(tmp_path, out: str) -> RunRequest:
    return RunRequest(method="dqn", dataset="synthetic", bits=8, seed=0, device="cpu",
                      epochs=EPOCHS, out=tmp_path / out, cache_dir=tmp_path / "cache",
                      dataset_params={"n_items": 600, "dim": 16, "noise": 1.5,
                                      "n_train": 200, "n_query": 50, "n_val": 50},
                      method_params={"warmup": 0, "refit_every": 1, "subspaces": 2})


def test_a_stopping_reporter_stops_the_training(tmp_path):
    reported = []

    def stop_at_second(epoch, value):
        reported.append(epoch)
        return len(reported) == 2

    selection = run_selection(template(tmp_path, "a"), report=stop_at_second)
    assert selection["epochs_budget"] == EPOCHS
    assert selection["epochs_trained"] == reported[1] + 1 < EPOCHS
    assert selection["epochs"] == reported  # candidates scored once, during training
    full = run_selection(template(tmp_path, "b"))
    assert full["epochs_trained"] == EPOCHS
    assert full["values"][:2] == pytest.approx(selection["values"])  # the same scores


@pytest.fixture(scope="module")
def studies(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("pruning")
    records = {}
    for pruner in ("none", "median"):
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(tune_module, "save_study_plots", lambda *a, **k: {})
            records[pruner] = tune(template(tmp_path, pruner), trials=TRIALS,
                                   pruner=pruner)[1]
    return records


def test_a_pruned_trial_trains_fewer_epochs_than_its_budget(studies):
    import optuna

    record = studies["median"]
    assert record["trials"]["pruned"] >= 1
    study = optuna.load_study(study_name=record["study"], storage=record["storage"])
    pruned = [t for t in study.trials if t.state == optuna.trial.TrialState.PRUNED]
    assert pruned and all(t.user_attrs["epochs_trained"] < t.user_attrs["epochs_budget"]
                          for t in pruned)


def test_pruning_reaches_the_best_value_with_fewer_epochs(studies):
    plain, pruned = studies["none"], studies["median"]
    assert plain["compute"]["epochs"]["saved_share"] == 0
    assert pruned["compute"]["epochs"]["trained"] < plain["compute"]["epochs"]["trained"]
    assert pruned["compute"]["epochs"]["saved_share"] > 0
    assert pruned["best_value"] == pytest.approx(plain["best_value"])


def test_a_study_made_before_regimes_resumes_in_the_full_regime():
    import optuna

    from qbench.core.errors import QbenchError
    from qbench.grid.tune import _check_identity

    study = optuna.create_study(direction="maximize")
    study.set_user_attr("qbench", {"method": "dqn", "bits": 32})  # no regime, no backbone
    _check_identity(study, {"method": "dqn", "bits": 32, "regime": "full", "backbone": None},
                    "memory")
    with pytest.raises(QbenchError, match="created for regime 'full', not 'head'"):
        _check_identity(study, {"method": "dqn", "regime": "head"}, "memory")


def test_the_tuning_bar_counts_the_finished_trials_of_running_studies(tmp_path):
    import optuna

    from qbench.grid.tuning import _TrialCounter

    class Template:
        out = tmp_path

    (tmp_path / "tune").mkdir()
    storage = f"sqlite:///{tmp_path / 'tune' / 's1.db'}"
    study = optuna.create_study(study_name="s1", storage=storage, direction="maximize")
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=3)
    counter = _TrialCounter([("a", Template, "s1"), ("b", Template, "s2")])
    assert counter.total() == 3  # s2 has no storage yet: 0
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    assert counter.total() == 5
    counter.finish("b", 4)
    assert counter.total() == 9
