"""The evaluator against brute-force definitions written plainly, one query at a time.

Random data with many ties (few bits, small integer embeddings and codebooks), multi-label
relevance, queries without relevant items and K < N. Exact metrics must agree to 1e-9;
tie-aware expectations must agree with the mean over random tie orders within sampling error.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

import qbench.eval.evaluator as E
from qbench.core.codes import BinaryCodes, FloatCodes, PQCodes
from qbench.core.errors import QbenchError
from qbench.eval.distances import make_distances
from qbench.eval.evaluator import Evaluation, distances, evaluate, mean_average_precision, relevance
from qbench.eval.metrics import pr_cutoffs
from qbench.eval.ranking import monotone_bits, rank_numpy
from qbench.eval.relevance import Labels

TOL = 1e-9


# ----------------------------------------------------------------------------- brute force


def brute_relevance(q_label, db_labels):
    """One query's relevance to every item: same class, or at least one shared label."""
    if db_labels.ndim == 1:
        return np.array([q_label == y for y in db_labels])
    return np.array([bool(np.any(np.logical_and(q_label, y))) for y in db_labels])


def brute_order(dist):
    """Database indices by ascending (distance, index)."""
    return np.array(sorted(range(len(dist)), key=lambda j: (dist[j], j)))


def brute_ap(rel_sorted, k=None, normaliser="rk"):
    k = len(rel_sorted) if k is None else min(k, len(rel_sorted))
    hits, total = 0, 0.0
    for rank in range(1, k + 1):
        if rel_sorted[rank - 1]:
            hits += 1
            total += hits / rank
    n_rel = int(np.sum(rel_sorted))
    norm = {"rk": hits, "min_k_r": min(k, n_rel), "r": n_rel}[normaliser]
    return total / norm if hits > 0 and norm > 0 else 0.0


def brute_groups(dist, rel):
    """[(n_d, r_d)] for the distinct distances in ascending order."""
    return [(int(np.sum(dist == v)), int(np.sum(rel[dist == v]))) for v in np.unique(dist)]


def brute_tie_ap(dist, rel):
    """SPEC section 4 formula, summed term by term."""
    n_rel = int(np.sum(rel))
    if n_rel == 0:
        return 0.0
    total, before, rel_before = 0.0, 0, 0
    for n, r in brute_groups(dist, rel):
        if r > 0:
            for j in range(1, n + 1):
                step = (j - 1) * (r - 1) / (n - 1) if n > 1 else 0.0
                total += (r / n) * (rel_before + 1 + step) / (before + j)
        before += n
        rel_before += r
    return total / n_rel


def brute_expected_hits(dist, rel, cut):
    """E[relevant in the top cut] with random order within equal distance."""
    before, rel_before = 0, 0
    for n, r in brute_groups(dist, rel):
        if before + n >= cut:
            return rel_before + (cut - before) * r / n
        before += n
        rel_before += r
    return rel_before


def bound_ap(dist, rel, relevant_first):
    key = [(dist[j], (not rel[j]) if relevant_first else rel[j], j) for j in range(len(dist))]
    order = sorted(range(len(dist)), key=lambda j: key[j])
    return brute_ap(rel[order])


def random_binary(rng, n_query, n_db, bits, n_classes=4, multi=False):
    q = rng.integers(0, 2, (n_query, bits)).astype(np.uint8)
    db = rng.integers(0, 2, (n_db, bits)).astype(np.uint8)
    if multi:
        ql = (rng.random((n_query, n_classes)) < 0.3).astype(np.uint8)
        dl = (rng.random((n_db, n_classes)) < 0.3).astype(np.uint8)
    else:
        ql = rng.integers(0, n_classes + 1, n_query)  # class n_classes never in the database
        dl = rng.integers(0, n_classes, n_db)
    return BinaryCodes(q, db), ql, dl


def random_pq(rng, n_query, n_db, m=2, k=16, dsub=2):
    codebooks = rng.integers(-2, 3, (m, k, dsub)).astype(np.float32)
    codes = rng.integers(0, k, (n_db, m))
    query = rng.integers(-2, 3, (n_query, m * dsub)).astype(np.float32)
    return PQCodes(query, codes, codebooks)


@pytest.fixture(scope="module")
def binary_case():
    rng = np.random.default_rng(0)
    return random_binary(rng, 25, 300, bits=6, multi=True)


@pytest.fixture(scope="module")
def binary_eval(binary_case):
    codes, ql, dl = binary_case
    return evaluate(codes, ql, dl, k=40)


def brute_per_query(codes, ql, dl, dist_fn):
    rows = []
    for i in range(len(ql)):
        dist = dist_fn(i)
        rel = brute_relevance(ql[i], dl)
        rows.append((dist, rel, rel[brute_order(dist)]))
    return rows


def hamming_rows(codes, ql, dl):
    return brute_per_query(codes, ql, dl, lambda i: np.sum(
        codes.query_bits[i][None, :] != codes.db_bits, axis=1))


# ----------------------------------------------------------------------------- exact metrics


