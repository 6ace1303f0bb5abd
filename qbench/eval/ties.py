"""Tie-aware metrics: the expected values under a uniformly random order within every tie
group, with the optimistic (relevant items first within each group) and pessimistic
(relevant last) orders as bounds.

:class:`TieGroups` reads a block's tie groups (runs of equal distance, see
:mod:`qbench.eval.metrics`) and asks the block's index-order ranking
(:class:`~qbench.eval.metrics.Ranks` or :class:`~qbench.eval.metrics.LevelRanks`) how many
relevant items and precision terms lie before and inside each group; from those it gives
tie-aware hits at any cut-off and tie-aware AP@K, for every distance. Conventions as in
:mod:`qbench.eval.metrics`.
"""

from __future__ import annotations

import numpy as np
from scipy.special import gammaln

from qbench.eval.metrics import Ranks, safe_ratio

VARIANTS = ("expected", "optimistic", "pessimistic")
"""Tie-aware values: expectation over random order within ties, and its two bounds."""


def harmonic_table(n: int) -> np.ndarray:
    """H[0..n] with H[m] = sum_{j<=m} 1/j, in extended precision (np.longdouble), shape (n+1,)."""
    h = np.zeros(n + 1, dtype=np.longdouble)
    np.cumsum(1.0 / np.arange(1, n + 1, dtype=np.longdouble), out=h[1:])
    return h


def _group_terms(a, n, r, rb, m, harmonic) -> dict[str, np.ndarray]:
    """Sum of precisions at the relevant ranks among the first m slots of tie groups.

    a: items ranked before the group, n: its size, r: relevant items in it, rb: relevant
    items before it, m in [1, n]: slots counted (m = n: the whole group). Arrays of one
    shape; returns float64 arrays of that shape for each of VARIANTS. With
    c = (r - 1)/(n - 1) (0 when n = 1) and dH(x, y) = H(y) - H(x):
    expected    sum_{j=1..m} (r/n) [rb + 1 + (j - 1) c] / (a + j)
                = (r/n) [(rb + 1 - c (a + 1)) dH(a, a + m) + c m]
    optimistic  (relevant first; x = min(m, r) of them in the slots)
                sum_{t=1..x} (rb + t)/(a + t) = x - (a - rb) dH(a, a + x)
    pessimistic (relevant last; x = max(0, m - (n - r)) of them in the slots)
                x - (a + n - r - rb) dH(a + n - r, a + n - r + x)
    """
    def d_harmonic(lo, count):  # H(lo + count) - H(lo), differenced in extended precision
        return (harmonic[lo + count] - harmonic[lo]).astype(np.float64)

    c = np.zeros(np.shape(n), dtype=np.float64)
    many = np.asarray(n) > 1
    c[many] = (r[many] - 1) / (n[many] - 1)
    expected = (r / n) * ((rb + 1 - c * (a + 1)) * d_harmonic(a, m) + c * m)
    x = np.minimum(m, r)
    optimistic = x - (a - rb) * d_harmonic(a, x)
    x = np.maximum(0, m - (n - r))
    low = a + n - r
    pessimistic = x - (low - rb) * d_harmonic(low, x)
    return {"expected": expected, "optimistic": optimistic, "pessimistic": pessimistic}


def _log_comb(n: np.ndarray, k: np.ndarray) -> np.ndarray:
    return gammaln(n + 1.0) - gammaln(k + 1.0) - gammaln(n - k + 1.0)


