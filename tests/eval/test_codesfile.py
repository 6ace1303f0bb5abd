"""Loading a user's .npz for ``qbench evaluate``: round trips and one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from qbench.core.codes import BinaryCodes, FloatCodes, PQCodes
from qbench.core.errors import QbenchError
from qbench.eval.codesfile import load_codes_npz
from qbench.eval.evaluator import evaluate

RNG = np.random.default_rng(0)
N_Q, N_DB = 6, 40


def binary_arrays(signs=False):
    q = RNG.integers(0, 2, (N_Q, 12))
    db = RNG.integers(0, 2, (N_DB, 12))
    if signs:
        q, db = 2 * q - 1, 2 * db - 1
    return {"query_bits": q, "db_bits": db, "query_labels": RNG.integers(0, 3, N_Q),
            "db_labels": RNG.integers(0, 3, N_DB)}


def float_arrays():
    return {"query_emb": RNG.normal(size=(N_Q, 8)), "db_emb": RNG.normal(size=(N_DB, 8)),
            "query_labels": (RNG.random((N_Q, 4)) < 0.5).astype(np.uint8),
            "db_labels": (RNG.random((N_DB, 4)) < 0.5).astype(np.uint8)}


def pq_arrays():
    return {"query_emb": RNG.normal(size=(N_Q, 8)).astype(np.float32),
            "db_codes": RNG.integers(0, 16, (N_DB, 2)).astype(np.uint8),
            "codebooks": RNG.normal(size=(2, 16, 4)).astype(np.float32),
            "query_labels": RNG.integers(0, 3, N_Q), "db_labels": RNG.integers(0, 3, N_DB)}


def save(tmp_path, arrays, name="codes.npz"):
    path = tmp_path / name
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize("signs", [False, True])
def test_binary_round_trip(tmp_path, signs):
    arrays = binary_arrays(signs)
    codes, ql, dl = load_codes_npz(save(tmp_path, arrays))
    assert isinstance(codes, BinaryCodes)
    np.testing.assert_array_equal(codes.query_bits, arrays["query_bits"] > 0)
    np.testing.assert_array_equal(codes.db_bits, arrays["db_bits"] > 0)
    assert codes.db_bits.dtype == np.uint8
    np.testing.assert_array_equal(ql, arrays["query_labels"])
    np.testing.assert_array_equal(dl, arrays["db_labels"])
    assert evaluate(codes, ql, dl).metric_card["distance"] == "hamming"


def test_float_round_trip(tmp_path):
    arrays = float_arrays()
    codes, ql, dl = load_codes_npz(save(tmp_path, arrays))
    assert isinstance(codes, FloatCodes) and codes.metric == "l2"
    np.testing.assert_allclose(codes.query, arrays["query_emb"], rtol=1e-6)
    np.testing.assert_allclose(codes.db, arrays["db_emb"], rtol=1e-6)
    assert ql.shape == (N_Q, 4) and dl.shape == (N_DB, 4)
    assert evaluate(codes, ql, dl).metric_card["relevance"] == "share at least one label"


def test_pq_round_trip(tmp_path):
    arrays = pq_arrays()
    codes, ql, dl = load_codes_npz(save(tmp_path, arrays))
    assert isinstance(codes, PQCodes)
    np.testing.assert_array_equal(codes.db_codes, arrays["db_codes"])
    np.testing.assert_array_equal(codes.codebooks, arrays["codebooks"])
    np.testing.assert_array_equal(codes.query, arrays["query_emb"])
    assert codes.bits == 8
    assert evaluate(codes, ql, dl).metric_card["distance"] == "adc-l2sq"


def _drop(key):
    def change(a):
        del a[key]
    return change


def _set(key, value):
    def change(a):
        a[key] = value(a) if callable(value) else value
    return change


MALFORMED = [
    ("binary", _drop("db_bits"), "db_bits"),
    ("binary", _drop("query_labels"), "query_labels"),
    ("binary", _drop("db_labels"), "db_labels"),
    ("binary", _set("db_bits", lambda a: a["db_bits"][:, :11]), "db_bits"),
    ("binary", _set("query_bits", lambda a: a["query_bits"] * 2), "query_bits"),
    ("binary", _set("db_bits", lambda a: np.vstack([a["db_bits"][1:], -np.ones((1, 12))])),
     "db_bits"),  # mixes {0, 1} and {-1, +1}
    ("binary", _set("query_bits", lambda a: a["query_bits"][0]), "query_bits"),
    ("binary", _set("query_labels", lambda a: a["query_labels"][:-1]), "query_labels"),
    ("binary", _set("db_labels", lambda a: a["db_labels"] + 0.5), "db_labels"),
    ("binary", _set("db_labels", lambda a: np.eye(3)[a["db_labels"]]), "db_labels"),
    ("float", _drop("db_emb"), "db_emb"),
    ("float", _set("db_emb", lambda a: a["db_emb"][:, :7]), "db_emb"),
    ("float", _set("query_emb", lambda a: np.full_like(a["query_emb"], np.nan)), "query_emb"),
    ("float", _set("db_emb", lambda a: a["db_emb"].astype(str)), "db_emb"),
    ("float", _set("db_labels", lambda a: a["db_labels"] * 3), "db_labels"),
    ("float", _set("db_labels", lambda a: a["db_labels"][:, :3]), "db_labels"),
    ("pq", _drop("codebooks"), "codebooks"),
    ("pq", _drop("query_emb"), "query_emb"),
    ("pq", _set("codebooks", lambda a: a["codebooks"][:, :, :3]), "codebooks"),
    ("pq", _set("codebooks", lambda a: a["codebooks"][:, :12]), "codebooks"),
    ("pq", _set("db_codes", lambda a: a["db_codes"] + 10), "db_codes"),
    ("pq", _set("db_codes", lambda a: a["db_codes"].astype(np.float32)), "db_codes"),
    ("pq", _set("db_labels", lambda a: a["db_labels"][:-2]), "db_labels"),
]


@pytest.mark.parametrize("kind, change, key", MALFORMED)
def test_malformed_file_names_file_and_key(tmp_path, kind, change, key):
    arrays = {"binary": binary_arrays, "float": float_arrays, "pq": pq_arrays}[kind]()
    change(arrays)
    path = save(tmp_path, arrays)
    with pytest.raises(QbenchError) as err:
        load_codes_npz(path)
    message = str(err.value)
    assert "\n" not in message
    assert str(path) in message and f"'{key}'" in message


def test_no_codes_at_all(tmp_path):
    path = save(tmp_path, {"query_labels": np.zeros(3), "db_labels": np.zeros(4)})
    with pytest.raises(QbenchError, match="no codes found"):
        load_codes_npz(path)


@pytest.mark.parametrize("content", [b"not a zip file at all", b"PK\x03\x04truncated"])
def test_not_an_npz(tmp_path, content):
    path = tmp_path / "junk.npz"
    path.write_bytes(content)
    with pytest.raises(QbenchError) as err:
        load_codes_npz(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_single_npy_and_missing_file(tmp_path):
    path = tmp_path / "one.npy"
    np.save(path, np.zeros(3))
    with pytest.raises(QbenchError, match="single .npy"):
        load_codes_npz(path)
    with pytest.raises(QbenchError, match="no such file"):
        load_codes_npz(tmp_path / "absent.npz")


def test_pickled_object_array_is_refused(tmp_path):
    arrays = binary_arrays()
    arrays["db_labels"] = np.array([object()] * N_DB, dtype=object)
    path = save(tmp_path, arrays)
    with pytest.raises(QbenchError, match="db_labels"):
        load_codes_npz(path)


def test_qbench_evaluate_on_the_cpu_does_not_import_torch(tmp_path):
    path = save(tmp_path, pq_arrays())
    out = tmp_path / "eval.json"
    code = ("import sys; from qbench.cli import cli; "
            f"cli.main(['evaluate', {str(path)!r}, '--out', {str(out)!r}], "
            "standalone_mode=False); print('torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip().splitlines()[-1] == "False"  # torch was never imported
    report = json.loads(out.read_text())
    assert {"tie_aware_map_all", "tie_aware_map_at_k"} <= set(report["metrics"])
    assert {"search_s", "metrics_s", "eval_s", "queries_per_s"} <= set(report["timings"])


@pytest.mark.parametrize("mix, kinds", [
    ({**binary_arrays(), "db_codes": np.zeros((N_DB, 2), np.uint8)},
     "binary: db_bits, query_bits; pq: db_codes"),
    ({**pq_arrays(), "db_emb": np.zeros((N_DB, 8))}, "pq: codebooks, db_codes; float: db_emb"),
])
def test_a_file_mixing_code_kinds_is_refused_naming_both(tmp_path, mix, kinds):
    with pytest.raises(QbenchError, match="holds more than one kind of codes "
                                          rf"\({kinds}\); allowed: one kind per file"):
        load_codes_npz(save(tmp_path, mix))
