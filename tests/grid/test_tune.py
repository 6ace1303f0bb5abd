"""qbench tune: budget and resume semantics, failures, identity, bad input, outputs.

A toy method with a declared space is registered for each test, and a fake objective
(a plain function of the sampled parameters) replaces the pipeline, so no model is trained.
"""

import json
import math
import sys
import time

import pytest
from click.testing import CliRunner

import qbench.grid.tune as tune_module
from qbench.cli import cli
from qbench.core.errors import QbenchError
from qbench.grid import storage as studies
from qbench.grid.tune import tune
from qbench.grid.tuned_params import load_tuned_params
from qbench.methods import Method
from qbench.registry import METHODS, Param, Space
from qbench.run.pipeline import RunRequest


class ToyTuned(Method):
    name = "toy-tuned"
    description = "toy method with a search space"
    params = (
        Param("lr", float, 1e-3, "stage-1 learning rate", minimum=1e-12,
              tune=Space(1e-4, 1e-2, log=True, shared=True)),
        Param("epochs", int, 0, "epochs", minimum=0),
        Param("lam", float, 0.3, "penalty weight", minimum=0.0, tune=Space(1e-3, 3.0, log=True)),
        Param("k", int, 1, "neighbours", minimum=1, tune=Space(1, 4)),
        Param("law", str, "spring", "force law", choices=("spring", "gravity"),
              tune=Space(choices=("spring", "gravity"))),
    )


class ToyOther(ToyTuned):
    name = "toy-other"


class ToyPlain(Method):
    name = "toy-plain"
    description = "toy method without a search space"
    params = (Param("x", int, 1, "x"),)


DRAW_PLOTS = tune_module.save_study_plots


@pytest.fixture(autouse=True)
def toys(monkeypatch):
    """Register the toy methods; skip the plots (a test that checks them draws them)."""
    METHODS.names()  # load the built-in plugins first
    for cls in (ToyTuned, ToyOther, ToyPlain):
        monkeypatch.setitem(METHODS._plugins, cls.name, cls)
    monkeypatch.setattr(tune_module, "save_study_plots", lambda *args: {})


def score(params: dict) -> float:
    """A smooth toy validation score, best at lam = 0.1, k = 2, gravity."""
    return (1.0 - (math.log10(params["lam"]) + 1.0) ** 2 / 10 - abs(params["k"] - 2) / 20
            + (0.05 if params["law"] == "gravity" else 0.0))


class Counting:
    """A fake objective that counts its calls; ``fail`` maps a call index to a failure."""

    def __init__(self, fail=None):
        self.calls = []
        self.fail = fail or {}

    def __call__(self, params, report):
        self.calls.append(params)
        what = self.fail.get(len(self.calls) - 1)
        if what == "nan":
            return float("nan")
        if isinstance(what, BaseException):
            raise what
        return score(params)


def template(tmp_path, **kw):
    base = {"method": "toy-tuned", "dataset": "digits", "bits": 32, "seed": 0, "device": "cpu",
            "out": tmp_path}
    return RunRequest(**{**base, **kw})


def test_tune_writes_the_summary_with_best_params_counts_space_and_compute(tmp_path,
                                                                          monkeypatch):
    monkeypatch.setattr(tune_module, "save_study_plots", DRAW_PLOTS)
    path, record = tune(template(tmp_path), trials=6, objective=Counting())
    assert path == tmp_path / "tune" / "digits-standard-toy-tuned-32b-seed0.json"
    on_disk = json.loads(path.read_text())
    assert on_disk["best_params"] == record["best_params"]
    assert set(on_disk["best_params"]) == {"lam", "k", "law"}
    assert on_disk["best_value"] == pytest.approx(score(on_disk["best_params"]))
    assert on_disk["trials"] == {"complete": 6, "pruned": 0, "failed": 0, "over_budget": 0}
    assert on_disk["space"]["lam"] == {"low": 1e-3, "high": 3.0, "log": True, "shared": False}
    assert on_disk["space"]["law"]["choices"] == ["spring", "gravity"]
    assert "lr" not in on_disk["space"]  # a shared stage-1 knob is not the method's own
    assert on_disk["sampler"] == {"name": "TPESampler", "seed": 0, "n_startup_trials": 10,
                                  "constant_liar": True, "multivariate": True}
    assert on_disk["pruner"] == {"name": "none"}
    assert on_disk["compute"]["device"] == "cpu" and on_disk["compute"]["trial_wall_s"] >= 0
    assert on_disk["qbench_version"] and on_disk["method"] == "toy-tuned"
    assert any("random" in note for note in on_disk["notes"])  # fewer than 10 trials
    assert (tmp_path / "tune" / "digits-standard-toy-tuned-32b-seed0-history.png").stat().st_size
    assert on_disk["plots"]["importance"].endswith("-importance.png")
    assert not list((tmp_path / "tune").glob("*.part"))


