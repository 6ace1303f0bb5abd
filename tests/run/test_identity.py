"""A result's file name and identity (issue 25): choices beyond the defaults make another
file, and no write ever replaces a result of another run."""

from __future__ import annotations

import json

from click.testing import CliRunner

import qbench.run.pipeline as pipeline
from qbench.cli import cli
from qbench.run.identity import conflicts, identity_tag

BASE = ["run", "--dataset", "digits", "--bits", "16", "--quiet"]


def run(out, *extra, method="lsh"):
    return CliRunner().invoke(cli, [*BASE, "--method", method, "--out", str(out), *extra])


def names(folder):
    return sorted(p.name for p in folder.glob("*.json"))


def test_the_default_run_and_a_default_value_keep_the_plain_name(tmp_path):
    assert run(tmp_path).exit_code == 0
    # the default value asked for, and --select / --pool-size of a method that selects
    # nothing, are the default run: the same file, replaced
    for extra in (["-p", "centre=true"], ["--select", "last", "--pool-size", "50"]):
        res = run(tmp_path, *extra)
        assert res.exit_code == 0, res.output
    assert names(tmp_path) == ["digits-standard-lsh-16b-seed0.json"]
    record = json.loads((tmp_path / "digits-standard-lsh-16b-seed0.json").read_text())
    assert record["run_identity"] == {} and identity_tag({}) == ""


def test_other_choices_write_other_files_and_rerunning_one_replaces_it(tmp_path):
    runs = (["--epochs", "2"], ["--epochs", "2", "--pool-size", "60"], ["--epochs", "3"],
            ["--epochs", "2"])
    for extra in runs:
        res = run(tmp_path, *extra, method="float")
        assert res.exit_code == 0, res.output
    found = names(tmp_path)
    assert len(found) == 3 and all(n.startswith("digits-standard-float-16b-seed0-")
                                   for n in found)
    identities = sorted(json.dumps(json.loads((tmp_path / n).read_text())["run_identity"],
                                   sort_keys=True) for n in found)
    assert identities == sorted(json.dumps(i, sort_keys=True) for i in (
        {"params": {"epochs": 2}}, {"params": {"epochs": 2}, "pool_size": 60},
        {"params": {"epochs": 3}}))


def test_a_result_of_another_run_is_never_replaced_and_nothing_is_trained(tmp_path,
                                                                           monkeypatch):
    """The plain name holding a run made with other choices (an older result that recorded
    no identity, with weight_decay changed): a one-line error, the file untouched, and the
    run stops before training."""
    assert run(tmp_path, "--epochs", "2", method="float").exit_code == 0
    (made,) = tmp_path.glob("*.json")
    record = json.loads(made.read_text())
    plain = tmp_path / "digits-standard-float-16b-seed0.json"
    del record["run_identity"]
    record["params"]["weight_decay"] = 0.5
    plain.write_text(json.dumps(record))
    before = plain.read_bytes()
    trained = []
    monkeypatch.setattr(pipeline, "_run", lambda prep: trained.append(prep))
    res = run(tmp_path, method="float")
    assert res.exit_code == 2 and not trained
    line = res.output.strip()
    assert "\n" not in line and str(plain) in line
    assert "params.weight_decay: 0.5 there, 1e-05 here" in line
    assert plain.read_bytes() == before