@pytest.mark.parametrize("multi", [False, True])
@pytest.mark.parametrize("normaliser", ["rk", "min_k_r", "r"])
def test_map_matches_brute_force_with_ties(multi, normaliser):
    rng = np.random.default_rng(1 + multi)
    codes, ql, dl = random_binary(rng, 20, 200, bits=4, multi=multi)
    k = 5
    ev = evaluate(codes, ql, dl, k=k, normaliser=normaliser)
    rows = hamming_rows(codes, ql, dl)
    ap_all = [brute_ap(s) for _, _, s in rows]
    ap_k = [brute_ap(s, k, normaliser) for _, _, s in rows]
    assert any(np.sum(s) == 0 for _, _, s in rows)  # queries without relevant items
    assert any(np.sum(s[:k]) == 0 and np.sum(s) > 0 for _, _, s in rows)  # none in the top K
    np.testing.assert_allclose(ev.per_query_ap, ap_all, atol=TOL, rtol=0)
    assert ev.metrics["map_all"] == pytest.approx(np.mean(ap_all), abs=TOL)
    assert ev.metrics["map_at_k"] == pytest.approx(np.mean(ap_k), abs=TOL)
    assert ev.metrics["p_at_k"] == pytest.approx(np.mean([np.sum(s[:k]) / k
                                                          for _, _, s in rows]), abs=TOL)
    recall = [np.sum(s[:k]) / np.sum(s) if np.sum(s) else 0.0 for _, _, s in rows]
    assert ev.metrics["r_at_k"] == pytest.approx(np.mean(recall), abs=TOL)


def test_zero_relevant_and_zero_hit_queries_score_zero():
    codes = BinaryCodes(np.array([[0, 0], [1, 1]], np.uint8),
                        np.array([[0, 0], [0, 1], [1, 1]], np.uint8))
    ev = evaluate(codes, np.array([5, 1]), np.array([0, 0, 1]), k=1)
    assert ev.per_query_ap.tolist() == [0.0, 1.0]
    assert ev.metrics["queries_without_relevant"] == 1
    ev = evaluate(codes, np.array([1, 0]), np.array([0, 0, 1]), k=1)
    assert ev.metrics["map_at_k"] == 0.0  # neither query has a relevant item at rank 1
    assert ev.metrics["map_all"] == pytest.approx((1 / 3 + (1 / 2 + 2 / 3) / 2) / 2)


def test_map_all_equals_sklearn_average_precision_on_continuous_scores():
    rng = np.random.default_rng(3)
    q, db = rng.normal(size=(30, 8)), rng.normal(size=(400, 8))
    ql, dl = rng.integers(0, 6, 30), rng.integers(0, 5, 400)
    ev = evaluate(FloatCodes(q.astype(np.float32), db.astype(np.float32)), ql, dl)
    expected, ours = [], []
    for i in range(30):
        rel = dl == ql[i]
        if rel.any():
            score = -np.sum((db - q[i]) ** 2, axis=1)
            expected.append(average_precision_score(rel, score))
            ours.append(ev.per_query_ap[i])
        else:
            assert ev.per_query_ap[i] == 0.0
    assert len(expected) < 30
    np.testing.assert_allclose(ours, expected, atol=1e-9)


@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_float_codes_match_brute_force(metric):
    rng = np.random.default_rng(4)
    q = rng.integers(-1, 2, (15, 3)).astype(np.float32)
    db = rng.integers(-1, 2, (120, 3)).astype(np.float32)
    ql, dl = rng.integers(0, 3, 15), rng.integers(0, 3, 120)
    codes = FloatCodes(q, db, metric=metric)
    ev = evaluate(codes, ql, dl, k=20)
    dist = distances(codes)
    qn = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-30)
    dn = db / np.maximum(np.linalg.norm(db, axis=1, keepdims=True), 1e-30)
    dense = (1 - qn @ dn.T) if metric == "cosine" else ((q[:, None] - db[None]) ** 2).sum(-1)
    np.testing.assert_allclose(dist, dense, atol=1e-6)
    rows = brute_per_query(codes, ql, dl, lambda i: dist[i])
    np.testing.assert_allclose(ev.per_query_ap, [brute_ap(s) for _, _, s in rows], atol=TOL)
    assert ev.metrics["map_at_k"] == pytest.approx(
        np.mean([brute_ap(s, 20) for _, _, s in rows]), abs=TOL)
    assert ev.metrics["tie_aware_map_all"] == pytest.approx(
        np.mean([brute_tie_ap(d, r) for d, r, _ in rows]), abs=TOL)
    assert ev.metrics["tie_aware_map_all_optimistic"] == pytest.approx(
        np.mean([bound_ap(d, r, True) for d, r, _ in rows]), abs=TOL)
    assert ev.metrics["tie_aware_map_all_pessimistic"] == pytest.approx(
        np.mean([bound_ap(d, r, False) for d, r, _ in rows]), abs=TOL)
    assert "pr_hamming" not in ev.curves
    assert ev.metric_card["distance"] == metric


def test_float_curves_match_brute_force():
    rng = np.random.default_rng(5)
    codes = FloatCodes(rng.normal(size=(12, 4)).astype(np.float32),
                       rng.normal(size=(1234, 4)).astype(np.float32))
    ql, dl = rng.integers(0, 3, 12), rng.integers(0, 3, 1234)
    ev = evaluate(codes, ql, dl)
    dist = distances(codes)
    rows = brute_per_query(codes, ql, dl, lambda i: dist[i])
    assert ev.curves["top_r"]["r"] == list(range(100, 1001, 100))
    for r, p in zip(ev.curves["top_r"]["r"], ev.curves["top_r"]["precision"]):
        assert p == pytest.approx(np.mean([np.sum(s[:r]) / r for _, _, s in rows]), abs=TOL)
    pr = ev.curves["pr"]
    assert pr["rank"] == pr_cutoffs(1234).tolist()
    for c, p, rc in zip(pr["rank"], pr["precision"], pr["recall"]):
        assert p == pytest.approx(np.mean([np.sum(s[:c]) / c for _, _, s in rows]), abs=TOL)
        assert rc == pytest.approx(np.mean([np.sum(s[:c]) / np.sum(s) for _, _, s in rows]),
                                   abs=TOL)