def test_rerunning_with_the_same_trials_adds_nothing_and_a_larger_count_adds_the_difference(
        tmp_path):
    objective = Counting()
    tune(template(tmp_path), trials=3, objective=objective)
    tune(template(tmp_path), trials=3, objective=objective)
    assert len(objective.calls) == 3
    _, record = tune(template(tmp_path), trials=5, objective=objective)
    assert len(objective.calls) == 5
    assert record["trials"]["complete"] == 5


def test_an_interrupted_study_resumes_with_only_the_missing_trials(tmp_path):
    interrupted = Counting(fail={2: KeyboardInterrupt()})
    with pytest.raises(KeyboardInterrupt):
        tune(template(tmp_path), trials=5, objective=interrupted)
    assert not (tmp_path / "tune" / "digits-standard-toy-tuned-32b-seed0.json").exists()
    resumed = Counting()
    _, record = tune(template(tmp_path), trials=5, objective=resumed)
    assert len(resumed.calls) == 3
    assert record["trials"] == {"complete": 5, "pruned": 0, "failed": 1, "over_budget": 0}


def test_failing_and_nan_trials_are_recorded_and_the_study_goes_on(tmp_path):
    objective = Counting(fail={0: ValueError("codebook diverged"), 2: "nan"})
    _, record = tune(template(tmp_path), trials=4, objective=objective)
    assert len(objective.calls) == 4
    assert record["trials"] == {"complete": 2, "pruned": 0, "failed": 2, "over_budget": 0}
    reasons = {f["trial"]: f["reason"] for f in record["failures"]}
    assert reasons == {0: "ValueError: codebook diverged", 2: "objective returned nan"}
    assert any("rerun" in note for note in record["notes"])
    _, record = tune(template(tmp_path), trials=4, objective=Counting())
    assert record["trials"]["complete"] == 4  # a rerun replaces the failed trials


def test_a_study_where_every_trial_failed_is_an_error_without_a_summary(tmp_path):
    with pytest.raises(QbenchError, match="no trial .* completed .*last: RuntimeError: boom"):
        tune(template(tmp_path), trials=2,
             objective=Counting(fail={0: RuntimeError("boom"), 1: RuntimeError("boom")}))
    assert not list((tmp_path / "tune").glob("*.json"))


@pytest.mark.parametrize("other, field", [({"method": "toy-other"}, "method"),
                                          ({"bits": 16}, "bits"),
                                          ({"dataset": "synthetic"}, "dataset"),
                                          ({"method_params": {"lam": "0.1"}}, "fixed")])
def test_a_study_created_for_something_else_is_refused(tmp_path, other, field):
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    tune(template(tmp_path), trials=2, storage=storage, study_name="s", objective=Counting())
    objective = Counting()
    with pytest.raises(QbenchError, match=f"study 's' in .* was created for {field} "):
        tune(template(tmp_path, **other), trials=3, storage=storage, study_name="s",
             objective=objective)
    assert objective.calls == []


