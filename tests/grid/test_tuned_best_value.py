"""``--params-from`` refuses a tune summary whose best_value is not a finite number (qbench
tune writes a summary only once a trial completed, and a completed trial has a finite
validation score; a NaN objective fails its trial)."""

import json

import pytest
from click.testing import CliRunner

from qbench.cli import cli
from qbench.core.errors import QbenchError
from qbench.grid.tuned_params import load_tuned_params


def summary(tmp_path, best_value):
    path = tmp_path / "tuned.json"
    path.write_text(json.dumps({
        "kind": "tuning", "scope": "method", "method": "float", "dataset": "digits",
        "bits": 32, "fixed": {}, "best_params": {}, "best_value": best_value,
        "trials": {"complete": 2, "pruned": 0}, "study": "s"}))
    return path


def test_a_finite_best_value_is_kept(tmp_path):
    _, tuning = load_tuned_params(summary(tmp_path, 0.25), "float", "digits", 32)
    assert tuning["best_value"] == 0.25
    _, tuning = load_tuned_params(summary(tmp_path, 1), "float", "digits", 32)
    assert tuning["best_value"] == 1


@pytest.mark.parametrize("raw, shown", [("NaN", "nan"), ("Infinity", "inf"),
                                        ("-Infinity", "-inf"), ('"0.5"', "'0.5'"),
                                        ("null", "None"), ("true", "True"), ("[0.5]", r"\[0.5\]")])
def test_a_best_value_that_is_not_a_finite_number_is_refused(tmp_path, raw, shown):
    path = summary(tmp_path, 0.0)
    path.write_text(path.read_text().replace('"best_value": 0.0', f'"best_value": {raw}'))
    with pytest.raises(QbenchError, match=rf"^--params-from {path}: 'best_value' is {shown}; "
                                          r"allowed: a finite number"):
        load_tuned_params(path, "float", "digits", 32)


def test_run_params_from_a_nan_best_value_exits_2_with_one_line(tmp_path):
    path = summary(tmp_path, 0.0)
    path.write_text(path.read_text().replace('"best_value": 0.0', '"best_value": NaN'))
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["run", "--method", "float", "--dataset", "digits",
                                      "--bits", "32", "--quiet", "--out", str(out),
                                      "--params-from", str(path)])
    assert result.exit_code == 2, result.output
    assert result.output.strip().splitlines() == [
        f"error: --params-from {path}: 'best_value' is nan; allowed: a finite number "
        "(the best completed trial's validation score)"]
    assert not out.exists() or not [p for p in out.rglob("*.json")]