# ----------------------------------------------------------------------------- tie-aware


def test_tie_aware_ap_matches_closed_form_brute_force(binary_case, binary_eval):
    codes, ql, dl = binary_case
    rows = hamming_rows(codes, ql, dl)
    m = binary_eval.metrics
    assert m["tie_aware_map_all"] == pytest.approx(
        np.mean([brute_tie_ap(d, r) for d, r, _ in rows]), abs=TOL)
    assert m["tie_aware_map_all_optimistic"] == pytest.approx(
        np.mean([bound_ap(d, r, True) for d, r, _ in rows]), abs=TOL)
    assert m["tie_aware_map_all_pessimistic"] == pytest.approx(
        np.mean([bound_ap(d, r, False) for d, r, _ in rows]), abs=TOL)
    assert m["tie_aware_p_at_k"] == pytest.approx(
        np.mean([brute_expected_hits(d, r, 40) / 40 for d, r, _ in rows]), abs=TOL)
    assert (m["tie_aware_map_all_optimistic"] >= m["tie_aware_map_all"]
            >= m["tie_aware_map_all_pessimistic"])
    assert m["tie_aware_map_all_optimistic"] > m["tie_aware_map_all_pessimistic"]


def test_tie_aware_values_equal_mean_over_random_tie_orders():
    rng = np.random.default_rng(6)
    codes, ql, dl = random_binary(rng, 4, 150, bits=5, n_classes=3)
    ql = np.array([0, 1, 2, 0])
    ev = evaluate(codes, ql, dl, k=25)
    per_query_tie = []
    for i in range(4):
        dist = np.sum(codes.query_bits[i][None, :] != codes.db_bits, axis=1)
        rel = dl == ql[i]
        n_perm = 2000
        noise = rng.random((n_perm, len(dist)))
        order = np.lexsort((noise, np.broadcast_to(dist, noise.shape)), axis=-1)
        rel_sorted = rel[order]
        hits = np.cumsum(rel_sorted, axis=1)
        ranks = np.arange(1, len(dist) + 1)
        ap = (hits / ranks * rel_sorted).sum(1) / rel.sum()
        p_at_25 = hits[:, 24] / 25
        for sample, exact in ((ap, brute_tie_ap(dist, rel)),
                              (p_at_25, brute_expected_hits(dist, rel, 25) / 25)):
            se = sample.std(ddof=1) / np.sqrt(n_perm)
            assert abs(sample.mean() - exact) <= 4 * se + 1e-12
        per_query_tie.append(brute_tie_ap(dist, rel))
    assert ev.metrics["tie_aware_map_all"] == pytest.approx(np.mean(per_query_tie), abs=TOL)


def test_tie_aware_equals_exact_without_ties():
    codes = BinaryCodes(np.array([[0, 0]], np.uint8),
                        np.array([[0, 0], [0, 1], [1, 1]], np.uint8))
    m = evaluate(codes, np.array([1]), np.array([0, 1, 1])).metrics
    assert (m["tie_aware_map_all"] == pytest.approx(m["map_all"])
            == pytest.approx(m["tie_aware_map_all_optimistic"]))


def test_binary_curves_match_brute_force(binary_case, binary_eval):
    codes, ql, dl = binary_case
    rows = hamming_rows(codes, ql, dl)
    curves, bits = binary_eval.curves, codes.bits
    for c, p, rc in zip(curves["pr"]["rank"], curves["pr"]["precision"], curves["pr"]["recall"]):
        hits = [brute_expected_hits(d, r, c) for d, r, _ in rows]
        assert p == pytest.approx(np.mean(hits) / c, abs=TOL)
        assert rc == pytest.approx(np.mean([h / np.sum(r) if np.sum(r) else 0.0
                                            for h, (_, r, _) in zip(hits, rows)]), abs=TOL)
    assert curves["top_r"]["r"] == [100, 200, 300]
    for c, p in zip(curves["top_r"]["r"], curves["top_r"]["precision"]):
        assert p == pytest.approx(np.mean([brute_expected_hits(d, r, c) / c
                                           for d, r, _ in rows]), abs=TOL)
    ham = curves["pr_hamming"]
    assert ham["radius"] == list(range(bits + 1))
    for radius in range(bits + 1):
        prec, rec = [], []
        for d, r, _ in rows:
            inside = d <= radius
            prec.append(np.sum(r & inside) / np.sum(inside) if np.sum(inside) else 0.0)
            rec.append(np.sum(r & inside) / np.sum(r) if np.sum(r) else 0.0)
        assert ham["precision"][radius] == pytest.approx(np.mean(prec), abs=TOL)
        assert ham["recall"][radius] == pytest.approx(np.mean(rec), abs=TOL)
        if radius == 2:
            assert binary_eval.metrics["p_at_hamming2"] == pytest.approx(np.mean(prec), abs=TOL)


def test_p_at_hamming2_is_zero_for_an_empty_ball():
    codes = BinaryCodes(np.zeros((1, 8), np.uint8), np.ones((3, 8), np.uint8))
    ev = evaluate(codes, np.array([0]), np.array([0, 0, 1]))
    assert ev.metrics["p_at_hamming2"] == 0.0
    assert ev.curves["pr_hamming"]["precision"][:8] == [0.0] * 8