@pytest.mark.parametrize("storage, message", [
    ("not a url", "is not a database URL; expected e.g. sqlite:///"),
    ("nosuchdb://host/db", "cannot be opened: NoSuchModuleError"),
])
def test_a_malformed_storage_url_is_a_one_line_error_leaving_no_study(tmp_path, storage,
                                                                      message):
    with pytest.raises(QbenchError, match=message) as info:
        tune(template(tmp_path), trials=2, storage=storage, objective=Counting())
    assert "\n" not in str(info.value)
    assert not (tmp_path / "tune").exists()


def test_the_storage_password_is_never_written(tmp_path):
    with pytest.raises(QbenchError) as info:
        tune(template(tmp_path), trials=1, storage="nosuchdb://user:secret@host/db",
             objective=Counting())
    assert "secret" not in str(info.value)


@pytest.mark.parametrize("kw, message", [
    ({"trials": 0}, "--trials must be a positive integer, got 0"),
    ({"trials": 2, "timeout": 0}, "--timeout must be a positive number"),
    ({"trials": 2, "pruner": "hyperband"}, "unknown pruner 'hyperband'; allowed: median, none"),
    ({"trials": 2, "study_name": "../x"}, "--study '../x' is not a valid name"),
])
def test_bad_tuning_options_leave_no_study(tmp_path, kw, message):
    with pytest.raises(QbenchError, match=message):
        tune(template(tmp_path), objective=Counting(), **kw)
    assert not (tmp_path / "tune").exists()


def test_an_unknown_fixed_parameter_names_the_allowed_ones(tmp_path):
    with pytest.raises(QbenchError, match="unknown parameter 'lamda' for method toy-tuned; "
                                          "allowed: epochs, k, lam, law, lr"):
        tune(template(tmp_path, method_params={"lamda": "1"}), trials=2, objective=Counting())
    assert not (tmp_path / "tune").exists()


def test_fixed_parameters_leave_the_space_and_reach_the_summary(tmp_path):
    objective = Counting()
    _, record = tune(template(tmp_path, method_params={"law": "gravity", "k": "2"}, epochs=3),
                     trials=2, objective=lambda p, r: objective({**p, "law": "gravity",
                                                                 "k": 2}, r))
    assert set(record["space"]) == {"lam"}
    assert record["fixed"] == {"law": "gravity", "k": 2, "epochs": 3}


def test_a_repeated_point_of_a_discrete_space_is_not_run_again(tmp_path):
    calls = []

    def objective(params, report):
        calls.append(params["law"])
        report(0, 0.5)
        return 0.9 if params["law"] == "gravity" else 0.4

    lines = []
    _, record = tune(template(tmp_path, method_params={"lam": "0.1", "k": "2"}), trials=6,
                     objective=objective, echo=lines.append)
    assert record["trials"]["complete"] == 6
    assert len(calls) == len(set(calls)) <= 2  # each choice ran once
    assert sum("not rerun" in line for line in lines) == 6 - len(calls)
    assert record["best_value"] == (0.9 if "gravity" in calls else 0.4)


def test_repeated_points_are_not_run_again_on_the_ask_and_tell_path(tmp_path, monkeypatch):
    """The Ray path (ask, run as a task, tell), with an in-process stand-in for Ray."""
    import qbench.grid.cluster
    import qbench.run.pipeline

    evaluated = []

    def fake_run_selection(req, report=None, memo=None):
        law = req.method_params["law"]
        evaluated.append(law)
        return {"epochs": [1], "values": [0.5], "chosen_epoch": 1,
                "chosen_value": 0.9 if law == "gravity" else 0.4}

    def run_trials(ask, evaluate, tell, **_):
        while (asked := ask()) is not None:
            token, params = asked
            tell(token, evaluate(params), None)

    monkeypatch.setattr(qbench.run.pipeline, "run_selection", fake_run_selection, raising=False)
    monkeypatch.setattr(qbench.grid.cluster, "run_trials", run_trials)
    lines = []
    _, record = tune(template(tmp_path, method_params={"lam": "0.1", "k": "2"}), trials=6,
                     backend="ray", echo=lines.append)
    assert record["trials"] == {"complete": 6, "pruned": 0, "failed": 0, "over_budget": 0}
    assert len(evaluated) == len(set(evaluated)) <= 2
    assert sum("not rerun" in line for line in lines) == 6 - len(evaluated)


