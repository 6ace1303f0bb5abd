"""qbench grid: expansion, skipping finished runs, failure records, resuming, parallel jobs."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from qbench.core.errors import QbenchError
from qbench.core.provenance import code_version
from qbench.data.protocols import materialise
from qbench.grid import runner as grid_module
from qbench.grid.backends import make_backend
from qbench.grid.gridfile import expand_grid, load_grid
from qbench.grid.runner import run_grid
from qbench.run.pipeline import prepare
from qbench.run.results import load_result, write_json_atomic
from tests.report.test_compare import make_result

CALLS: list[tuple[str, int, int]] = []


def fake_run(req):
    """Stands in for run_experiment: writes a valid, current result for the request (resolved
    parameters, split checksum, code version as the pipeline records them), counts calls."""
    CALLS.append((req.output_file.name, req.bits, req.seed))
    prep = prepare(req)
    result = make_result(req.method, req.bits, req.seed, dataset=req.dataset,
                         protocol=req.protocol, params=dict(prep.method.params))
    dataset = prep.dataset_plugin.load()
    splits = materialise(dataset, prep.protocol_spec, req.split_seed, Path(req.out) / "splits")
    result["dataset_checksum"] = dataset.checksum
    result.update(split_seed=req.split_seed, code_version=code_version(), tuning=req.tuning,
                  selection=({"rule": req.select, "pool_size": req.pool_size}
                             if prep.method.selects else None),
                  run_identity=prep.choices.identity)
    result["splits"] = {**result.get("splits", {}), "checksum": splits.checksum}
    with open(Path(req.out) / "calls.log", "a") as log:
        log.write(f"{os.getpid()} {req.output_file.name}\n")
    return write_json_atomic(req.output_file, result), result


def write_grid(tmp_path: Path, **changes) -> Path:
    spec = {"methods": ["float", "pq", "dqn-ip"], "bits": [12, 24], "seeds": [0, 1],
            "variants": {"dqn-ip": {"method": "dqn", "params": {"loss": "ip"}}},
            "datasets": {"digits": {"protocol": "standard", "epochs": 3}}}
    spec.update(changes)
    path = tmp_path / "grid.json"
    path.write_text(json.dumps(spec))
    return path


@pytest.fixture(autouse=True)
def _reset_calls():
    CALLS.clear()


def test_default_grid_file_expands_to_every_method_bits_and_seed():
    path = Path(__file__).resolve().parents[2] / "grids" / "default.json"
    grid = load_grid(path)
    cells = expand_grid(grid, "digits", source=str(path))
    assert len(cells) == 13 * 4 * 5
    assert {c.split_seed for c in cells} == {0} and {c.select for c in cells} == {'best'}
    names = {c.name for c in cells}
    assert {"float", "two-stage-opq", "householder", "dqn-ip"} <= names
    ip = next(c for c in cells if c.name == "dqn-ip")
    assert ip.method == "dqn" and ip.params == {"loss": "ip"}
    assert ip.filename == "digits-standard-dqn-ip-12b-seed0.json"
    cifar = expand_grid(grid, "cifar10", source=str(path))
    assert next(c for c in cifar if c.name == "dqn").params == {"encoder": "cnn"}
    assert next(c for c in cifar if c.name == "pq").params == {}  # pq declares no encoder
    assert {c.epochs for c in cifar} == {60}


def test_runs_every_cell_then_skips_finished_runs(tmp_path):
    grid, out = write_grid(tmp_path), tmp_path / "out"
    first = run_grid(grid, out=out, runner=fake_run)
    assert len(first.done) == 12 and not first.skipped and not first.failed
    assert len(CALLS) == 12
    result = load_result(out / "digits-standard-dqn-ip-24b-seed1.json")
    assert result["method"] == "dqn"
    assert (result["params"]["loss"], result["params"]["epochs"]) == ("ip", 3)
    CALLS.clear()
    second = run_grid(grid, out=out, runner=fake_run)
    assert CALLS == [] and len(second.skipped) == 12 and not second.done
    assert "all 12 runs are already finished" in second.describe()
    third = run_grid(grid, out=out, runner=fake_run, seeds=[1, 2])
    assert len(CALLS) == 6 and {c[2] for c in CALLS} == {2}
    assert len(third.skipped) == 6 and len(third.done) == 6


def test_corrupt_files_are_rerun_and_other_choices_are_never_written_over(tmp_path):
    grid, out = write_grid(tmp_path), tmp_path / "out"
    run_grid(grid, out=out, runner=fake_run)
    (out / "digits-standard-pq-12b-seed0.json").write_text("{truncated")
    CALLS.clear()
    run_grid(grid, out=out, runner=fake_run)
    assert [c[0] for c in CALLS] == ["digits-standard-pq-12b-seed0.json"]
    CALLS.clear()
    # the same grid with other epochs is another run: its cells clash, nothing runs, the
    # results stay; pq declares no epochs, so its cells are the same run and done
    before = {p.name: p.read_bytes() for p in out.glob("*.json")}
    changed = write_grid(tmp_path, datasets={"digits": {"epochs": 5}})
    assert "8 clash (not run" in run_grid(changed, out=out, dry_run=True)
    summary = run_grid(changed, out=out, runner=fake_run)
    assert not CALLS and summary.clashes == 8 and len(summary.failed) == 8
    assert len(summary.skipped) == 4 and "use another --out" in summary.describe()
    assert {p.name: p.read_bytes() for p in out.glob("*.json")} == before
    record = json.loads(next((out / "failed").glob("*float-12b-seed0*")).read_text())
    assert "params.epochs: 3 there, 5 here" in record["message"]


def failing_run(req):
    if req.method == "pq" and req.bits == 24:
        raise QbenchError("subspaces=5 does not fit 24 bits")
    if req.method == "float" and req.seed == 1 and req.bits == 12:
        raise RuntimeError("CUDA out of memory")
    return fake_run(req)


def test_failures_are_recorded_and_the_grid_goes_on(tmp_path):
    grid, out = write_grid(tmp_path), tmp_path / "out"
    summary = run_grid(grid, out=out, runner=failing_run)
    assert sorted(summary.failed) == ["digits-standard-float-12b-seed1",
                                      "digits-standard-pq-24b-seed0",
                                      "digits-standard-pq-24b-seed1"]
    assert len(summary.done) == 9
    record = json.loads((out / "failed" / "digits-standard-pq-24b-seed0.failed.json").read_text())
    assert record["error_type"] == "QbenchError"
    assert record["message"] == "subspaces=5 does not fit 24 bits"
    assert "Traceback" in record["traceback"] and "failing_run" in record["traceback"]
    assert record["cell"]["method"] == "pq" and record["cell"]["bits"] == 24
    assert "resolved" not in record["cell"]  # the cell as the grid gives it
    oom = json.loads((out / "failed" / "digits-standard-float-12b-seed1.failed.json").read_text())
    assert oom["error_type"] == "RuntimeError"
    assert not (out / "digits-standard-pq-24b-seed0.json").exists()
    text = summary.describe()
    assert "12 runs" in text and "9 done" in text and "3 failed" in text
    assert str(out / "failed") in text

    CALLS.clear()
    retry = run_grid(grid, out=out, runner=fake_run)
    assert sorted(c[0] for c in CALLS) == ["digits-standard-float-12b-seed1.json",
                                           "digits-standard-pq-24b-seed0.json",
                                           "digits-standard-pq-24b-seed1.json"]
    assert len(retry.skipped) == 9 and not retry.failed
    assert list((out / "failed").iterdir()) == []


def interrupted_run(req):
    if len(CALLS) == 2:
        CALLS.append(("interrupt", req.bits, req.seed))
        raise KeyboardInterrupt
    return fake_run(req)


def test_interrupted_grid_resumes_without_redoing_or_losing_finished_runs(tmp_path):
    grid, out = write_grid(tmp_path), tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        run_grid(grid, out=out, runner=interrupted_run)
    finished = sorted(p.name for p in out.glob("*.json"))
    assert finished == ["digits-standard-float-12b-seed0.json",
                        "digits-standard-float-24b-seed0.json"]
    assert not (out / "failed").exists()  # an interruption is not a failure
    before = {name: (out / name).read_bytes() for name in finished}
    CALLS.clear()
    summary = run_grid(grid, out=out, runner=fake_run)
    assert len(CALLS) == 10 and not {c[0] for c in CALLS} & set(finished)
    assert sorted(summary.skipped) == [n.removesuffix(".json") for n in finished]
    assert all((out / n).read_bytes() == data for n, data in before.items())
    assert len(list(out.glob("*.json"))) == 12


def test_parallel_jobs_run_each_cell_once_in_worker_processes(tmp_path):
    grid, out = write_grid(tmp_path), tmp_path / "out"
    summary = run_grid(grid, out=out, runner=failing_run, backend=make_backend("local", jobs=2))
    assert len(summary.done) == 9 and len(summary.failed) == 3
    log = (out / "calls.log").read_text().split("\n")
    pids = {line.split()[0] for line in log if line}
    names = [line.split()[1] for line in log if line]
    assert len(names) == len(set(names)) == 9
    assert str(os.getpid()) not in pids
    assert (out / "failed" / "digits-standard-pq-24b-seed1.failed.json").is_file()


def thread_reporting_run(req):
    """fake_run, after noting the most threads any loaded BLAS/OpenMP pool or torch uses."""
    import torch
    from threadpoolctl import threadpool_info

    most = max([torch.get_num_threads()] + [p["num_threads"] for p in threadpool_info()])
    with open(Path(req.out) / "threads.log", "a") as log:
        log.write(f"{most}\n")
    return fake_run(req)


def test_parallel_workers_limit_every_thread_pool_to_their_share_of_the_cores(tmp_path):
    grid, out = write_grid(tmp_path, methods=["pq"], bits=[12], seeds=[0, 1]), tmp_path / "out"
    run_grid(grid, out=out, runner=thread_reporting_run, backend=make_backend("local", jobs=2))
    from qbench.core.cores import worker_threads

    assert (out / "threads.log").read_text().split() == [str(worker_threads(2))] * 2


@pytest.mark.parametrize("changes, message", [
    ({"methods": ["float", "sssm"]}, "unknown method 'sssm'"),
    ({"bits": [12, "24"]}, "'bits' must be a non-empty list of integers"),
    ({"colour": "red"}, "unknown key 'colour'"),
    ({"params": {"pq": {"subspaces": "four"}}}, "pq: parameter subspaces"),
    ({"params": {"pq": {"lr": 0.1}}}, "unknown parameter 'lr' for method pq"),
    ({"datasets": {"mnist": {}}}, "no block for dataset 'digits'"),
    ({"datasets": {"digits": {"protocol": "huge"}}}, "unknown protocol"),
    ({"variants": {"pq": {"method": "opq"}}}, "variant 'pq' has the name of a method"),
    ({"datasets": {"digits": {"resources": {"gpu": -1}}}}, "'gpu' must be a GPU share"),
    ({"datasets": {"digits": {"resources": {"gpu": 1.5}}}}, "'gpu' must be a GPU share"),
    ({"datasets": {"digits": {"resources": {"cpu": 0.5}}}}, "'cpu' must be a whole number"),
    ({"datasets": {"digits": {"resources": {"ram": 4}}}}, "resources: unknown key 'ram'"),
])
def test_grid_file_mistakes_are_reported_before_anything_runs(tmp_path, changes, message):
    grid = write_grid(tmp_path, **changes)
    with pytest.raises(QbenchError, match=message):
        run_grid(grid, out=tmp_path / "out", runner=fake_run)
    assert CALLS == []


def test_unreadable_grid_file_and_bad_jobs(tmp_path):
    with pytest.raises(QbenchError, match="no such file"):
        run_grid(tmp_path / "missing.json", out=tmp_path)
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(QbenchError, match=r"bad\.json: not valid JSON"):
        run_grid(bad, out=tmp_path)
    with pytest.raises(QbenchError, match="--jobs must be a positive integer"):
        run_grid(write_grid(tmp_path), out=tmp_path, backend=make_backend("local", jobs=0))


def test_cli_grid_command_reports_and_exits_nonzero_on_failures(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from qbench.cli import cli

    monkeypatch.setattr("qbench.run.pipeline.run_experiment", failing_run)
    grid = write_grid(tmp_path, methods=["pq"], bits=[24])
    res = CliRunner().invoke(cli, ["grid", str(grid), "--out", str(tmp_path / "o"),
                                   "--seeds", "0"])
    assert res.exit_code == 1, res.output
    assert "1 failed" in res.output and "subspaces=5" in res.output
    assert grid_module.FAILED_DIR in res.output


def test_real_tiny_grid_end_to_end_then_compare(tmp_path):
    from qbench.report.compare import run_compare

    spec = {"methods": ["float", "pq"], "bits": [12], "seeds": [0],
            "datasets": {"synthetic": {"epochs": 2, "dataset_params": {
                "n_items": 400, "n_query": 20, "n_train": 100, "n_val": 20}}}}
    grid = tmp_path / "tiny.json"
    grid.write_text(json.dumps(spec))
    out = tmp_path / "out"
    summary = run_grid(grid, dataset="synthetic", out=out, device="cpu")
    assert not summary.failed and len(summary.done) == 2, summary.describe()
    result = load_result(out / "synthetic-standard-float-12b-seed0.json")
    assert result["params"]["epochs"] == 2 and result["dataset_params"]["n_items"] == 400
    again = run_grid(grid, dataset="synthetic", out=out, device="cpu")
    assert len(again.skipped) == 2 and not again.done
    table = run_compare(sorted(out.glob("*.json")), fmt="md", out=tmp_path / "report")
    assert "| float |" in table and "| pq |" in table
    assert (tmp_path / "report" / "plots" / "synthetic-standard-pr.png").stat().st_size > 0


def test_dry_run_lists_cells_as_done_to_run_or_stale_with_the_reason(tmp_path, monkeypatch):
    grid, out = write_grid(tmp_path, methods=["float"], bits=[12]), tmp_path / "out"
    run_grid(grid, out=out, runner=fake_run, seeds=[0])
    text = run_grid(grid, out=out, dry_run=True)
    assert "done    float 12 bits seed 0" in text
    assert "to-run  float 12 bits seed 1 (digits/standard): no result yet" in text
    assert "2 cells: 1 done, 1 to run, 0 stale" in text

    monkeypatch.setattr(grid_module, "code_version", lambda: "0123456789abcdef")
    text = run_grid(grid, out=out, dry_run=True)
    assert "stale   float 12 bits seed 0 (digits/standard): made by other code" in text


def test_a_changed_default_or_split_makes_a_result_stale(tmp_path, monkeypatch):
    from dataclasses import replace

    from qbench.methods.float import FloatEmbedding

    grid, out = write_grid(tmp_path, methods=["float"], bits=[12], seeds=[0]), tmp_path / "out"
    run_grid(grid, out=out, runner=fake_run)
    params = tuple(replace(p, default=32) if p.name == "dim" else p
                   for p in FloatEmbedding.params)
    monkeypatch.setattr(FloatEmbedding, "params", params)
    assert "parameter dim: recorded 64, now 32" in run_grid(grid, out=out, dry_run=True)
    monkeypatch.undo()
    moved = write_grid(tmp_path, methods=["float"], bits=[12], seeds=[0], split_seed=1)
    # another split seed is another result file, never the split-0 one
    assert "to-run  float 12 bits seed 0" in run_grid(moved, out=out, dry_run=True)
    grid = write_grid(tmp_path, methods=["float"], bits=[12], seeds=[0])
    path = out / "digits-standard-float-12b-seed0.json"
    result = load_result(path)
    original = result["splits"]["checksum"]
    result["splits"]["checksum"] = "0" * 64
    write_json_atomic(path, result)
    assert "the split changed" in run_grid(grid, out=out, dry_run=True)
    result["splits"]["checksum"], result["dataset_checksum"] = original, "f" * 64
    write_json_atomic(path, result)
    assert "the data changed (dataset checksum differs)" in run_grid(grid, out=out, dry_run=True)
    CALLS.clear()
    summary = run_grid(grid, out=out, runner=fake_run)
    assert len(CALLS) == 1 and summary.stale == 1


def test_grid_checks_select_and_split_seed_keys(tmp_path):
    with pytest.raises(QbenchError, match="'select' 'median' is not allowed|unknown .*'select'"):
        load_grid(write_grid(tmp_path, select="median"))
    with pytest.raises(QbenchError, match="'split_seed' must be an integer >= 0"):
        load_grid(write_grid(tmp_path, split_seed=-1))


def test_ray_backend_without_ray_installed_is_a_one_line_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if not installed
    with pytest.raises(QbenchError, match=r"needs Ray, which is not installed: "
                                          r"pip install 'qbench\[ray\]'"):
        run_grid(write_grid(tmp_path), out=tmp_path / "out", backend=make_backend("ray"),
                 runner=fake_run)
    assert CALLS == []


def test_tuned_grid_gives_every_method_the_same_budget_then_runs_the_other_seeds(tmp_path):
    grid = write_grid(tmp_path, methods=["float", "dqn", "householder"], bits=[12],
                      seeds=[0, 1, 2], tune={"trials": 2, "seed": 2},
                      params={"householder": {"rot_epochs": 2}})
    out = tmp_path / "out"
    summary = run_grid(grid, out=out, progress=False)
    assert sorted(summary.done) == sorted(
        f"digits-standard-{m}-12b-seed{s}" for m in ("float", "dqn", "householder")
        for s in (0, 1))
    records = {p.name: load_result(p) for p in out.glob("*.json")}
    dqn = records["digits-standard-dqn-12b-seed0.json"]
    assert dqn["tuning"]["trials"] == 2
    assert dqn["tuning"]["study"] == "digits-standard-dqn-12b-seed2"
    assert set(dqn["tuning"]["best_params"]) == {"lam", "refit_every"}
    assert dqn["params"]["lam"] == dqn["tuning"]["best_params"]["lam"]
    house = records["digits-standard-householder-12b-seed1.json"]
    assert house["tuning"]["trials"] == 2 and house["params"]["rot_epochs"] == 2
    assert records["digits-standard-float-12b-seed0.json"]["tuning"] is None  # no own space
    assert sorted(p.name for p in (out / "tune").glob("*.json")) == [
        "digits-standard-dqn-12b-seed2.json", "digits-standard-householder-12b-seed2.json"]
    again = run_grid(grid, out=out, progress=False)  # complete studies add no trial
    assert not again.done and len(again.skipped) == 6


def test_dry_run_of_a_tuned_grid_lists_only_the_final_seeds(tmp_path):
    """The tuning seed's runs are the studies' trials: the plan never lists them as cells."""
    grid = write_grid(tmp_path, seeds=[0, 1, 2], tune={"trials": 2, "seed": 2})
    text = run_grid(grid, out=tmp_path / "out", dry_run=True)
    cells, note = text.split("\n(")
    assert "seed 2" not in cells and "seed 1" in cells and "tunes first, on seed 2" in note
    assert "12 cells: 0 done, 12 to run" in cells
    assert not (tmp_path / "out" / "tune").exists()
    with pytest.raises(QbenchError, match="'tune.seed' 2 is the grid's only seed"):
        run_grid(write_grid(tmp_path, seeds=[2], tune={"trials": 2, "seed": 2}),
                 out=tmp_path / "out", dry_run=True)


def test_grid_tune_key_is_checked(tmp_path):
    with pytest.raises(QbenchError, match="'tune.trials' must be an integer >= 1"):
        load_grid(write_grid(tmp_path, tune={"trials": 0, "seed": 1}))
    with pytest.raises(QbenchError, match="unknown key 'budget' in 'tune'"):
        load_grid(write_grid(tmp_path, tune={"trials": 3, "seed": 1, "budget": 9}))
    with pytest.raises(QbenchError, match="'tune.pruner' 'hyperband' is not allowed; "
                                          "allowed: none, median"):
        load_grid(write_grid(tmp_path, tune={"trials": 3, "seed": 1, "pruner": "hyperband"}))
    assert load_grid(write_grid(tmp_path, tune={"trials": 3, "seed": 1, "pruner": "median"}))
    with pytest.raises(QbenchError, match="'tune.parallel' must be an integer >= 1"):
        load_grid(write_grid(tmp_path, tune={"trials": 3, "seed": 1, "parallel": 0}))
    assert load_grid(write_grid(tmp_path, tune={"trials": 3, "seed": 1, "parallel": 4}))


def dying_run(req):
    """A worker that dies under one cell, every time."""
    if req.method == "pq" and req.bits == 24 and req.seed == 0:
        os._exit(3)
    return fake_run(req)


def test_a_worker_that_dies_loses_only_its_own_run(tmp_path):
    grid, out = write_grid(tmp_path), tmp_path / "out"
    summary = run_grid(grid, out=out, runner=dying_run, backend=make_backend("local", jobs=2))
    assert summary.failed == ["digits-standard-pq-24b-seed0"]
    # every other cell is kept: run now, or found written by the other worker of the pool
    # that broke, just before it broke (then skipped, not run twice)
    assert len(summary.done) + len(summary.skipped) == 11, summary.describe()
    record = json.loads((out / "failed" / "digits-standard-pq-24b-seed0.failed.json").read_text())
    assert "died under this run 2 times" in record["message"]
    calls = (out / "calls.log").read_text().splitlines()
    # only the cells under way when the worker died run again: at most the other worker's
    assert len(calls) <= 12


def test_workers_spread_over_the_visible_gpus(monkeypatch):
    import torch

    from qbench.grid.backends.local import worker_devices

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert worker_devices("cuda", 3) == ["cuda:0", "cuda:1", "cuda:0"]
    assert worker_devices("cuda:1", 3) is None and worker_devices("cpu", 2) is None


def test_parallel_workers_get_cells_of_different_seeds_side_by_side():
    from qbench.grid.backends.local import interleave_seeds
    from qbench.grid.cells import Cell

    cells = [Cell("digits", "standard", m, m, 12, s) for s in (0, 1) for m in ("float", "itq")]
    cells.append(Cell("digits", "standard", "sign", "sign", 12, 0))
    order = [(c.name, c.seed) for c in interleave_seeds(cells)]
    assert order == [("float", 0), ("float", 1), ("itq", 0), ("itq", 1), ("sign", 0)]


def test_tuned_grid_with_jobs_runs_studies_side_by_side_with_the_same_outcome(tmp_path):
    grid = write_grid(tmp_path, methods=["dqn", "householder"], bits=[12], seeds=[0, 2],
                      tune={"trials": 2, "seed": 2}, params={"householder": {"rot_epochs": 2}})
    tunings = {}
    for jobs in (1, 2):
        out = tmp_path / f"jobs{jobs}"
        summary = run_grid(grid, out=out, backend=make_backend("local", jobs=jobs), progress=False)
        assert not summary.failed and len(summary.done) == 2
        tunings[jobs] = {p.name: load_result(p)["tuning"] for p in out.glob("*.json")}
    assert tunings[1] == tunings[2]  # the same seeded studies, in workers or not
    assert {t["study"] for t in tunings[2].values()} == {
        "digits-standard-dqn-12b-seed2", "digits-standard-householder-12b-seed2"}


@pytest.mark.parametrize("changes, message", [
    ({"bits": [16, 16]}, "'bits' lists 16 twice"),
    ({"seeds": [0, 0]}, "'seeds' lists 0 twice"),
])
def test_a_value_listed_twice_in_a_grid_is_refused_before_anything_runs(tmp_path, changes,
                                                                         message):
    with pytest.raises(QbenchError, match=message):
        run_grid(write_grid(tmp_path, **changes), out=tmp_path / "out", runner=fake_run)
    with pytest.raises(QbenchError, match="--seeds lists 1 twice"):
        run_grid(write_grid(tmp_path), out=tmp_path / "out", runner=fake_run, seeds=[1, 1])
    assert CALLS == [] and not list(tmp_path.glob("out/**/*.json"))


def test_shared_tuning_without_a_float_cell_tunes_on_float_and_runs_the_grid(tmp_path):
    """The shared stage-1 study runs on float even when the grid lists no float cell and
    its first cell has parameters float does not declare."""
    grid = write_grid(tmp_path, methods=["two-stage-pq"], bits=[12], seeds=[0, 1],
                      params={"two-stage-pq": {"normalise": False}},
                      tune={"trials": 1, "seed": 0, "shared": True},
                      datasets={"digits": {"protocol": "standard", "epochs": 1}})
    out = tmp_path / "out"
    summary = run_grid(grid, out=out, progress=False)
    assert not summary.failed and len(summary.done) == 1, summary.describe()
    assert (out / "tune" / "digits-standard-float-stage1-seed0.json").is_file()
    result = load_result(out / "digits-standard-two-stage-pq-12b-seed1.json")
    assert result["params"]["normalise"] is False and result["tuning"] is not None


def slow_run(req):
    """fake_run after a pause, so that two grids overlap."""
    import time

    time.sleep(0.3)
    return fake_run(req)


def _grid_process(grid: str, out: str, jobs: int, queue) -> None:
    summary = run_grid(Path(grid), out=Path(out), runner=slow_run,
                       backend=make_backend("local", jobs=jobs), progress=False)
    queue.put((sorted(summary.done), sorted(summary.skipped), sorted(summary.failed)))


@pytest.mark.parametrize("jobs", [1, 2])
def test_two_grids_on_one_out_at_once_run_every_cell_once(tmp_path, jobs):
    """Two grid processes started together on one --out: each cell runs once (under its
    lock), both grids end complete, every result valid; a third run is a no-op."""
    import multiprocessing

    grid, out = write_grid(tmp_path), tmp_path / "out"
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    procs = [context.Process(target=_grid_process, args=(str(grid), str(out), jobs, queue))
             for _ in range(2)]
    for p in procs:
        p.start()
    summaries = [queue.get(timeout=300) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    calls = [line.split()[1] for line in (out / "calls.log").read_text().splitlines()]
    assert len(calls) == 12 and len(set(calls)) == 12  # every cell ran exactly once
    for done, skipped, failed in summaries:
        assert not failed and len(done) + len(skipped) == 12
    assert sorted(summaries[0][0] + summaries[1][0]) == sorted(c.removesuffix(".json")
                                                               for c in calls)
    for path in out.glob("*.json"):
        load_result(path)
    again = run_grid(grid, out=out, runner=fake_run, progress=False)
    assert len(again.skipped) == 12 and not again.done


def _no_space_for_failure_records(monkeypatch):
    """A disk too full for a failure record (mkstemp in <out>/failed raises ENOSPC)."""
    import errno

    import qbench.core.atomic as atomic

    real = atomic.tempfile.mkstemp

    def mkstemp(**kwargs):
        if Path(kwargs["dir"]).name == grid_module.FAILED_DIR:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(**kwargs)

    monkeypatch.setattr(atomic.tempfile, "mkstemp", mkstemp)


def test_a_failure_that_cannot_be_recorded_is_one_line_and_the_grid_goes_on(
        tmp_path, monkeypatch, capsys):
    _no_space_for_failure_records(monkeypatch)
    grid, out = write_grid(tmp_path), tmp_path / "out"
    summary = run_grid(grid, out=out, runner=failing_run, progress=False)
    assert sorted(summary.failed) == ["digits-standard-float-12b-seed1",
                                      "digits-standard-pq-24b-seed0",
                                      "digits-standard-pq-24b-seed1"]
    assert len(summary.done) == 9
    lines = [line for line in capsys.readouterr().out.splitlines()
             if "could not be recorded" in line]
    assert len(lines) == 3
    assert any(line.startswith("failed: ") and "subspaces=5" in line
               and f"cannot write to {out / grid_module.FAILED_DIR}: No space left on device"
               in line for line in lines)
    assert not list((out / grid_module.FAILED_DIR).iterdir())


def test_cli_grid_with_an_unrecordable_failure_exits_1_without_a_traceback(tmp_path,
                                                                           monkeypatch):
    from click.testing import CliRunner

    from qbench.cli import cli

    _no_space_for_failure_records(monkeypatch)
    monkeypatch.setattr("qbench.run.pipeline.run_experiment", failing_run)
    grid = write_grid(tmp_path, methods=["pq"], bits=[24])
    res = CliRunner().invoke(cli, ["grid", str(grid), "--out", str(tmp_path / "o"),
                                   "--seeds", "0"])
    assert res.exit_code == 1, res.output
    assert "Traceback" not in res.output and "1 failed" in res.output
    assert "the failure could not be recorded: cannot write to " in res.output