def test_sdc_tie_aware_matches_brute_force():
    rng = np.random.default_rng(7)
    codes = random_pq(rng, 10, 150, m=2, k=4, dsub=1)
    ql, dl = rng.integers(0, 3, 10), rng.integers(0, 3, 150)
    ev = evaluate(codes, ql, dl, sdc=True)
    dist = distances(codes, sdc=True)
    recon = codes.reconstruct_db()
    qcodes = np.array([[np.argmin(((codes.codebooks[m] - codes.query[i, m:m + 1]) ** 2).sum(1))
                        for m in range(2)] for i in range(10)])
    qrecon = PQCodes(codes.query, qcodes, codes.codebooks).reconstruct_db()
    np.testing.assert_allclose(dist, ((qrecon[:, None] - recon[None]) ** 2).sum(-1), atol=1e-6)
    rows = brute_per_query(codes, ql, dl, lambda i: dist[i])
    assert ev.metric_card["distance"] == "sdc-l2sq"
    np.testing.assert_allclose(ev.per_query_ap, [brute_ap(s) for _, _, s in rows], atol=TOL)
    assert ev.metrics["tie_aware_map_all"] == pytest.approx(
        np.mean([brute_tie_ap(d, r) for d, r, _ in rows]), abs=TOL)


# ----------------------------------------------------------------------------- distances


@pytest.mark.parametrize("k", [256, 64])
def test_adc_distances_equal_dense_distances_to_reconstructions(k):
    rng = np.random.default_rng(8)
    m, dsub = 4, 3
    codes = PQCodes(rng.normal(size=(20, m * dsub)).astype(np.float32),
                    rng.integers(0, k, (500, m)),
                    rng.normal(size=(m, k, dsub)).astype(np.float32))
    dense = ((codes.query[:, None, :].astype(np.float64)
              - codes.reconstruct_db()[None].astype(np.float64)) ** 2).sum(-1)
    np.testing.assert_allclose(distances(codes), dense, rtol=1e-5, atol=1e-5)
    assert codes.bits == m * int(np.log2(k))


def test_adc_ranking_equals_float_ranking_of_reconstructions():
    rng = np.random.default_rng(9)
    codes = random_pq(rng, 20, 300, m=3, k=8, dsub=2)
    ql, dl = rng.integers(0, 3, 20), rng.integers(0, 3, 300)
    adc = evaluate(codes, ql, dl, k=50)
    flt = evaluate(FloatCodes(codes.query, codes.reconstruct_db()), ql, dl, k=50)
    assert adc.metric_card["distance"] == "adc-l2sq"
    np.testing.assert_array_equal(adc.per_query_ap, flt.per_query_ap)
    assert adc.metrics["map_at_k"] == flt.metrics["map_at_k"]
    assert adc.metrics["bytes_per_code"] == pytest.approx(3 * 3 / 8)


def test_float_sort_codes_preserve_order_including_negatives_and_signed_zeros():
    values = np.array([[0.5, -0.0, 0.0, -1e-7, np.inf, -2.5, 1e-38, 3.0, -np.inf, 0.5]],
                      dtype=np.float32)
    code = monotone_bits(values)[0]
    assert code[1] == code[2]  # -0.0 ties with +0.0
    np.testing.assert_array_equal(np.argsort(code, kind="stable"),
                                  np.argsort(values[0], kind="stable"))
    search = make_distances(FloatCodes(np.zeros((1, 1), np.float32),
                                         np.zeros((10, 1), np.float32)), False)
    ranking = rank_numpy(search, values, np.ones_like(values, dtype=bool))
    assert ranking.rel_pos.tolist() == list(range(10))
    assert ranking.group_start.tolist() == [3, 6] and ranking.group_size.tolist() == [2, 2]


def test_hamming_distances_are_exact_for_long_codes():
    rng = np.random.default_rng(10)
    for bits in (1, 7, 16, 33, 64, 130, 300):
        q = rng.integers(0, 2, (5, bits)).astype(np.uint8)
        db = rng.integers(0, 2, (40, bits)).astype(np.uint8)
        dense = (q[:, None, :] != db[None]).sum(-1)
        np.testing.assert_array_equal(distances(BinaryCodes(q, db)), dense)


# ----------------------------------------------------------------------------- mechanics


def _assert_same(a: Evaluation, b: Evaluation):
    assert a.metrics == pytest.approx(b.metrics, abs=1e-12)
    np.testing.assert_allclose(a.per_query_ap, b.per_query_ap, atol=1e-12)
    for name in a.curves:
        for key in a.curves[name]:
            np.testing.assert_allclose(a.curves[name][key], b.curves[name][key], atol=1e-12)


@pytest.mark.parametrize("kind", ["binary", "pq", "float", "sdc"])
def test_blocked_equals_unblocked(kind):
    rng = np.random.default_rng(11)
    b_codes, ql, dl = random_binary(rng, 17, 250, bits=6, multi=True)
    codes = {"binary": b_codes, "pq": random_pq(rng, 17, 250), "sdc": random_pq(rng, 17, 250),
             "float": FloatCodes(rng.normal(size=(17, 5)).astype(np.float32),
                                 rng.normal(size=(250, 5)).astype(np.float32))}[kind]
    sdc = kind == "sdc"
    whole = evaluate(codes, ql, dl, k=33, block_size=10_000, sdc=sdc)
    for bs in (1, 4):
        _assert_same(whole, evaluate(codes, ql, dl, k=33, block_size=bs, sdc=sdc))