def test_a_repeated_point_is_pruned_when_a_rerun_would_have_been(tmp_path):
    def objective(params, report):
        value = 0.9 if params["law"] == "gravity" else 0.1
        for epoch in range(3):
            if report(epoch, value):
                break
        return value

    _, record = tune(template(tmp_path, method_params={"lam": "0.1", "k": "2"}), trials=12,
                     pruner="median", objective=objective)
    # the poor choice is pruned from the curve once the pruner has its 5 startup trials,
    # whether the trial ran or repeated an earlier one
    assert record["trials"]["pruned"] > 0 and record["trials"]["failed"] == 0
    assert record["trials"]["complete"] + record["trials"]["pruned"] == 12


def test_a_method_without_a_space_is_refused_naming_those_with_one(tmp_path):
    with pytest.raises(QbenchError, match="method toy-plain has no own search space; methods "
                                          "with one: .*toy-tuned"):
        tune(template(tmp_path, method="toy-plain"), trials=2, objective=Counting())


def test_the_shared_study_tunes_only_the_stage1_knobs_without_a_bit_length(tmp_path):
    seen = []
    path, record = tune(template(tmp_path), trials=2, shared=True,
                        objective=lambda p, r: seen.append(p) or -abs(math.log10(p["lr"]) + 3))
    assert all(set(p) == {"lr"} for p in seen)
    assert record["scope"] == "shared" and record["bits"] is None
    assert path.name == "digits-standard-toy-tuned-stage1-seed0.json"
    params, tuning = load_tuned_params(path, "toy-other", "digits", 16)
    assert set(params) == {"lr"} and tuning["study"] == record["study"]


def test_the_seeded_sampler_suggests_the_same_parameters_twice(tmp_path):
    runs = []
    for folder, seed in (("a", 0), ("b", 0), ("c", 1)):
        objective = Counting()
        tune(template(tmp_path / folder, seed=seed), trials=11, objective=objective)
        runs.append(objective.calls)
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]


def _study_with_a_killed_trial(tmp_path, monkeypatch, trials: int, distributions: dict):
    """(storage, study, killed trial): a study tuned to ``trials`` trials, then a trial that
    started (one heartbeat) and died, its heartbeat stale by now (1 s heartbeat and grace)."""
    import optuna

    monkeypatch.setattr(studies, "HEARTBEAT_S", 1)
    monkeypatch.setattr(studies, "GRACE_S", 1)
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    tune(template(tmp_path), trials=trials, storage=storage, study_name="s",
         objective=Counting())
    rdb = studies.open_storage(storage)
    study = optuna.load_study(study_name="s", storage=rdb)
    with pytest.warns(UserWarning, match="Heartbeat"):  # a worker outside Study.optimize
        killed = study.ask(distributions)
    rdb.record_heartbeat(killed._trial_id)  # the worker started, then died
    time.sleep(2.05)  # SQLite's clock has a resolution of one second
    return storage, study, killed


def test_a_killed_trial_is_failed_after_its_heartbeat_stops_and_retried(tmp_path, monkeypatch):
    import optuna

    storage, _, killed = _study_with_a_killed_trial(tmp_path, monkeypatch, 1, {
        "lam": optuna.distributions.FloatDistribution(1e-3, 3.0, log=True),
        "k": optuna.distributions.IntDistribution(1, 4),
        "law": optuna.distributions.CategoricalDistribution(["spring", "gravity"])})
    objective = Counting()
    _, record = tune(template(tmp_path), trials=2, storage=storage, study_name="s",
                     objective=objective)
    assert objective.calls == [killed.params]
    assert record["trials"] == {"complete": 2, "pruned": 0, "failed": 1, "over_budget": 0}


