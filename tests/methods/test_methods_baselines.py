"""Two-stage (O)PQ, Householder, sign, ITQ, LSH, PQ and OPQ plugins end to end on digits."""

import numpy as np
import pytest

from qbench.core.codes import BinaryCodes, FloatCodes, PQCodes
from qbench.core.errors import QbenchError
from qbench.data.protocols import make_splits
from qbench.methods import RunContext
from qbench.registry import DATASETS, METHODS

FAST = {"epochs": 2}
METHOD_PARAMS = {
    "two-stage-pq": FAST,
    "two-stage-opq": {**FAST, "opq_iters": 3},
    "householder": {**FAST, "rot_epochs": 3},
    "sign": FAST,
    "itq": {**FAST, "itq_iters": 5},
    "lsh": {},
    "pq": {},
    "opq": {"opq_iters": 3},
}
PQ_LAYOUT = {12: (2, 6), 24: (3, 8), 32: (4, 8), 48: (6, 8)}


@pytest.fixture(scope="module")
def digits():
    plugin = DATASETS.get("digits")({}, None)
    ds = plugin.load()
    return ds, make_splits(ds, plugin.protocol("standard"), seed=0)


def _method(name, **overrides):
    params = {**METHOD_PARAMS[name], **overrides}
    return METHODS.get(name)(METHODS.resolve_params(name, params))


def _run(digits, name, bits, **overrides):
    ds, splits = digits
    return _method(name, **overrides).run(RunContext(ds, splits, bits=bits, seed=0))


@pytest.mark.parametrize("bits", [12, 24, 32, 48])
@pytest.mark.parametrize("name", list(METHOD_PARAMS))
def test_method_returns_codes_of_the_budget(digits, name, bits):
    ds, splits = digits
    n_q, n_db = len(splits.query), len(splits.database)
    method = _method(name)
    out = method.run(RunContext(ds, splits, bits=bits, seed=0))
    assert out.codes.kind == method.family
    assert out.codes.bits == bits
    if method.family == "pq":
        m, b = PQ_LAYOUT[bits]
        assert isinstance(out.codes, PQCodes)
        assert out.codes.db_codes.shape == (n_db, m)
        assert out.codes.codebooks.shape[:2] == (m, 1 << b)
        assert out.codes.query.shape == (n_q, m * out.codes.codebooks.shape[2])
        assert (out.info["subspaces"], out.info["bits_per_subspace"]) == (m, b)
        assert out.info["codewords"] == 1 << b
        assert np.isfinite(out.info["train_distortion"])
    else:
        assert isinstance(out.codes, BinaryCodes)
        assert out.codes.query_bits.shape == (n_q, bits)
        assert out.codes.db_bits.shape == (n_db, bits)
        assert out.codes.db_bits.dtype == np.uint8
        assert set(np.unique(out.codes.db_bits)) <= {0, 1}
    assert isinstance(out.float_codes, FloatCodes)
    assert len(out.float_codes.query) == n_q and len(out.float_codes.db) == n_db
    assert out.timings["encode_s"] >= 0


@pytest.mark.parametrize("bits, padded", [(12, 64), (24, 66), (32, 64), (48, 66)])
def test_two_stage_pads_the_shared_64_wide_embedding_to_a_multiple_of_m(digits, bits, padded):
    out = _run(digits, "two-stage-opq", bits)
    assert (out.info["dim"], out.info["padded_dim"]) == (64, padded)
    assert out.codes.query.shape[1] == padded
    assert out.float_codes.metric == "cosine"
    assert out.info["training"]["epochs"] == 2
    # the query is rotated by the orthogonal R: norms kept, coordinates moved
    np.testing.assert_allclose(np.linalg.norm(out.codes.query, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(out.codes.query[:, :64], out.float_codes.query)


def test_two_stage_pq_searches_the_unrotated_normalised_query(digits):
    out = _run(digits, "two-stage-pq", 32, dim=32)
    assert out.info["dim"] == 32
    np.testing.assert_array_equal(out.codes.query, out.float_codes.query)
    np.testing.assert_allclose(np.linalg.norm(out.codes.query, axis=1), 1.0, atol=1e-5)


def test_raw_pq_pads_to_a_multiple_of_m_and_keeps_raw_l2_for_retention(digits):
    out = _run(digits, "pq", 24)
    assert (out.info["input_dim"], out.info["padded_dim"]) == (64, 66)
    assert out.codes.query.shape[1] == 66
    np.testing.assert_array_equal(out.codes.query[:, 64:], 0)
    assert out.float_codes.metric == "l2" and out.float_codes.query.shape[1] == 64


def test_householder_records_an_orthogonal_rotation_that_lowers_its_loss(digits):
    out = _run(digits, "householder", 16, rot_epochs=10)
    rot = out.info["rotation"]
    assert rot["orthogonality_error"] < 1e-5
    assert rot["train_loss_after"] < rot["train_loss_before"]
    assert rot["val_loss_after"] <= rot["val_loss_before"]
    assert out.info["dim"] == 16 and out.float_codes.query.shape == (100, 16)


def test_lsh_codes_repeat_for_a_seed(digits):
    a, b = _run(digits, "lsh", 32), _run(digits, "lsh", 32)
    np.testing.assert_array_equal(a.codes.db_bits, b.codes.db_bits)


@pytest.mark.parametrize("name", list(METHOD_PARAMS))
@pytest.mark.parametrize("bits", [0, -1])
def test_non_positive_bits_are_user_errors(digits, name, bits):
    with pytest.raises(QbenchError, match="positive"):
        _method(name).check_bits(bits)
    with pytest.raises(QbenchError, match="positive"):
        _run(digits, name, bits)


@pytest.mark.parametrize("name", ["two-stage-pq", "two-stage-opq", "pq", "opq"])
def test_subspaces_that_do_not_divide_bits_are_user_errors(name):
    with pytest.raises(QbenchError, match="subspaces=5 does not fit 32 bits"):
        _method(name, subspaces=5).check_bits(32)


def test_two_stage_pq_pads_a_dim_not_divisible_by_m(digits):
    out = _run(digits, "two-stage-pq", 32, dim=65)
    assert out.codes.query.shape[1] == 68
    np.testing.assert_array_equal(out.codes.query[:, 65:], 0)


def test_itq_dim_below_bits_is_a_user_error():
    with pytest.raises(QbenchError, match="dim=16 is below --bits 32"):
        _method("itq", dim=16).check_bits(32)
