"""The Ray backend against a real local Ray cluster (2 CPUs, started once for the module).

Without Ray installed, or where Ray cannot start, every test here is reported as skipped
with the reason.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ray = pytest.importorskip("ray", reason="Ray is not installed: pip install 'qbench[ray]'")
optuna = pytest.importorskip("optuna")

from qbench.core.errors import QbenchError  # noqa: E402
from qbench.grid import cluster as ray_cluster  # noqa: E402 -- only once Ray is there
from qbench.grid.backends import make_backend  # noqa: E402
from qbench.grid.cells import RunResources  # noqa: E402
from qbench.grid.runner import run_grid  # noqa: E402
from qbench.run.pipeline import run_experiment  # noqa: E402
from qbench.run.results import load_result  # noqa: E402

# the runners below run in Ray workers, which cannot import this test module by name
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


@pytest.fixture(scope="module")
def cluster():
    """A local Ray cluster with 2 CPUs for this module; skipped where Ray cannot start."""
    try:
        ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    except Exception as exc:  # noqa: BLE001 -- any failure to start means "cannot test here"
        pytest.skip(f"a local Ray cluster cannot start here: {type(exc).__name__}: {exc}")
    yield ray
    ray.shutdown()


def write_grid(tmp_path: Path, methods: list[str], bits: list[int], **block) -> Path:
    spec = {"methods": methods, "bits": bits, "seeds": [0],
            "datasets": {"digits": {"protocol": "standard", "epochs": 2, **block}}}
    path = tmp_path / "grid.json"
    path.write_text(json.dumps(spec))
    return path


def test_ray_grid_gives_the_local_results_trains_each_encoder_once_and_reruns_as_noop(
        cluster, tmp_path, monkeypatch):
    grid = write_grid(tmp_path, ["float", "two-stage-pq"], [12, 24])
    local = run_grid(grid, out=tmp_path / "local", device="cpu")
    on_ray = run_grid(grid, out=tmp_path / "ray", device="cpu", backend=make_backend("ray"))
    assert len(local.done) == len(on_ray.done) == 4 and not on_ray.failed, on_ray.describe()
    names = sorted(p.name for p in (tmp_path / "local").glob("*.json"))
    assert names == sorted(p.name for p in (tmp_path / "ray").glob("*.json"))
    for name in names:
        a, b = load_result(tmp_path / "local" / name), load_result(tmp_path / "ray" / name)
        for key in ("metrics", "selection", "params", "splits", "encoder_key", "method_info"):
            assert a[key] == b[key], (name, key)
    # the four runs share one stage-1 encoder: trained once, by its own task, before them
    assert len(list((tmp_path / "ray" / "cache" / "encoders").iterdir())) == 1
    assert {load_result(tmp_path / "ray" / n)["encoder_cache"] for n in names} == {"hit"}
    assert not list((tmp_path / "ray").glob("**/*.part"))

    connects = []
    import qbench.grid.backends.ray as ray_backend

    monkeypatch.setattr(ray_backend, "connect", lambda address: connects.append(address))
    again = run_grid(grid, out=tmp_path / "ray", device="cpu", backend=make_backend("ray"))
    assert len(again.skipped) == 4 and not again.done and connects == []


def crashing_or_failing_runner(req):
    """pq raises; float's first attempt kills its worker process (after noting its torch,
    OpenMP and BLAS threads); the retry runs normally."""
    if req.method == "pq":
        raise RuntimeError("quantizer exploded")
    marker = Path(req.out) / "killed-once"
    if not marker.exists():
        import torch
        from threadpoolctl import threadpool_info

        pools = max(p["num_threads"] for p in threadpool_info())
        marker.write_text(f"{torch.get_num_threads()} {os.environ['OMP_NUM_THREADS']} {pools}")
        os._exit(1)
    return run_experiment(req)


def test_a_killed_worker_is_retried_and_a_failing_run_is_isolated(cluster, tmp_path):
    grid = write_grid(tmp_path, ["float", "pq"], [12])
    out = tmp_path / "out"
    summary = run_grid(grid, out=out, device="cpu", backend=make_backend("ray"),
                       runner=crashing_or_failing_runner)
    assert summary.done == ["digits-standard-float-12b-seed0"], summary.describe()
    assert summary.failed == ["digits-standard-pq-12b-seed0"]
    assert (out / "killed-once").read_text() == "1 1 1"  # 1 CPU per run: 1 thread each
    load_result(out / "digits-standard-float-12b-seed0.json")
    record = json.loads((out / "failed" / "digits-standard-pq-12b-seed0.failed.json").read_text())
    assert record["error_type"] == "RuntimeError" and "quantizer exploded" in record["message"]
    assert sorted(p.name for p in out.glob("*.json")) == ["digits-standard-float-12b-seed0.json"]


@pytest.mark.parametrize("gpus, resources, message", [
    (0.5, {}, "the Ray cluster has no GPU"),
    (None, {"cpu": 64}, r"asks for 64 CPU and 0 GPU, more than any node .* \(the largest: 2 CPU"),
])
def test_resources_no_node_can_hold_are_refused_before_anything_runs(
        cluster, tmp_path, gpus, resources, message):
    grid = write_grid(tmp_path, ["pq"], [12], resources=resources)
    with pytest.raises(QbenchError, match=message):
        run_grid(grid, out=tmp_path / "out", backend=make_backend("ray"), gpus_per_run=gpus)
    assert not list((tmp_path / "out").glob("*.json"))


def test_a_folder_a_node_does_not_share_is_reported(cluster, tmp_path):
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "m").touch()
    problems = ray_cluster._probe_folders([("--out", str(tmp_path / "shared"), "m"),
                                           ("the cache", str(tmp_path / "elsewhere"), "m")])
    assert len(problems) == 1 and problems[0].startswith(
        f"the cache {tmp_path / 'elsewhere'} is not the driver's folder on node")
    ray_cluster.check_folders({"--out": tmp_path / "shared"})


def test_an_unreachable_address_is_a_one_line_error(tmp_path):
    grid = write_grid(tmp_path, ["pq"], [12])
    res = subprocess.run([sys.executable, "-m", "qbench.cli", "grid", str(grid), "--out",
                          str(tmp_path / "out"), "--backend", "ray", "--address", "127.0.0.1:1"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [
        "error: --address 127.0.0.1:1: no Ray cluster answers there (Connection refused); "
        "start one with `ray start --head` or check the host and port"]


def test_trials_run_in_parallel_tasks_and_only_the_driver_tells(cluster):
    asked, told = [], {}

    def ask():
        if len(asked) == 4:
            return None
        asked.append(len(asked))
        return asked[-1], {"x": asked[-1]}

    def evaluate(params):
        if params["x"] == 2:
            raise ValueError("x=2 diverged")
        return params["x"] ** 2

    def tell(token, value, error):
        told[token] = (value, None if error is None else str(error))

    ray_cluster.run_trials(ask, evaluate, tell, parallel=2,
                           resources=RunResources(cpu=1))
    assert told == {0: (0, None), 1: (1, None), 2: (None, "x=2 diverged"), 3: (9, None)}


def test_tune_on_ray_runs_trials_as_tasks_and_the_study_resumes(cluster, tmp_path):
    from qbench.grid.tune import tune
    from qbench.run.pipeline import RunRequest

    template = RunRequest(method="dqn", bits=12, epochs=3, out=tmp_path, device="cpu")
    path, record = tune(template, trials=3, backend="ray", parallel=2)
    assert record["trials"]["complete"] == 3 and 0 < record["best_value"] <= 1
    assert set(record["best_params"]) == {"lam", "refit_every"}
    study = optuna.load_study(study_name=record["study"], storage=record["storage"])
    assert overlapping(study.trials, study.trials, same=True)  # two trials in flight at once: tasks
    _, again = tune(template, trials=3, backend="ray", parallel=2)  # nothing missing
    assert again["trials"] == record["trials"] and again["best_value"] == record["best_value"]


def overlapping(trials_a, trials_b, *, same: bool = False) -> bool:
    """Whether some trial of ``trials_a`` ran on a worker while one of ``trials_b`` did
    (the run's own start and end, not its time queued; ``same``: the lists are one
    study's, a trial is not compared with itself)."""
    from qbench.grid.tune_ray import RUN_END, RUN_START

    def runs(trials):
        return [(t.number, t.user_attrs[RUN_START], t.user_attrs[RUN_END]) for t in trials
                if RUN_START in t.user_attrs]

    return any(a0 < b1 and b0 < a1 for na, a0, a1 in runs(trials_a)
               for nb, b0, b1 in runs(trials_b) if not (same and na == nb))


def run_tuned_grid(grid: Path, out: Path, methods: list[str], *, parallel: int):
    """Write a tiny tuned grid (12 bits, seeds 0 and 1, 3 trials on seed 1) to ``grid``
    and run it on Ray into ``out``; its summary."""
    grid.write_text(json.dumps({
        "methods": methods, "bits": [12], "seeds": [0, 1],
        "tune": {"trials": 3, "seed": 1, "parallel": parallel},
        "datasets": {"digits": {"protocol": "standard", "epochs": 2}}}))
    return run_grid(grid, out=out, device="cpu", backend=make_backend("ray"), progress=False)


def study_trials(out: Path, name: str) -> list:
    """The trials of study ``name`` in its default storage under ``out``."""
    return optuna.load_study(study_name=name,
                             storage=f"sqlite:///{out / 'tune' / name}.db").trials


def test_a_tuned_grid_on_ray_runs_studies_at_once_within_budget_and_reruns_as_noop(
        cluster, tmp_path, monkeypatch):
    grid, out = tmp_path / "grid.json", tmp_path / "ray"
    summary = run_tuned_grid(grid, out, ["dqn", "two-stage-pq", "pq"], parallel=1)
    assert sorted(summary.done) == [f"digits-standard-{m}-12b-seed0"
                                    for m in ("dqn", "pq", "two-stage-pq")], summary.describe()
    studies = {}
    for method in ("dqn", "two-stage-pq"):
        name = f"digits-standard-{method}-12b-seed1"
        studies[method] = trials = study_trials(out, name)
        # the budget exactly: 3 finished trials, none failed or left running
        assert len(trials) == 3 and all(t.state.is_finished() for t in trials)
        assert sum(t.state.name in ("COMPLETE", "PRUNED") for t in trials) == 3
        result = load_result(out / f"digits-standard-{method}-12b-seed0.json")
        assert result["tuning"]["study"] == name
        assert {k: result["params"][k] for k in result["tuning"]["best_params"]} == \
            result["tuning"]["best_params"]
    # trials of the two studies ran at the same time (each study: one trial in flight)
    assert overlapping(studies["dqn"], studies["two-stage-pq"])
    assert load_result(out / "digits-standard-pq-12b-seed0.json")["tuning"] is None

    # the same trial values on the local backend give the same results
    local = tmp_path / "local"
    shutil.copytree(out / "tune", local / "tune")
    here = run_grid(grid, out=local, device="cpu", progress=False)
    assert sorted(here.done) == sorted(summary.done)
    for name in summary.done:
        a, b = load_result(out / f"{name}.json"), load_result(local / f"{name}.json")
        for key in ("metrics", "selection", "params", "tuning", "encoder_key"):
            assert a[key] == b[key], (name, key)
        info_a, info_b = (dict(r["method_info"]) for r in (a, b))
        warm_a, warm_b = info_a.pop("warm_start", {}), info_b.pop("warm_start", {})
        assert info_a == info_b and warm_a.get("key") == warm_b.get("key"), name

    import qbench.grid.backends.ray as ray_backend
    import qbench.grid.cluster as cluster_module

    joins = []
    for module in (ray_backend, cluster_module):  # a finished grid joins no cluster
        monkeypatch.setattr(module, "connect", lambda address: joins.append(address))
    again = run_grid(grid, out=out, device="cpu", backend=make_backend("ray"), progress=False)
    assert sorted(again.skipped) == sorted(summary.done) and not again.done and joins == []
    for method in studies:
        assert len(study_trials(out, f"digits-standard-{method}-12b-seed1")) == 3


def test_a_stop_event_fails_the_trials_in_flight_and_starts_no_more(cluster):
    import threading
    import time

    stop, asked, told = threading.Event(), [], {}

    def ask():
        asked.append(len(asked))
        return asked[-1], {"sleep": 0 if asked[-1] == 0 else 60}

    def evaluate(params):
        time.sleep(params["sleep"])
        return params["sleep"]

    def tell(token, value, error):
        told[token] = (value, error)
        stop.set()  # the first trial to end stops the loop

    started = time.monotonic()
    ray_cluster.run_trials(ask, evaluate, tell, parallel=2, resources=RunResources(cpu=1),
                           stop=stop)
    assert time.monotonic() - started < 30  # the 60 s trial was cancelled, not awaited
    assert asked == [0, 1] and told[0] == (0, None)
    assert told[1][0] is None and isinstance(told[1][1], ray_cluster.Stopped)


def selection_dying_once(template, params):
    """A trial whose first attempt kills its Ray worker process; Ray's retry runs it."""
    marker = Path(template.out) / "trial-killed-once"
    if not marker.exists():
        marker.write_text(str(params))
        os._exit(1)
    from qbench.grid.trials import trial_request
    from qbench.run.pipeline import run_selection

    return run_selection(trial_request(template, params))


def test_a_trial_whose_worker_dies_is_retried_as_the_same_trial(cluster, tmp_path,
                                                                 monkeypatch):
    import qbench.grid.tune_ray as tune_ray

    monkeypatch.setattr(tune_ray, "remote_selection", selection_dying_once)
    out = tmp_path / "out"
    summary = run_tuned_grid(tmp_path / "grid.json", out, ["dqn"], parallel=2)
    assert summary.done == ["digits-standard-dqn-12b-seed0"], summary.describe()
    assert (out / "trial-killed-once").is_file()  # a worker did die
    name = "digits-standard-dqn-12b-seed1"
    trials = study_trials(out, name)
    assert len(trials) == 3 and all(t.state.name in ("COMPLETE", "PRUNED") for t in trials)


def crafted_curve(template, params):
    """A trial's selection record without training: the first five calls give a flat 0.5
    curve, later ones 0.1 then 0.9 (calls are counted in a file under ``--out``)."""
    counter = Path(template.out) / "calls"
    with counter.open("a") as f:
        f.write("x")
    n = len(counter.read_text())
    values = [0.5, 0.5] if n <= 5 else [0.1, 0.9]  # five flat trials, then one late bloomer
    return {"epochs": [0, 1], "values": values, "chosen_value": max(values)}


def test_ray_trials_are_pruned_at_the_first_epoch_the_pruner_says_as_locally(
        cluster, tmp_path, monkeypatch):
    """The median pruner stops the sixth trial at epoch 0 (0.1 < the median 0.5), as the
    local objective would, although its curve ends higher than every other."""
    import qbench.grid.tune_ray as tune_ray
    from qbench.grid.tune import tune
    from qbench.run.pipeline import RunRequest

    monkeypatch.setattr(tune_ray, "remote_selection", crafted_curve)
    template = RunRequest(method="dqn", bits=12, epochs=2, out=tmp_path, device="cpu")
    _, record = tune(template, trials=6, backend="ray", parallel=1, pruner="median")
    assert record["trials"]["complete"] == 5 and record["trials"]["pruned"] == 1
    assert record["best_value"] == 0.5
