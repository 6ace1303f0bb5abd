"""Inputs loaded once per study and per grid worker (qbench.run.reuse): the dataset and the
backbone's features are reused for the same inputs, rebuilt for others, and what the runs
compute from them is unchanged."""

from __future__ import annotations

import pytest

import qbench.run.pipeline as pipeline
import qbench.train.backbone as backbone_module
from qbench.data.dataset import DatasetPlugin
from qbench.run.pipeline import RunRequest, run_experiment, run_selection
from qbench.run.reuse import InputMemo, enable_process_memo, process_memo


def test_the_memo_builds_once_per_key_and_forgets_the_least_recent():
    memo, built = InputMemo(size=2), []

    def build(name):
        return lambda: built.append(name) or name.upper()

    assert memo.get(["a", {"x": 1}], build("a")) == ("A", False)
    assert memo.get(["a", {"x": 1}], build("a")) == ("A", True)
    assert memo.get(["b"], build("b")) == ("B", False)
    assert memo.get(["a", {"x": 1}], build("a"))[1]  # a is now the most recent
    assert memo.get(["c"], build("c")) == ("C", False)  # b goes
    assert memo.get(["b"], build("b")) == ("B", False)
    assert built == ["a", "b", "c", "b"] and memo.hits == 2


def test_a_process_has_no_memo_until_a_grid_worker_enables_one(monkeypatch):
    monkeypatch.setattr("qbench.run.reuse._PROCESS_MEMO", None)
    assert process_memo() is None
    memo = enable_process_memo()
    assert process_memo() is memo


@pytest.fixture
def counted(monkeypatch):
    """Counts of dataset loads and backbone contexts (feature loads) in this process."""
    counts = {"load": 0, "backbone": 0}
    real_load, real_backbone = DatasetPlugin.load_cached, backbone_module.backbone_context

    def load(self, root):
        counts["load"] += 1
        return real_load(self, root)

    def backbone(ctx, params):
        counts["backbone"] += 1
        return real_backbone(ctx, params)

    monkeypatch.setattr(DatasetPlugin, "load_cached", load)
    monkeypatch.setattr(backbone_module, "backbone_context", backbone)
    return counts


def _head(tmp_path, method="dqn", seed=0, **params) -> RunRequest:
    if method == "dqn":
        params = {"subspaces": 2, **params}
    return RunRequest(method=method, dataset="digits", bits=16, epochs=3, seed=seed,
                      device="cpu", out=tmp_path / "out", cache_dir=tmp_path / "cache",
                      regime="head", backbone={"epochs": 2}, method_params=params)


def test_trials_sharing_a_memo_load_the_dataset_and_features_once_with_the_same_values(
        tmp_path, counted):
    memo = InputMemo()
    first = run_selection(_head(tmp_path, lam=0.1), memo=memo)
    second = run_selection(_head(tmp_path, lam=1.0), memo=memo)
    assert counted == {"load": 1, "backbone": 1}
    other_seed = run_selection(_head(tmp_path, seed=1, lam=1.0), memo=memo)
    assert counted == {"load": 1, "backbone": 2}  # a seed's own backbone, the same data
    fresh = run_selection(_head(tmp_path, lam=1.0))  # no memo: loaded anew
    assert counted == {"load": 2, "backbone": 3}
    assert second["values"] == fresh["values"] and second["chosen_epoch"] == fresh[
        "chosen_epoch"]
    assert first["values"] != second["values"] and other_seed["values"] != second["values"]


def test_a_run_served_from_the_process_memo_records_a_reused_backbone(tmp_path, counted,
                                                                      monkeypatch):
    monkeypatch.setattr("qbench.run.reuse._PROCESS_MEMO", InputMemo())
    _, a = run_experiment(_head(tmp_path, method="float"))
    _, b = run_experiment(_head(tmp_path, method="sign"))
    assert counted == {"load": 1, "backbone": 1}
    assert "reused" not in a["backbone"] and b["backbone"]["reused"] is True
    assert b["backbone"]["cache"] == "hit" and b["backbone"]["key"] == a["backbone"]["key"]
    assert b["backbone"]["train_s"] == 0.0  # as a cache hit records it
    monkeypatch.setattr("qbench.run.reuse._PROCESS_MEMO", None)
    _, c = run_experiment(_head(tmp_path, method="sign"))
    assert counted == {"load": 2, "backbone": 2}
    assert c["metrics"]["map_all"] == b["metrics"]["map_all"]


def test_a_study_loads_its_inputs_once(tmp_path, counted):
    pytest.importorskip("optuna")
    from qbench.grid.tune import tune

    tune(_head(tmp_path), trials=3)
    assert counted == {"load": 1, "backbone": 1}


def test_the_memo_key_covers_what_the_inputs_depend_on(tmp_path, counted):
    memo = InputMemo()
    run_selection(_head(tmp_path), memo=memo)
    run_selection(RunRequest(**{**_head(tmp_path).__dict__, "split_seed": 1}), memo=memo)
    run_selection(RunRequest(**{**_head(tmp_path).__dict__, "backbone": {"epochs": 3}}),
                  memo=memo)
    run_selection(RunRequest(**{**_head(tmp_path).__dict__, "pool_size": 300}), memo=memo)
    assert counted == {"load": 1, "backbone": 3}  # the features do not depend on the pool
    assert pipeline.process_memo() is None  # nothing above enabled the process's memo


def test_the_dataset_key_holds_the_dataset_parameters(tmp_path, counted):
    memo = InputMemo()

    def synthetic(noise):
        return RunRequest(method="float", dataset="synthetic", bits=16, epochs=2,
                          device="cpu", out=tmp_path / "out", cache_dir=tmp_path / "cache",
                          dataset_params={"n_items": 900, "noise": noise})

    a = run_selection(synthetic(1.0), memo=memo)
    b = run_selection(synthetic(3.0), memo=memo)
    run_selection(synthetic(1.0), memo=memo)
    assert counted == {"load": 2, "backbone": 0} and a["values"] != b["values"]


def test_with_no_cache_nothing_is_kept_and_every_run_trains_its_backbone(tmp_path, counted,
                                                                        monkeypatch):
    monkeypatch.setattr("qbench.run.reuse._PROCESS_MEMO", InputMemo())
    uncached = {"use_cache": False, "cache_dir": None}
    _, a = run_experiment(RunRequest(**{**_head(tmp_path, method="float").__dict__,
                                        **uncached}))
    _, b = run_experiment(RunRequest(**{**_head(tmp_path, method="sign").__dict__,
                                        **uncached}))
    assert counted == {"load": 2, "backbone": 2}
    assert a["backbone"]["cache"] == b["backbone"]["cache"] == "off"
    assert "reused" not in b["backbone"] and b["backbone"]["train_s"] > 0
