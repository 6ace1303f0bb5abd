"""The compiled bucket ranking of float distances (qbench.eval.buckets): every figure equals
the numpy sort's, for ADC, SDC, additive codes and float embeddings, with many exact ties,
large tie groups, multi-label relevance and K inside a mixed tie group; NaN is refused."""

from __future__ import annotations

import numpy as np
import pytest

import qbench.eval.evaluator as E
from qbench.core.codes import AQCodes, FloatCodes, PQCodes
from qbench.core.errors import QbenchError
from qbench.eval.distances import make_distances
from qbench.eval.relevance import Labels

pytest.importorskip("numba")


def _labels(rng, n_query, n_db, n_classes, multi):
    if multi:
        return ((rng.random((n_query, n_classes)) < 0.3).astype(np.uint8),
                (rng.random((n_db, n_classes)) < 0.3).astype(np.uint8))
    return rng.integers(0, n_classes + 1, n_query), rng.integers(0, n_classes, n_db)


def _pq(rng, n_query, n_db, m, k, dsub, ties):
    if ties:  # small integers: many equal table sums, and large tie groups
        cb = rng.integers(-1, 2, (m, k, dsub)).astype(np.float32)
        q = rng.integers(-1, 2, (n_query, m * dsub)).astype(np.float32)
    else:
        cb = rng.normal(size=(m, k, dsub)).astype(np.float32)
        q = rng.normal(size=(n_query, m * dsub)).astype(np.float32)
    return PQCodes(q, rng.integers(0, k, (n_db, m)), cb)


def _aq(rng, n_query, n_db, m, k, dim, ties):
    cb = rng.integers(-1, 2, (m, k, dim)) if ties else rng.normal(size=(m, k, dim))
    q = rng.integers(-2, 3, (n_query, dim)) if ties else rng.normal(size=(n_query, dim))
    return AQCodes(q.astype(np.float32), rng.integers(0, k, (n_db, m)), cb.astype(np.float32))


def _float(rng, n_query, n_db, dim, metric, ties):
    q = rng.integers(-1, 2, (n_query, dim)) if ties else rng.normal(size=(n_query, dim))
    db = rng.integers(-1, 2, (n_db, dim)) if ties else rng.normal(size=(n_db, dim))
    return FloatCodes(q.astype(np.float32), db.astype(np.float32), metric=metric)


CASES = {
    "adc-ties": lambda rng: _pq(rng, 19, 900, 2, 8, 2, True),
    "adc": lambda rng: _pq(rng, 19, 900, 4, 256, 4, False),
    "adc-k1024": lambda rng: _pq(rng, 7, 600, 2, 1024, 2, False),
    "additive-ties": lambda rng: _aq(rng, 19, 700, 3, 4, 5, True),
    "additive": lambda rng: _aq(rng, 13, 700, 4, 16, 8, False),
    "l2-ties": lambda rng: _float(rng, 17, 800, 3, "l2", True),
    "cosine": lambda rng: _float(rng, 17, 800, 6, "cosine", False),
}


def _run(codes, ql, dl, backend, **kw):
    kw = dict(dict(k=None, normaliser="rk", device="cpu", block_size=None, curves=True,
                   sdc=False, quick=False), **kw)
    return E._run(codes, ql, dl, backend=backend, **kw)


def _assert_equal(ref, got):
    assert ref[3]["backend"] == "numpy" and got[3]["backend"] == "numba"
    assert set(got[0]) == set(ref[0])
    for key, value in ref[0].items():
        assert got[0][key] == pytest.approx(value, abs=1e-12), key
    np.testing.assert_allclose(got[4], ref[4], rtol=0, atol=1e-12)
    for name in ref[1]:
        for key in ref[1][name]:
            np.testing.assert_allclose(got[1][name][key], ref[1][name][key], rtol=0,
                                       atol=1e-12, err_msg=f"{name}.{key}")
    assert got[2] == ref[2]


def _mixed_group_at(codes, ql, dl, sdc=False):
    """A K strictly inside a tie group that holds relevant and other items, or None."""
    search = make_distances(codes, sdc)
    dist = search.numpy(0, len(ql))
    rel = Labels(ql, dl).block(0, len(ql))
    for row, r in zip(dist, rel):
        order = np.lexsort((np.arange(len(row)), row))
        d, rr = row[order], r[order]
        for start in np.flatnonzero(np.r_[True, d[1:] != d[:-1]]):
            size = np.sum(d == d[start])
            if size > 2 and 0 < rr[start:start + size].sum() < size:
                return int(start + 1)
    return None


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("multi", [False, True])
def test_bucket_path_equals_numpy_path(case, multi):
    rng = np.random.default_rng(sorted(CASES).index(case) * 2 + multi)  # reproducible
    codes = CASES[case](rng)
    n_query, n_db = len(codes.query), (len(codes.db) if isinstance(codes, FloatCodes)
                                       else len(codes.db_codes))
    ql, dl = _labels(rng, n_query, n_db, 4, multi)
    k = _mixed_group_at(codes, ql, dl) if case.endswith("ties") else 37
    assert k is not None  # the tie cases really put K inside a mixed group
    for normaliser in ("rk", "min_k_r", "r"):
        for block_size in (None, 1, 5):
            _assert_equal(_run(codes, ql, dl, "numpy", k=k, normaliser=normaliser,
                               block_size=block_size),
                          _run(codes, ql, dl, None, k=k, normaliser=normaliser,
                               block_size=block_size))
    for tie_aware in (False, True):
        kw = dict(k=k, curves=False, quick=True, tie_aware=tie_aware)
        ref, got = _run(codes, ql, dl, "numpy", **kw), _run(codes, ql, dl, None, **kw)
        np.testing.assert_allclose(got[4], ref[4], rtol=0, atol=1e-12)