@pytest.mark.parametrize("kind", ["binary", "pq", "float", "sdc"])
def test_torch_path_equals_numpy_path(kind):
    pytest.importorskip("torch")
    rng = np.random.default_rng(12)
    b_codes, ql, dl = random_binary(rng, 13, 200, bits=10)
    codes = {"binary": b_codes, "pq": random_pq(rng, 13, 200), "sdc": random_pq(rng, 13, 200),
             "float": FloatCodes(rng.integers(-2, 3, (13, 4)).astype(np.float32),
                                 rng.integers(-2, 3, (200, 4)).astype(np.float32))}[kind]
    kw = dict(k=20, normaliser="rk", device="cpu", block_size=5, curves=True,
              sdc=kind == "sdc", quick=False)
    ref = E._run(codes, ql, dl, **kw)
    got = E._run(codes, ql, dl, backend="torch", **kw)
    assert got[0] == pytest.approx(ref[0], abs=1e-12)
    np.testing.assert_allclose(got[4], ref[4], atol=1e-12)
    for name in ref[1]:
        for key in ref[1][name]:
            np.testing.assert_allclose(got[1][name][key], ref[1][name][key], atol=1e-12)


def test_hamming_ranking_gives_index_order_positions_and_level_counts():
    rng = np.random.default_rng(17)
    codes, ql, dl = random_binary(rng, 9, 500, bits=7, multi=True)
    dist = distances(codes)
    rel = relevance(ql, dl)
    ranking = rank_numpy(make_distances(codes, False), dist, rel)
    for i, row in enumerate(dist):
        expected = np.flatnonzero(rel[i][brute_order(row)])
        got = ranking.rel_pos[ranking.row_ptr[i]:ranking.row_ptr[i + 1]]
        np.testing.assert_array_equal(got, expected)
        np.testing.assert_array_equal(ranking.level_hist[i],
                                      [np.sum(row == v) for v in range(8)])


def test_mean_average_precision_matches_evaluate(binary_case, binary_eval):
    codes, ql, dl = binary_case
    assert mean_average_precision(codes, ql, dl, k=40) == pytest.approx(
        binary_eval.metrics["map_at_k"], abs=1e-12)
    assert mean_average_precision(codes, ql, dl) == pytest.approx(
        binary_eval.metrics["map_all"], abs=1e-12)


def test_relevance_single_and_multi_label():
    assert relevance(np.array([0, 2]), np.array([0, 1, 2])).tolist() == [
        [True, False, False], [False, False, True]]
    q = np.array([[1, 0, 1], [0, 0, 0]])
    db = np.array([[0, 0, 1], [0, 1, 0], [1, 1, 1]])
    assert relevance(q, db).tolist() == [[True, False, True], [False, False, False]]


def test_report_is_json_ready_and_carries_a_metric_card(binary_eval):
    json.dumps([binary_eval.metrics, binary_eval.curves, binary_eval.metric_card,
                binary_eval.timings])
    card = binary_eval.metric_card
    assert card["distance"] == "hamming" and card["k"] == 40 and card["normaliser"] == "rk"
    assert card["relevance"] == "share at least one label"
    assert "tie-aware" in card["tie_policy"] and card["n_query"] == 25 and card["n_db"] == 300
    assert {"search_s", "metrics_s", "eval_s", "queries_per_s"} <= set(binary_eval.timings)
    assert binary_eval.metrics["bytes_per_code"] == pytest.approx(6 / 8)
    assert binary_eval.per_query_ap.shape == (25,) and binary_eval.per_query_ap.dtype == np.float64


def test_automatic_block_fits_the_memory_target_at_a_million_items():
    rng = np.random.default_rng(13)
    codes = BinaryCodes(rng.integers(0, 2, (1000, 32)).astype(np.uint8),
                        rng.integers(0, 2, (2, 32)).astype(np.uint8))
    search = make_distances(codes, False)
    assert E._block_size(search, 1000, 10**6, None, False) * 10**6 * 14 <= 256 * 2**20
    pq = make_distances(random_pq(rng, 1000, 2), False)
    assert E._block_size(pq, 1000, 10**6, None, False) * 10**6 * 32 <= 256 * 2**20


@pytest.mark.parametrize("change, match", [
    (lambda c, q, d: (c, q[:-1], d), "labels for"),
    (lambda c, q, d: (BinaryCodes(c.query_bits * 2, c.db_bits), q, d), "bits must be 0 or 1"),
    (lambda c, q, d: (c, q.astype(float) + 0.5, d), "class ids must be integers"),
    (lambda c, q, d: (c, np.eye(3)[q % 3], d), "not the same kind"),
    (lambda c, q, d: ("codes", q, d), "cannot evaluate"),
])
def test_bad_inputs_raise_one_line_errors(change, match):
    rng = np.random.default_rng(14)
    codes, ql, dl = random_binary(rng, 5, 30, bits=4)
    with pytest.raises(QbenchError, match=match) as err:
        evaluate(*change(codes, ql, dl))
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("kwargs, match", [
    ({"normaliser": "x"}, "normaliser"), ({"k": 0}, "k must be"), ({"device": "tpu"}, "device"),
    ({"block_size": 0}, "block_size"), ({"sdc": True}, "sdc"),
])
def test_bad_options_raise(kwargs, match):
    rng = np.random.default_rng(15)
    codes, ql, dl = random_binary(rng, 5, 30, bits=4)
    with pytest.raises(QbenchError, match=match):
        evaluate(codes, ql, dl, **kwargs)


def test_pq_codes_out_of_range_raise():
    rng = np.random.default_rng(16)
    codes = random_pq(rng, 3, 10, k=4)
    codes.db_codes[0, 0] = 4
    with pytest.raises(QbenchError, match="db_codes"):
        evaluate(codes, np.zeros(3, int), np.zeros(10, int))


# ----------------------------------------------------------------------------- ties @K, pr11


def random_tie_orders(dist, rel, n_perm, rng):
    """(n_perm, n) relevance in ascending distance with a random order within ties."""
    noise = rng.random((n_perm, len(dist)))
    order = np.lexsort((noise, np.broadcast_to(dist, noise.shape)), axis=-1)
    return rel[order]