def test_the_median_pruner_prunes_trials_below_the_median_curve_and_is_recorded(tmp_path):
    def objective(params, report):
        value = score(params)
        for epoch in range(5):
            if report(epoch, value * (epoch + 1) / 5):
                break
        return value

    _, record = tune(template(tmp_path), trials=12, pruner="median", objective=objective)
    assert record["pruner"]["name"] == "MedianPruner"
    assert record["trials"]["pruned"] > 0
    assert record["trials"]["complete"] + record["trials"]["pruned"] == 12


def test_a_missing_optuna_is_a_one_line_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "optuna", None)
    with pytest.raises(QbenchError, match=r"qbench tune needs optuna; install it: pip install"):
        tune(template(tmp_path), trials=2, objective=Counting())


def tuned_file(tmp_path):
    path, record = tune(template(tmp_path, method_params={"k": "3"}), trials=2,
                        objective=lambda params, report: score({**params, "k": 3}))
    return path, record


def test_params_from_gives_the_fixed_and_best_parameters_and_the_tuning_record(tmp_path):
    path, record = tuned_file(tmp_path)
    params, tuning = load_tuned_params(path, "toy-tuned", "digits", 32)
    assert params == {"k": 3, **record["best_params"]}
    assert tuning == {"trials": 2, "best_value": record["best_value"], "study": record["study"],
                      "best_params": record["best_params"]}


@pytest.mark.parametrize("args, message", [
    (("toy-other", "digits", 32), "was tuned for method 'toy-tuned', not 'toy-other'"),
    (("toy-tuned", "digits", 16), "was tuned for bits 32, not 16"),
    (("toy-tuned", "synthetic", 32), "was tuned for dataset 'digits', not 'synthetic'"),
])
def test_params_from_another_method_dataset_or_bit_length_is_refused(tmp_path, args, message):
    path, _ = tuned_file(tmp_path)
    with pytest.raises(QbenchError, match=message):
        load_tuned_params(path, *args)


@pytest.mark.parametrize("edit, message", [
    ({"lamda": 0.1}, "unknown parameter 'lamda' for method toy-tuned; allowed: epochs, k, lam"),
    ({"lam": -1.0}, "parameter lam of method toy-tuned: -1.0 is below the minimum 0.0"),
    ({"law": "magnet"}, "'magnet' is not allowed; allowed: spring, gravity"),
])
def test_params_from_with_an_unknown_or_out_of_range_value_is_refused(tmp_path, edit, message):
    path, _ = tuned_file(tmp_path)
    record = json.loads(path.read_text())
    record["best_params"].update(edit)
    path.write_text(json.dumps(record))
    with pytest.raises(QbenchError, match=message):
        load_tuned_params(path, "toy-tuned", "digits", 32)


@pytest.mark.parametrize("content, message", [(None, "no such file"),
                                              ("{oops", "not valid JSON"),
                                              ('{"kind": "run"}', "not a qbench tune summary")])
def test_params_from_a_file_that_is_not_a_summary_is_refused(tmp_path, content, message):
    path = tmp_path / "tuned.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(QbenchError, match=message):
        load_tuned_params(path, "toy-tuned", "digits", 32)


def test_the_pipeline_objective_scores_the_selection_and_reports_its_curve(tmp_path,
                                                                            monkeypatch):
    import qbench.run.pipeline

    requests = []

    def fake_run_selection(req, report=None, memo=None):
        requests.append(req)
        return {"epochs": [4, 9], "values": [0.5, 0.6], "chosen_epoch": 9,
                "chosen_value": 0.6 + req.method_params["lam"] / 100}

    monkeypatch.setattr(qbench.run.pipeline, "run_selection", fake_run_selection, raising=False)
    reported = []
    objective = tune_module.pipeline_objective(template(tmp_path, method_params={"k": "2"}))
    value = objective({"lam": 1.0}, lambda e, v: reported.append((e, v)) or False)["value"]
    assert value == pytest.approx(0.61)
    assert reported == [(4, 0.5), (9, 0.6)]
    assert requests[0].method_params == {"k": "2", "lam": 1.0}
    assert requests[0].progress is False