class TieGroups:
    """Runs of equal distance of one block of queries, with their relevant counts.

    group_row, group_start, group_size: (G,) int64, see the module doc; ranks: the block's
    relevant positions. Derived per group: ``rel_before`` (R_<d), ``rel`` (r_d) and
    ``exact`` (the sum of ``ranks.terms`` over its relevant items, in index order). Only
    groups mixing relevant and other items are kept: the others have one order.
    """

    def __init__(self, group_row: np.ndarray, group_start: np.ndarray, group_size: np.ndarray,
                 ranks: Ranks):
        self.ranks = ranks
        self.n_db = ranks.n_db
        self.n_queries = ranks.n_queries
        row = np.asarray(group_row, dtype=np.int64)
        start = np.asarray(group_start, dtype=np.int64)
        size = np.asarray(group_size, dtype=np.int64)
        rel_before = ranks.count_below(row, start)
        rel = ranks.count_below(row, start + size) - rel_before
        # a group holding only relevant or only other items has one order: exact values hold
        mixed = (rel > 0) & (rel < size)
        self.row, self.start, self.size = row[mixed], start[mixed], size[mixed]
        self.rel_before, self.rel = rel_before[mixed], rel[mixed]
        self.end = self.start + self.size
        self.exact = (ranks.terms_below(self.row, self.end)
                      - ranks.terms_below(self.row, self.start))

    def _cut_group(self, cut: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For cut-offs (b, C): index of the group that each cut c splits (start < c < end)
        and a mask of where there is one (elsewhere the exact counts hold)."""
        stride = self.n_db + 1
        rows = np.arange(self.n_queries, dtype=np.int64)[:, None]
        g = np.searchsorted(self.row * stride + self.end, rows * stride + cut + 1, side="left")
        g = np.minimum(g, max(len(self.row) - 1, 0))
        if len(self.row) == 0:
            return g, np.zeros(np.broadcast(rows, cut).shape, dtype=bool)
        inside = (self.row[g] == rows) & (self.start[g] < cut) & (self.end[g] > cut)
        return g, inside

    def hits(self, cutoffs: np.ndarray) -> dict[str, np.ndarray]:
        """Relevant items in the top c under random order within ties, (b, C) float64 each
        for VARIANTS. With d* the group that rank c cuts: expected R_<d* + (c - N_<d*)
        r_d*/n_d*, optimistic R_<d* + min(c - N_<d*, r_d*), pessimistic
        R_<d* + max(0, c - N_<d* - (n_d* - r_d*)). cutoffs in [0, n_db]."""
        cut = np.asarray(cutoffs, dtype=np.int64)[None, :]
        exact = self.ranks.hits_at(cutoffs).astype(np.float64)
        g, inside = self._cut_group(cut)
        if not inside.any():
            return {v: exact for v in VARIANTS}
        rb, r, n = self.rel_before[g], self.rel[g], self.size[g]
        into = cut - self.start[g]
        values = {"expected": rb + into * (r / np.maximum(n, 1)),
                  "optimistic": rb + np.minimum(into, r),
                  "pessimistic": rb + np.maximum(0, into - (n - r))}
        return {v: np.where(inside, values[v], exact) for v in VARIANTS}

    def average_precision(self, harmonic: np.ndarray, k: int | None = None,
                          normaliser: str = "rk") -> dict[str, np.ndarray]:
        """Tie-aware AP@K per query, (b,) float64 for each of VARIANTS.

        harmonic: ``harmonic_table(n_db)``. Groups wholly inside the top K contribute their
        expected (or bound) sums of precisions (:func:`_group_terms`). The group that K cuts
        (a items before it, n in it, r relevant, m = K - a of its slots in the top K)
        contributes X relevant items, X hypergeometric (m draws from n holding r); with the
        "rk" normaliser R_K = R_<d + X is random too, so the expectation is taken of the
        ratio: sum_x P(X = x) (S + s(x)) / (R_<d + x), with s(x) the expected sum of the
        x relevant precisions among the m slots and terms with R_<d + x = 0 scoring 0. The
        bounds place the cut group's relevant items first (x = min(m, r)) or last.
        k=None: K = n_db, the tie-aware AP of SPEC section 4.
        """
        kk = self.n_db if k is None else min(int(k), self.n_db)
        b = self.n_queries
        rows = np.arange(b, dtype=np.int64)
        g, cut_mask = self._cut_group(np.full((b, 1), kk, dtype=np.int64))
        g, cut_mask = g[:, 0], cut_mask[:, 0]
        # items whose places in the top K are decided: all before the cut group
        before = np.where(cut_mask, self.start[g], kk) if len(self.start) else np.full(b, kk)
        full = self.end <= before[self.row]
        whole = _group_terms(self.start[full], self.size[full], self.rel[full],
                             self.rel_before[full], self.size[full], harmonic)
        exact_prefix = self.ranks.terms_below(rows, before)
        hits_before = self.ranks.count_below(rows, before)
        out = {}
        cut_rows = np.flatnonzero(cut_mask)
        gc = g[cut_rows]
        a, n, r, rb = self.start[gc], self.size[gc], self.rel[gc], self.rel_before[gc]
        m = kk - a
        partial = _group_terms(a, n, r, rb, m, harmonic)
        for v in VARIANTS:
            s_pre = exact_prefix + np.bincount(self.row[full], weights=whole[v] - self.exact[full],
                                               minlength=b)
            if normaliser != "rk":
                total = s_pre.copy()
                total[cut_rows] += partial[v]
                out[v] = safe_ratio(total, self.ranks.normaliser(kk, normaliser, hits_before))
                continue
            ap = safe_ratio(s_pre, hits_before)
            if v == "expected":
                ap[cut_rows] = self._expected_ratio(a, n, r, rb, m, s_pre[cut_rows], harmonic)
            else:
                x = np.minimum(m, r) if v == "optimistic" else np.maximum(0, m - (n - r))
                ap[cut_rows] = safe_ratio(s_pre[cut_rows] + partial[v], rb + x)
            out[v] = ap
        return out

    @staticmethod
    def _expected_ratio(a, n, r, rb, m, s_pre, harmonic) -> np.ndarray:
        """E[(s_pre + s(X)) / (rb + X)] over X ~ Hypergeometric(n, r, m) for each cut group."""
        lo, hi = np.maximum(0, m - (n - r)), np.minimum(m, r)
        counts = hi - lo + 1
        which = np.repeat(np.arange(len(a)), counts)
        x = lo[which] + np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
        a_, n_, r_, rb_, m_ = a[which], n[which], r[which], rb[which], m[which]
        log_p = (_log_comb(r_, x) + _log_comb(n_ - r_, m_ - x) - _log_comb(n_, m_))
        # given x relevant among the m slots, each slot holds one with probability x/m
        s = _group_terms(a_, m_, x, rb_, m_, harmonic)["expected"]
        value = safe_ratio(s_pre[which] + s, rb_ + x)
        return np.bincount(which, weights=np.exp(log_p) * value, minlength=len(a))