def ap_at_k_of_orders(rel_sorted, k, normaliser):
    """AP@K of each row of (n_orders, n) relevance in rank order."""
    top = rel_sorted[:, :k]
    hits = np.cumsum(top, axis=1)
    total = (hits / np.arange(1, k + 1) * top).sum(1)
    n_rel = rel_sorted.sum(1)
    norm = {"rk": hits[:, -1], "min_k_r": np.minimum(k, n_rel), "r": n_rel}[normaliser]
    return np.where(norm > 0, total / np.maximum(norm, 1), 0.0)


def float_codes_from_distances(dist_rows):
    """FloatCodes whose squared-L2 distances order items like ``dist_rows`` (queries at 0)."""
    db = np.sqrt(np.asarray(dist_rows[0], dtype=np.float64)).astype(np.float32)[:, None]
    return FloatCodes(np.zeros((len(dist_rows), 1), np.float32), db)


@pytest.mark.parametrize("normaliser", ["rk", "min_k_r", "r"])
def test_tie_aware_map_at_k_equals_the_average_over_every_tie_order(normaliser):
    dist = np.array([0, 0, 0, 1, 1, 1, 1, 2, 2])
    groups = [np.flatnonzero(dist == v) for v in range(3)]
    orders = [np.concatenate(p) for p in itertools.product(
        *[list(itertools.permutations(g)) for g in groups])]
    rng = np.random.default_rng(20)
    dl = rng.integers(0, 2, (len(dist), 3)).astype(np.uint8)
    ql = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [0, 0, 0]], np.uint8)
    codes = float_codes_from_distances([dist])
    codes.query = np.zeros((len(ql), 1), np.float32)
    rel = np.stack([brute_relevance(q, dl) for q in ql])
    for k in (1, 2, 3, 4, 5, 8, 9):
        m = evaluate(codes, ql, dl, k=k, normaliser=normaliser).metrics
        for variant, key in (("mean", ""), ("first", "_optimistic"), ("last", "_pessimistic")):
            per_query = []
            for r in rel:
                if variant == "mean":
                    per_query.append(ap_at_k_of_orders(np.stack([r[o] for o in orders]), k,
                                                       normaliser).mean())
                else:  # relevant items first (last) within every group
                    bound = np.concatenate([np.sort(r[g])[::-1] if variant == "first"
                                            else np.sort(r[g]) for g in groups])
                    per_query.append(ap_at_k_of_orders(bound[None], k, normaliser)[0])
            assert m["tie_aware_map_at_k" + key] == pytest.approx(np.mean(per_query), abs=TOL)


@pytest.mark.parametrize("kind", ["pq", "float", "binary"])
def test_tie_aware_map_at_k_equals_mean_over_random_tie_orders(kind):
    rng = np.random.default_rng(21)
    n_db = 160
    if kind == "pq":  # 16 distinct codes for 160 items: many equal ADC distances
        codes = random_pq(rng, 4, n_db, m=2, k=4, dsub=1)
    elif kind == "float":
        codes = FloatCodes(rng.integers(-1, 2, (4, 2)).astype(np.float32),
                           rng.integers(-1, 2, (n_db, 2)).astype(np.float32))
    else:
        codes = BinaryCodes(rng.integers(0, 2, (4, 5)).astype(np.uint8),
                            rng.integers(0, 2, (n_db, 5)).astype(np.uint8))
    ql, dl = np.array([0, 1, 2, 0]), rng.integers(0, 3, n_db)
    dist = distances(codes)
    n_perm = 2000
    orders = [random_tie_orders(dist[i], dl == ql[i], n_perm, rng) for i in range(4)]
    for k in (7, 40, n_db):
        for normaliser in ("rk", "min_k_r"):
            m = evaluate(codes, ql, dl, k=k, normaliser=normaliser).metrics
            aps = [ap_at_k_of_orders(o, k, normaliser) for o in orders]
            se = np.sqrt(np.sum([a.var(ddof=1) / n_perm for a in aps])) / 4
            assert abs(m["tie_aware_map_at_k"] - np.mean([a.mean() for a in aps])) <= 4 * se + 1e-12
            if k == n_db:
                assert m["tie_aware_map_at_k"] == pytest.approx(m["tie_aware_map_all"], abs=TOL)


def test_tie_aware_hits_bounds_match_relevant_first_and_last_orders(binary_case, binary_eval):
    codes, ql, dl = binary_case
    rows = hamming_rows(codes, ql, dl)
    m, k = binary_eval.metrics, 40

    def hits(d, r, relevant_first):
        order = sorted(range(len(d)), key=lambda j: (d[j], (not r[j]) if relevant_first
                                                     else r[j], j))
        return np.sum(r[order][:k])

    for first, key in ((True, "optimistic"), (False, "pessimistic")):
        assert m[f"tie_aware_p_at_k_{key}"] == pytest.approx(
            np.mean([hits(d, r, first) / k for d, r, _ in rows]), abs=TOL)
    pr = binary_eval.curves["pr"]
    assert pr["precision_optimistic"][0] >= pr["precision"][0] >= pr["precision_pessimistic"][0]


def test_pr_cutoffs_start_at_rank_one_and_are_dense_near_the_start():
    cut = pr_cutoffs(59_000)
    assert cut[0] == 1 and cut[-1] == 59_000 and np.all(np.diff(cut) > 0)
    assert cut[:4].tolist() == [1, 2, 3, 4] and np.sum(cut <= 100) >= 20
    assert pr_cutoffs(1).tolist() == [1] and pr_cutoffs(3).tolist() == [1, 2, 3]