def test_a_changed_default_is_the_same_run_but_another_choice_is_not(tmp_path):
    """Neither run chose the value: a rerun after the code changed a default replaces the
    result; a choice either side made must agree on the value."""
    assert run(tmp_path, "--epochs", "2", method="float").exit_code == 0
    (made,) = tmp_path.glob("*.json")
    record = json.loads(made.read_text())
    ours = pipeline.prepare(pipeline.RunRequest(method="float", epochs=2, bits=16,
                                                out=tmp_path)).choices
    assert conflicts(record, ours) == []
    record["params"]["weight_decay"] = 0.5  # as if the default had been 0.5 then
    assert conflicts(record, ours) == []
    record["params"]["epochs"] = record["run_identity"]["params"]["epochs"] = 3
    assert conflicts(record, ours) == ["params.epochs: 3 there, 2 here"]
    # an older record (no run_identity) counts every value off today's default as chosen;
    # one of a parameter no longer declared is left out (stale, not another run)
    old = {k: v for k, v in record.items() if k != "run_identity"}
    old["params"] = {**old["params"], "retired_knob": 7}
    assert conflicts(old, ours) == ["params.epochs: 3 there, 2 here",
                                    "params.weight_decay: 0.5 there, 1e-05 here"]
    # a crafted record is no traceback: fields of the wrong type count as not recorded
    crafted = {**old, "run_identity": {"params": 5}, "method": ["x"], "tuning": "t",
               "selection": [1], "backbone": 3}
    assert conflicts(crafted, ours) == ["params.epochs: 3 there, 2 here",
                                        "params.weight_decay: 0.5 there, 1e-05 here"]


def test_a_grid_cell_never_replaces_a_result_of_another_convention(tmp_path):
    """Two grids of different selection rules sharing one --out: the second one's cell is
    reported stale with the reason and fails instead of overwriting the first one's."""
    grid = {"methods": ["float"], "bits": [16], "seeds": [0],
            "datasets": {"digits": {"protocol": "standard", "epochs": 2}}}
    for rule in ("best", "last"):
        path = tmp_path / f"grid-{rule}.json"
        path.write_text(json.dumps({**grid, "select": rule}))
        if rule == "last":
            dry = CliRunner().invoke(cli, ["grid", str(path), "--out", str(tmp_path / "o"),
                                           "--dry-run"])
            assert "holds a result of another run (select: best there, last here)" in dry.output
        res = CliRunner().invoke(cli, ["grid", str(path), "--out", str(tmp_path / "o")])
        if rule == "best":
            assert res.exit_code == 0, res.output
    record = json.loads((tmp_path / "o" / "digits-standard-float-16b-seed0.json").read_text())
    assert record["selection"]["rule"] == "best"
    failures = list((tmp_path / "o" / "failed").glob("*.json"))
    assert failures and "select: best there, last here" in failures[0].read_text()


def test_the_same_relative_path_under_two_data_folders_is_two_runs(tmp_path):
    import numpy as np

    for name, shift in (("a", 0.0), ("b", 5.0)):
        (tmp_path / name).mkdir()
        rng = np.random.default_rng(0)
        np.savez(tmp_path / name / "f.npz", X=rng.standard_normal((300, 8)) + shift,
                 y=np.arange(300) % 3)
    out = tmp_path / "out"
    for name in ("a", "b"):
        res = CliRunner().invoke(cli, ["run", "-m", "lsh", "-d", "features", "-D", "path=f.npz",
                                       "-D", "n_query=30", "-D", "n_train=100", "-D", "n_val=30",
                                       "--data-dir", str(tmp_path / name),
                                       "--bits", "8", "--out", str(out), "-q"])
        assert res.exit_code == 0, res.output
    found = names(out)
    assert len(found) == 2  # the resolved files differ: two identities, two names
    paths = {json.loads((out / n).read_text())["run_identity"]["dataset_params"]["path"]
             for n in found}
    assert paths == {str((tmp_path / n / "f.npz").resolve()) for n in ("a", "b")}


def test_an_evaluation_record_never_replaces_a_run_result(tmp_path):
    import numpy as np

    assert run(tmp_path).exit_code == 0
    result = tmp_path / "digits-standard-lsh-16b-seed0.json"
    before = result.read_bytes()
    codes = tmp_path / "codes.npz"
    rng = np.random.default_rng(0)
    np.savez(codes, query_bits=rng.integers(0, 2, (5, 8)), db_bits=rng.integers(0, 2, (20, 8)),
             query_labels=np.arange(5) % 2, db_labels=np.arange(20) % 2)
    res = CliRunner().invoke(cli, ["evaluate", str(codes), "--out", str(result)])
    assert res.exit_code == 2 and "holds a run result" in res.output
    assert result.read_bytes() == before
