"""Scoring candidates during training (a tuning trial's pruning): the trainer stops when
its candidate callback says so, and the cached stage-1 training is never stopped (so the
cache never holds a partial training). Selection reusing the scores: test_selection.py."""

import numpy as np
import pytest

from qbench.run.pipeline import RunRequest, run_selection


def _request(tmp_path, method, out, **params):
    return RunRequest(method=method, dataset="synthetic", bits=8, seed=0, device="cpu",
                      epochs=10, out=tmp_path / out, cache_dir=tmp_path / "cache",
                      dataset_params={"n_items": 400, "dim": 16, "n_train": 150,
                                      "n_query": 40, "n_val": 40},
                      method_params=params)


def test_a_trainer_stopped_by_its_candidate_callback_trains_fewer_epochs(tmp_path):
    reported = []
    selection = run_selection(_request(tmp_path, "dqn", "a", warmup=0, subspaces=2),
                              report=lambda e, v: reported.append(e) or e >= 2)
    assert reported and reported[-1] >= 2
    assert selection["epochs_trained"] == reported[-1] + 1 < selection["epochs_budget"] == 10
    assert max(selection["epochs"]) == reported[-1]


def test_a_cached_stage1_training_is_never_stopped_or_cached_partial(tmp_path):
    calls = []
    stopped = run_selection(_request(tmp_path, "float", "a"),
                            report=lambda e, v: calls.append(e) or True)
    assert calls == []  # stage-1 candidates are not reported during training
    assert stopped["epochs_trained"] == stopped["epochs_budget"] == 10
    again = run_selection(_request(tmp_path, "float", "b"))  # the cached encoder
    assert again["epochs"] == stopped["epochs"] and len(again["epochs"]) == 10
    np.testing.assert_array_equal(again["values"], stopped["values"])
    assert again["chosen_value"] == pytest.approx(stopped["chosen_value"])


def test_epochs_trained_leave_out_a_warm_start_and_a_cached_encoder(tmp_path):
    # dqn warm-starts from the cached stage-1 snapshot at its default warm-up epoch (1 of
    # 10): a trial stopped at epoch 4 trained epochs 1..4 (4) of the 9 it would have trained
    selection = run_selection(_request(tmp_path, "dqn", "a", subspaces=2),
                              report=lambda e, v: e >= 4)
    assert (selection["epochs_trained"], selection["epochs_budget"]) == (4, 9)
    # the stage-1 encoder was trained above (for the warm start): a float run now loads it
    cached = run_selection(_request(tmp_path, "float", "b"))
    assert (cached["epochs_trained"], cached["epochs_budget"]) == (0, 0)