def brute_pr11(rel_sorted):
    n_rel = int(np.sum(rel_sorted))
    if n_rel == 0:
        return np.zeros(11)
    hits = np.cumsum(rel_sorted)
    precision = hits / np.arange(1, len(rel_sorted) + 1)
    recall = hits / n_rel
    return np.array([max(p for p, r in zip(precision, recall) if r >= level - 1e-12)
                     for level in np.linspace(0, 1, 11)])


@pytest.mark.parametrize("kind", ["binary", "float"])
def test_pr11_matches_brute_force_interpolated_precision(kind, binary_case):
    rng = np.random.default_rng(22)
    if kind == "binary":
        codes, ql, dl = binary_case
    else:
        codes = FloatCodes(rng.normal(size=(20, 3)).astype(np.float32),
                           rng.normal(size=(257, 3)).astype(np.float32))
        ql, dl = rng.integers(0, 4, 20), rng.integers(0, 3, 257)
    ev = evaluate(codes, ql, dl)
    dist = distances(codes)
    rows = brute_per_query(codes, ql, dl, lambda i: dist[i])
    assert ev.curves["pr11"]["recall"] == pytest.approx(np.linspace(0, 1, 11).tolist())
    np.testing.assert_allclose(ev.curves["pr11"]["precision"],
                               np.mean([brute_pr11(s) for _, _, s in rows], axis=0), atol=TOL)


@pytest.mark.parametrize("kind", ["binary", "pq"])
def test_mean_average_precision_tie_aware_matches_evaluate(kind, binary_case):
    rng = np.random.default_rng(23)
    codes, ql, dl = binary_case
    if kind == "pq":
        codes = random_pq(rng, len(ql), len(dl), m=2, k=4, dsub=1)
    ev = evaluate(codes, ql, dl, k=30)
    assert mean_average_precision(codes, ql, dl, tie_aware=True) == pytest.approx(
        ev.metrics["tie_aware_map_all"], abs=1e-12)
    assert mean_average_precision(codes, ql, dl, k=30, tie_aware=True) == pytest.approx(
        ev.metrics["tie_aware_map_at_k"], abs=1e-12)


def test_timings_split_search_from_metrics(binary_eval):
    t = binary_eval.timings
    assert t["search_s"] > 0 and t["metrics_s"] > 0
    assert t["search_s"] + t["metrics_s"] <= t["eval_s"]
    assert t["queries_per_s"] == pytest.approx(25 / t["search_s"])


@pytest.mark.parametrize("codes, match", [
    (FloatCodes(np.zeros((2, 2), np.float32), np.array([[0, 1], [np.nan, 0]], np.float32)),
     "codes.db: contains NaN"),
    (PQCodes(np.zeros((2, 2), np.float32), np.zeros((2, 1), int),
             np.full((1, 2, 2), np.nan, np.float32)), "codes.codebooks: contains NaN"),
    (BinaryCodes(np.zeros((0, 4), np.uint8), np.zeros((2, 4), np.uint8)), "non-empty"),
    (BinaryCodes(np.zeros((2, 4), np.uint8), np.zeros((2, 5), np.uint8)), "bits"),
])
def test_bad_codes_raise_one_line_errors(codes, match):
    with pytest.raises(QbenchError, match=match) as err:
        evaluate(codes, np.zeros(len(codes_query(codes)), int), np.zeros(2, int))
    assert "\n" not in str(err.value)


def codes_query(codes):
    return codes.query_bits if isinstance(codes, BinaryCodes) else codes.query