def test_sdc_through_the_kernel_equals_numpy():
    rng = np.random.default_rng(5)
    codes = _pq(rng, 15, 500, 2, 8, 2, True)
    ql, dl = _labels(rng, 15, 500, 3, False)
    _assert_equal(_run(codes, ql, dl, "numpy", sdc=True, k=50),
                  _run(codes, ql, dl, None, sdc=True, k=50))


def test_a_bucket_larger_than_the_insertion_limit_is_ranked_exactly():
    """Distances in two far clusters: one holds many distinct values in few buckets (the
    merge-sort fallback), and every rank still equals the stable sort's."""
    from qbench.eval import buckets as B

    rng = np.random.default_rng(3)
    n = 3000
    dist = np.where(rng.random(n) < 0.02, 1e6, rng.random(n) * 1e-3).astype(np.float32)
    dist[::7] = dist[1]  # a large exact tie group too
    labels = {"q_labels": np.zeros(1, np.int64),
              "db_labels": np.where(rng.random(n) < 0.3, 0, 1).astype(np.int64)}
    cuts = np.array([0, 10, 100, n])
    got = B.rank_block(labels, cuts, dist=dist[None, :])
    order = np.lexsort((np.arange(n), dist))
    rel = labels["db_labels"][order] == 0
    pos = np.flatnonzero(rel)
    assert got.n_rel[0] == len(pos)
    np.testing.assert_array_equal(got.cut_hits[0], [np.sum(pos < c) for c in cuts])
    terms = np.arange(1, len(pos) + 1) / (pos + 1.0)
    assert got.total_terms[0] == pytest.approx(terms.sum(), rel=1e-13)
    big = np.sum(dist == dist[1])
    assert big > B.INSERTION_MAX and np.any(got.group_size == big)


@pytest.mark.parametrize("bad", [np.nan, -np.nan])
def test_nan_distances_are_refused(bad):
    from qbench.eval import buckets as B

    dist = np.ones((2, 50), np.float32)
    dist[1, 17] = bad
    labels = {"q_labels": np.zeros(2, np.int64), "db_labels": np.zeros(50, np.int64)}
    with pytest.raises(QbenchError, match="NaN"):
        B.rank_block(labels, np.array([0, 50]), dist=dist)


def test_signed_zero_ranks_as_zero():
    """-0.0 and +0.0 are one tie group, ordered by index, as the numpy path orders them."""
    from qbench.eval import buckets as B

    dist = np.array([[0.5, -0.0, 0.0, 1.0, -0.0]], np.float32)
    labels = {"q_labels": np.zeros(1, np.int64), "db_labels": np.array([1, 0, 1, 0, 0])}
    got = B.rank_block(labels, np.array([0, 1, 2, 3, 4, 5]), dist=dist)
    # order: 1 (-0), 2 (+0), 4 (-0), 0, 3 -> relevant (label 0) items 1, 4, 3 at ranks 0, 2, 4
    np.testing.assert_array_equal(got.cut_hits[0], [0, 1, 1, 2, 2, 3])
    assert list(got.group_start) == [0] and list(got.group_size) == [3]


@pytest.mark.parametrize("case", ["adc-ties", "additive-ties", "l2-ties"])
def test_without_curves_and_a_short_k_the_kernel_equals_numpy(case):
    """Without curves the cut-offs are only K; the tie-aware MAP@all still reads the whole
    ranking (review defect: the kernel did not list n_db and raised)."""
    rng = np.random.default_rng(7)
    codes = CASES[case](rng)
    n_query, n_db = len(codes.query), (len(codes.db) if isinstance(codes, FloatCodes)
                                       else len(codes.db_codes))
    ql, dl = _labels(rng, n_query, n_db, 4, False)
    ref = _run(codes, ql, dl, "numpy", k=5, curves=False)
    got = _run(codes, ql, dl, "numba", k=5, curves=False)
    for key, value in ref[0].items():
        assert got[0][key] == pytest.approx(value, abs=1e-12), key


def test_more_buckets_than_float32_counts_exactly_stay_in_range(monkeypatch):
    """With L - 1 > 2^24, float32(L - 1) rounds up to L: the bucket id is clamped in
    integers, so the largest distance never lands past the last bucket."""
    from qbench.eval import buckets as B

    n = 1000
    monkeypatch.setattr(B, "BUCKETS_PER_ITEM", (2**24 + 4) / n)
    assert np.float32(int(n * B.BUCKETS_PER_ITEM) - 1) == int(n * B.BUCKETS_PER_ITEM)
    dist = np.arange(n, dtype=np.float32)[None]
    # the odd items are relevant, the largest distance among them (it met the rounding)
    labels = {"q_labels": np.zeros(1, np.int64), "db_labels": (np.arange(n) + 1) % 2}
    got = B.rank_block(labels, np.array([1, 10, n]), dist=dist)
    np.testing.assert_array_equal(got.cut_hits[0], [0, 5, n // 2])
    assert got.total_terms[0] == pytest.approx(sum(t / (2 * t) for t in range(1, 501)))


def test_a_nan_additive_distance_is_refused_not_clipped_to_zero():
    """inf - inf from finite codebooks is NaN: refused like the numpy path refuses it."""
    cb = np.zeros((1, 2, 2), np.float32)
    cb[0, 0], cb[0, 1] = [2e19, 0], [0, 1]
    codes = AQCodes(np.array([[2e19, 0]], np.float32), np.array([[0], [1], [1], [1]]), cb)
    for backend in ("numpy", "numba"):
        with pytest.raises(QbenchError, match="NaN"):
            E.evaluate(codes, np.array([0]), np.array([0, 1, 1, 1]), backend=backend)
