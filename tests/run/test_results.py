import json

import numpy as np
import pytest

from qbench.core.errors import QbenchError
from qbench.core.provenance import environment
from qbench.run.results import (
    SCHEMA_VERSION,
    load_result,
    to_jsonable,
    validate_result,
    write_json_atomic,
)


def _minimal():
    return {
        "schema_version": SCHEMA_VERSION, "method": "float", "family": "float",
        "dataset": "digits", "protocol": "standard", "bits": 32, "seed": 0, "split_seed": 0,
        "code_version": "0" * 16, "params": {},
        "splits": {}, "metrics": {"map_all": 0.5}, "curves": {}, "timings": {}, "cost": {},
        "metric_card": {}, "env": {},
    }


def test_write_is_atomic_and_round_trips(tmp_path):
    data = _minimal()
    data["metrics"]["arr"] = np.arange(3)
    path = write_json_atomic(tmp_path / "r.json", data)
    assert load_result(path)["metrics"]["arr"] == [0, 1, 2]
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_failed_write_leaves_no_file(tmp_path):
    with pytest.raises(TypeError):
        write_json_atomic(tmp_path / "r.json", {"bad": object()})
    assert list(tmp_path.iterdir()) == []


def test_nan_becomes_null():
    assert to_jsonable({"a": float("nan"), "b": np.float32(1.5)}) == {"a": None, "b": 1.5}


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d.pop("metrics"), "missing key 'metrics'"),
        (lambda d: d.update(schema_version=99), "schema_version 99 is not supported"),
        (lambda d: d.update(bits="32"), "key 'bits' has type str"),
        (lambda d: d["metrics"].pop("map_all"), "lack 'map_all'"),
    ],
)
def test_validation_names_the_problem(mutate, message):
    data = _minimal()
    mutate(data)
    with pytest.raises(QbenchError, match=message):
        validate_result(data, "x.json")


def test_load_names_the_file_for_bad_json(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text("{not json")
    with pytest.raises(QbenchError, match="broken.json: not valid JSON"):
        load_result(path)


def test_environment_records_versions():
    env = environment("cpu")
    assert env["device"] == "cpu" and env["packages"]["torch"]
    json.dumps(env)


def test_written_file_gets_the_usual_permissions(tmp_path):
    import os

    mask = os.umask(0o022)
    try:
        path = write_json_atomic(tmp_path / "r.json", _minimal())
    finally:
        os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o644


def test_code_version_hashes_the_installed_sources_and_env_records_a_dirty_tree():
    from qbench.core.provenance import code_version

    version = code_version()
    assert len(version) == 16 and int(version, 16) >= 0
    env = environment("cpu")
    assert env["code_version"] == version
    assert env["git_dirty"] in (True, False, None)


def test_an_older_schema_is_refused():
    data = _minimal()
    data["schema_version"] = SCHEMA_VERSION - 1
    with pytest.raises(QbenchError, match="schema_version"):
        validate_result(data)


def test_the_source_hash_is_the_same_for_a_checkout_and_an_installed_layout(tmp_path):
    """methods/ beside qbench/ (a checkout) or inside it (a wheel): one hash; a change in a
    subpackage changes it."""
    from qbench.core.provenance import source_hash

    files = {"qbench/__init__.py": "v = 1\n", "qbench/eval/metrics.py": "m = 1\n",
             "methods/ssm.py": "s = 1\n", "datasets/digits.py": "d = 1\n"}
    for layout, where in (("checkout", {"methods": "methods", "datasets": "datasets"}),
                          ("wheel", {"methods": "qbench/methods",
                                     "datasets": "qbench/datasets"})):
        for name, text in files.items():
            top, _, rest = name.partition("/")
            path = tmp_path / layout / where.get(top, top) / rest
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    def roots(layout, where):
        base = tmp_path / layout
        return {"qbench": base / "qbench", "qbench.methods": base / where["methods"],
                "qbench.datasets": base / where["datasets"]}
    checkout = roots("checkout", {"methods": "methods", "datasets": "datasets"})
    wheel = roots("wheel", {"methods": "qbench/methods", "datasets": "qbench/datasets"})
    before = source_hash(checkout)
    assert before == source_hash(wheel)
    (tmp_path / "checkout" / "qbench" / "eval" / "metrics.py").write_text("m = 2\n")
    assert source_hash(checkout) != before


def test_the_code_version_leaves_out_the_code_that_only_reads_results(tmp_path):
    """A change under qbench/report (tables, plots) keeps results current; one elsewhere in
    qbench does not."""
    from qbench.core.provenance import READ_ONLY_PACKAGES, source_hash

    assert "qbench/report" in READ_ONLY_PACKAGES
    for name in ("qbench/__init__.py", "qbench/report/tables.py", "qbench/eval/metrics.py"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x = 1\n")
    roots = {"qbench": tmp_path / "qbench"}
    before = source_hash(roots, exclude=READ_ONLY_PACKAGES)
    (tmp_path / "qbench/report/tables.py").write_text("x = 2\n")
    assert source_hash(roots, exclude=READ_ONLY_PACKAGES) == before
    assert source_hash(roots) != source_hash(roots, exclude=READ_ONLY_PACKAGES)
    (tmp_path / "qbench/eval/metrics.py").write_text("x = 2\n")
    assert source_hash(roots, exclude=READ_ONLY_PACKAGES) != before