def test_the_tune_command_prints_trials_and_the_best_parameters(tmp_path, monkeypatch):
    import qbench.run.pipeline

    monkeypatch.setattr(qbench.run.pipeline, "run_selection", lambda req, report=None, memo=None: {
        "epochs": [0], "values": [0.5], "chosen_value": score(req.method_params)},
        raising=False)
    result = CliRunner().invoke(cli, ["tune", "--method", "toy-tuned", "--trials", "2",
                                      "--device", "cpu", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "trial 1 (2/2 finished" in result.output
    assert "digits-standard-toy-tuned-32b-seed0: best " in result.output
    assert "note: all 2 finished trials were random" in result.output


@pytest.mark.parametrize("args, message", [
    (["--trials", "0"], "error: --trials must be a positive integer, got 0\n"),
    (["--trials", "2", "--storage", "nonsense"], "error: --storage 'nonsense' is not a "),
    (["--trials", "2", "-p", "nope=1"], "error: unknown parameter 'nope' for method toy-tuned"),
])
def test_the_tune_command_turns_bad_input_into_one_line_and_exit_2(tmp_path, args, message):
    result = CliRunner().invoke(cli, ["tune", "--method", "toy-tuned", "--device", "cpu",
                                      "--out", str(tmp_path), *args])
    assert result.exit_code == 2
    assert result.output.startswith(message) and result.output.count("\n") == 1
    assert not (tmp_path / "tune").exists()


def test_list_params_shows_the_search_spaces():
    result = CliRunner().invoke(cli, ["list", "--params"])
    assert result.exit_code == 0
    assert "lam=0.3 (float): penalty weight [tune: log 0.001..3]" in result.output
    assert "law='spring' (str): force law [tune: {spring, gravity}]" in result.output
    assert "[tune: log 0.0001..0.01 (shared stage-1 knob)]" in result.output


def test_the_tune_command_fixes_the_knobs_of_a_params_from_file(tmp_path, monkeypatch):
    import qbench.run.pipeline

    shared, record = tune(template(tmp_path), trials=1, shared=True,
                          objective=lambda params, report: 0.5)
    seen = []
    monkeypatch.setattr(qbench.run.pipeline, "run_selection",
                        lambda req, report=None, memo=None: seen.append(req) or {
                            "epochs": [0], "values": [0.5],
                            "chosen_value": score(req.method_params)},
                        raising=False)
    result = CliRunner().invoke(cli, ["tune", "--method", "toy-tuned", "--trials", "1",
                                      "--device", "cpu", "--out", str(tmp_path), "--quiet",
                                      "--params-from", str(shared)])
    assert result.exit_code == 0, result.output
    assert seen[0].method_params["lr"] == record["best_params"]["lr"]
    summary = json.loads((tmp_path / "tune" / "digits-standard-toy-tuned-32b-seed0.json")
                         .read_text())
    assert summary["fixed"] == {"lr": record["best_params"]["lr"]}


@pytest.mark.parametrize("key, value, message", [
    ("trials", [3], "'trials' is a list; allowed: a dict"),
    ("best_params", "lr=1", "'best_params' is a str; allowed: a dict"),
    ("trials", {"complete": "3"}, "'trials' counts must be integers >= 0"),
])
def test_a_summary_with_fields_of_the_wrong_type_is_a_one_line_error(tmp_path, key, value,
                                                                     message):
    path, _ = tuned_file(tmp_path)
    record = json.loads(path.read_text())
    record[key] = value
    path.write_text(json.dumps(record))
    with pytest.raises(QbenchError, match=message):
        load_tuned_params(path, "toy-tuned", "digits", 32)


def test_a_deeply_nested_file_is_a_one_line_error(tmp_path):
    path = tmp_path / "deep.json"
    path.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(QbenchError, match="nested too deeply"):
        load_tuned_params(path, "toy-tuned", "digits", 32)


def test_a_killed_trial_is_failed_on_start_even_when_no_trial_remains(tmp_path, monkeypatch):
    import optuna

    storage, study, _ = _study_with_a_killed_trial(tmp_path, monkeypatch, 2, {
        "lam": optuna.distributions.FloatDistribution(1e-3, 3.0, log=True)})
    objective = Counting()
    _, record = tune(template(tmp_path), trials=2, storage=storage, study_name="s",
                     objective=objective)
    assert objective.calls == []  # the budget was already reached
    states = [t.state for t in study.get_trials(deepcopy=False)]
    assert optuna.trial.TrialState.RUNNING not in states
    assert record["trials"] == {"complete": 2, "pruned": 0, "failed": 1, "over_budget": 0}
    own = sum(t.user_attrs["wall_s"] for t in study.get_trials(deepcopy=False)
              if "wall_s" in t.user_attrs)
    assert record["compute"]["trial_wall_s"] == pytest.approx(own)  # no downtime counted


def test_a_trial_killed_before_its_first_heartbeat_is_failed_once_old_and_retried(
        tmp_path, monkeypatch):
    """A worker killed between creating its trial and its first heartbeat leaves a RUNNING
    trial with no heartbeat: the next start fails it once it is older than the grace
    period, retries its parameters and keeps the budget exact; a younger one is left be."""
    import optuna

    monkeypatch.setattr(studies, "GRACE_S", 1)
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    tune(template(tmp_path), trials=1, storage=storage, study_name="s", objective=Counting())
    study = optuna.load_study(study_name="s", storage=studies.open_storage(storage))
    with pytest.warns(UserWarning, match="Heartbeat"):
        orphan = study.ask({"lam": optuna.distributions.FloatDistribution(1e-3, 3.0, log=True),
                            "k": optuna.distributions.IntDistribution(1, 4),
                            "law": optuna.distributions.CategoricalDistribution(
                                ["spring", "gravity"])})
    assert studies.fail_killed_trials(study) == []  # too young: maybe a live worker
    time.sleep(1.2)
    objective = Counting()
    _, record = tune(template(tmp_path), trials=2, storage=storage, study_name="s",
                     objective=objective)
    assert objective.calls == [orphan.params]  # retried with its parameters
    assert record["trials"] == {"complete": 2, "pruned": 0, "failed": 1, "over_budget": 0}
    assert record["failures"] == [{"trial": orphan.number,
                                   "reason": "killed before its first heartbeat"}]
    assert record["compute"]["trial_wall_s"] < 1.0  # its downtime is no compute


def _tune_worker(tmp_path, storage, trials, log):
    """One of two concurrent tune processes of one study (module level: it forks)."""
    def slow(params, report):
        with open(log, "a") as fh:
            fh.write(f"{params['lam']}\n")
        time.sleep(0.4)
        return score(params)

    tune(template(tmp_path), trials=trials, storage=storage, study_name="s", objective=slow)


def test_two_concurrent_tune_processes_never_exceed_the_budget(tmp_path):
    import multiprocessing

    import optuna

    storage = f"sqlite:///{tmp_path / 'study.db'}"
    log = tmp_path / "calls.txt"
    tune(template(tmp_path), trials=1, storage=storage, study_name="s", objective=Counting())
    ctx = multiprocessing.get_context("fork")
    workers = [ctx.Process(target=_tune_worker, args=(tmp_path, storage, 7, log))
               for _ in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(120)
        assert w.exitcode == 0
    study = optuna.load_study(study_name="s", storage=storage)
    states = [t.state for t in study.get_trials()]
    finished = sum(s in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
                   for s in states)
    assert finished == 7  # exactly the budget, whichever worker ran which trial
    assert len(log.read_text().split()) == 6  # and only the missing trials ran
    over = [t for t in study.get_trials() if studies.OVER_BUDGET in t.user_attrs]
    assert all(t.state == optuna.trial.TrialState.FAIL for t in over)
    _, record = tune(template(tmp_path), trials=7, storage=storage, study_name="s",
                     objective=Counting())
    assert record["trials"]["complete"] == 7 and record["trials"]["failed"] == 0
    assert record["trials"]["over_budget"] == len(over)