def test_evaluator_does_not_import_torch():
    code = ("import sys, numpy as np; from qbench.eval.evaluator import evaluate; "
            "from qbench.core.codes import BinaryCodes; "
            "c = BinaryCodes(np.eye(3, dtype=np.uint8), np.eye(3, dtype=np.uint8)); "
            "evaluate(c, np.arange(3), np.arange(3)); print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# ----------------------------------------------------------------------------- numba kernel


@pytest.fixture(scope="module")
def kernels():
    """qbench.eval.kernels with its kernels compiled (or loaded from numba's on-disk cache)."""
    pytest.importorskip("numba")
    from qbench.eval import kernels as K

    K.warm_up()
    return K


def _run_both(codes, ql, dl, **kw):
    kw = dict(dict(k=None, normaliser="rk", device="cpu", block_size=None, curves=True,
                   sdc=False, quick=False), **kw)
    return E._run(codes, ql, dl, backend="numpy", **kw), E._run(codes, ql, dl, **kw)


def _assert_runs_equal(ref, got):
    assert got[3]["backend"] == "numba" and ref[3]["backend"] == "numpy"
    assert set(got[0]) == set(ref[0])
    for key, value in ref[0].items():
        assert got[0][key] == pytest.approx(value, abs=1e-12), key
        if key in ("queries_without_relevant", "bytes_per_code"):
            assert got[0][key] == value
    np.testing.assert_allclose(got[4], ref[4], rtol=0, atol=1e-12)
    assert set(got[1]) == set(ref[1])
    for name in ref[1]:
        for key in ref[1][name]:
            np.testing.assert_allclose(got[1][name][key], ref[1][name][key], rtol=0,
                                       atol=1e-12, err_msg=f"{name}.{key}")
    assert got[2] == ref[2]


def _k_inside_mixed_tie_group(codes, ql, dl, k):
    """Whether K falls strictly inside a tie group holding relevant and other items."""
    dist, rel = distances(codes), relevance(ql, dl)
    for row, r in zip(dist, rel):
        order = brute_order(row)
        d_sorted, r_sorted = row[order], r[order]
        d_k = d_sorted[k - 1]
        group = d_sorted == d_k
        if k < len(row) and d_sorted[k] == d_k and 0 < r_sorted[group].sum() < group.sum():
            return True
    return False


@pytest.mark.parametrize("bits, multi, n_classes", [(6, False, 4), (5, True, 4),
                                                    (70, False, 3), (9, True, 70)])
@pytest.mark.parametrize("normaliser", ["rk", "min_k_r", "r"])
def test_numba_path_equals_numpy_path(kernels, bits, multi, n_classes, normaliser):
    """Hamming through the compiled kernel = the numpy sort, on every figure: single- and
    multi-label (more than 64 labels: two mask words), codes of two 64-bit words, K inside
    a mixed tie group, several block sizes, every normaliser, curves and quick scores."""
    rng = np.random.default_rng(bits * 100 + n_classes)
    codes, ql, dl = random_binary(rng, 23, 400, bits=bits, n_classes=n_classes, multi=multi)
    k = 37
    if bits <= 9:
        assert _k_inside_mixed_tie_group(codes, ql, dl, k)
    for block_size in (None, 1, 7):
        ref, got = _run_both(codes, ql, dl, k=k, normaliser=normaliser, block_size=block_size)
        _assert_runs_equal(ref, got)
    ref, got = _run_both(codes, ql, dl, normaliser=normaliser, curves=False)
    _assert_runs_equal(ref, got)
    for tie_aware in (False, True):
        kw = dict(k=k, normaliser=normaliser, curves=False, quick=True, tie_aware=tie_aware)
        ref, got = _run_both(codes, ql, dl, **kw)
        np.testing.assert_allclose(got[4], ref[4], rtol=0, atol=1e-12)
        assert got[0]["map_at_k"] == pytest.approx(ref[0]["map_at_k"], abs=1e-12)


def test_numba_kernel_counts_equal_the_numpy_ranking(kernels):
    """The kernel's integers equal the sorted ranking's exactly (level counts, relevant
    counts at every cut-off and level boundary), its pr11 is bit-identical, its sums of
    precision terms agree to rounding."""
    rng = np.random.default_rng(21)
    codes, ql, dl = random_binary(rng, 11, 700, bits=7, multi=True)
    search = make_distances(codes, False)
    labels = Labels(ql, dl)
    ref = rank_numpy(search, search.numpy(0, 11), labels.block(0, 11))
    ranks = E.M.Ranks(ref.rel_pos, ref.row_ptr, 700)
    cuts = np.array([0, 1, 5, 37, 100, 699, 700])
    q_words, db_words = search.words64()
    got = kernels.hamming_block(q_words, db_words, search.levels, cuts,
                                **labels.kernel_args())
    np.testing.assert_array_equal(got.level_hist, ref.level_hist)
    np.testing.assert_array_equal(got.level_rel.sum(1), ranks.n_rel)
    np.testing.assert_array_equal(got.cut_hits, ranks.hits_at(cuts))
    np.testing.assert_array_equal(got.pr11, ranks.interpolated_precision())
    rows = np.broadcast_to(np.arange(11)[:, None], got.cut_terms.shape)
    np.testing.assert_allclose(got.cut_terms, ranks.terms_below(rows, cuts[None, :]),
                               rtol=1e-13, atol=0)
    level = E.M.LevelRanks(got.level_hist, got.level_rel, got.level_terms, got.cuts,
                           got.cut_hits, got.cut_terms, got.pr11, 700)
    bounds = np.concatenate([np.zeros((11, 1), int), np.cumsum(ref.level_hist, axis=1)], 1)
    rows = np.broadcast_to(np.arange(11)[:, None], bounds.shape)
    np.testing.assert_array_equal(level.count_below(rows, bounds), ranks.count_below(rows, bounds))
    np.testing.assert_allclose(level.terms_below(rows, bounds), ranks.terms_below(rows, bounds),
                               rtol=1e-13, atol=0)
    inside = [c for c in range(1, 700) if c not in cuts and not np.any(bounds[0] == c)][0]
    with pytest.raises(ValueError, match="boundary"):
        level.count_below(np.array([0]), np.array([inside]))


def test_hamming_uses_the_kernel_and_falls_back_to_numpy_without_numba(kernels, monkeypatch,
                                                                       binary_case):
    codes, ql, dl = binary_case
    assert evaluate(codes, ql, dl, k=40).timings["backend"] == "numba"
    pq = random_pq(np.random.default_rng(0), 3, 20)
    assert evaluate(pq, np.arange(3), np.arange(20) % 3).timings["backend"] == "numba"
    monkeypatch.setattr(kernels, "numba", None)
    ev = evaluate(codes, ql, dl, k=40)
    assert ev.timings["backend"] == "numpy"
    assert evaluate(pq, np.arange(3), np.arange(20) % 3).timings["backend"] == "numpy"
    with pytest.raises(QbenchError, match="needs the numba package"):
        E._run(codes, ql, dl, k=None, normaliser="rk", device="cpu", block_size=None,
               curves=False, sdc=False, quick=True, backend="numba")
    with pytest.raises(QbenchError, match="unknown backend"):
        E._run(codes, ql, dl, k=None, normaliser="rk", device="cpu", block_size=None,
               curves=False, sdc=False, quick=True, backend="fortran")


def test_evaluator_threads_follow_the_worker_share(monkeypatch):
    from qbench.eval.evaluator import _workers

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert _workers("cpu") == 1
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert _workers("cpu") >= 1 and _workers("cuda") == 1
