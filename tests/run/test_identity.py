"""A result's file name and identity (issue 25): choices beyond the defaults make another
file, and no write ever replaces a result of another run."""

from __future__ import annotations

import json

from click.testing import CliRunner

from qbench.cli import cli
from qbench.run.identity import default_identity, differences, identity_tag

BASE = ["run", "--method", "lsh", "--dataset", "digits", "--bits", "16", "--quiet"]


def run(out, *extra):
    return CliRunner().invoke(cli, [*BASE, "--out", str(out), *extra])


def test_the_default_run_keeps_the_plain_name(tmp_path):
    assert run(tmp_path).exit_code == 0
    assert [p.name for p in tmp_path.glob("*.json")] == ["digits-standard-lsh-16b-seed0.json"]
    record = json.loads((tmp_path / "digits-standard-lsh-16b-seed0.json").read_text())
    assert record["run_identity"] == default_identity()
    assert identity_tag(default_identity()) == ""


def test_two_parameter_values_write_two_files_and_rerunning_one_replaces_it(tmp_path):
    for extra in (["--pool-size", "50"], ["--pool-size", "60"], ["--pool-size", "50"]):
        res = run(tmp_path, *extra)
        assert res.exit_code == 0, res.output
    names = sorted(p.name for p in tmp_path.glob("*.json"))
    assert len(names) == 2 and all(n.startswith("digits-standard-lsh-16b-seed0-") for n in names)
    pools = sorted(json.loads((tmp_path / n).read_text())["run_identity"]["pool_size"]
                   for n in names)
    assert pools == [50, 60]


def test_a_method_parameter_is_part_of_the_identity(tmp_path):
    a = run(tmp_path / "a", "-p", "epochs=2", "--method", "float")
    b = run(tmp_path / "a", "-p", "epochs=3", "--method", "float")
    assert a.exit_code == 0 and b.exit_code == 0, (a.output, b.output)
    files = sorted((tmp_path / "a").glob("*.json"))
    assert len(files) == 2
    assert {json.loads(f.read_text())["run_identity"]["params"]["epochs"] for f in files} == {2, 3}


def test_a_result_of_another_run_is_never_replaced(tmp_path):
    """The plain name holding a run made with other choices (here an older result that
    recorded no identity, with lam changed): a one-line error, the file untouched, nothing
    trained."""
    assert run(tmp_path, "--method", "float", "--epochs", "2").exit_code == 0
    (made,) = tmp_path.glob("*.json")
    record = json.loads(made.read_text())
    plain = tmp_path / "digits-standard-float-16b-seed0.json"
    del record["run_identity"]
    record["params"]["weight_decay"] = 0.5  # run with a non-default value
    plain.write_text(json.dumps(record))
    before = plain.read_bytes()
    res = run(tmp_path, "--method", "float")
    assert res.exit_code == 2
    line = res.output.strip()
    assert "\n" not in line and str(plain) in line
    assert "params.weight_decay: 0.5 there, (default) here" in line
    assert plain.read_bytes() == before


def test_a_grid_cell_never_replaces_a_result_of_another_convention(tmp_path):
    """Two grids of different selection rules sharing one --out: the second one's cells
    fail with the reason instead of overwriting the first one's results."""
    grid = {"methods": ["float"], "bits": [16], "seeds": [0],
            "datasets": {"digits": {"protocol": "standard", "epochs": 2}}}
    for rule in ("best", "last"):
        path = tmp_path / f"grid-{rule}.json"
        path.write_text(json.dumps({**grid, "select": rule}))
        res = CliRunner().invoke(cli, ["grid", str(path), "--out", str(tmp_path / "o")])
        if rule == "best":
            assert res.exit_code == 0, res.output
    record = json.loads((tmp_path / "o" / "digits-standard-float-16b-seed0.json").read_text())
    assert record["selection"]["rule"] == "best"
    failures = list((tmp_path / "o" / "failed").glob("*.json"))
    assert failures and "select: best there, last here" in failures[0].read_text()


def test_differences_name_each_changed_field():
    a = {**default_identity(), "params": {"lam": 0.1}, "select": "last"}
    b = {**default_identity(), "params": {"lam": 1.0}}
    assert differences(a, b) == ["params.lam: 0.1 there, 1.0 here", "select: last there, best here"]
    assert identity_tag(a) != identity_tag(b) and len(identity_tag(a)) == 8
