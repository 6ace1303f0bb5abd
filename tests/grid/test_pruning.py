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
