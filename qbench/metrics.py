"""Retrieval metrics computed from rankings, one block of queries at a time.

The evaluator reduces each query's ranking of the database to two compact descriptions,
and every metric here is computed from them without touching the full ranking again:

- **relevant positions**: for each query, the 0-based ranks of its relevant database items
  in the deterministic order (ascending distance, ties by database index). A block of
  ``b`` queries stores them flat, row after row, each row ascending: ``rel_pos`` (T,) int64
  with ``row_ptr`` (b + 1,) int64 so that row i is ``rel_pos[row_ptr[i]:row_ptr[i + 1]]``.
- **tie groups** (integer distances only): for each query, the runs of items at equal
  distance in rank order, as flat ``group_row`` (G,) and ``group_size`` (G,) int64, rows
  ascending and each row's sizes summing to ``n_db``. Together with the relevant positions
  they give the per-distance histograms n_d, r_d of SPEC section 4.

Conventions (recorded in the metric card): a query with no relevant item scores AP = 0 and
recall = 0, and is counted in every mean. Ranks and cut-offs are 1-based counts ("top c").
"""

from __future__ import annotations

import numpy as np

NORMALISERS = ("rk", "min_k_r", "r")
"""AP@K normalisers: relevant items in the top K | min(K, R) | R (all relevant items)."""


def pr_cutoffs(n_db: int, points: int = 50) -> np.ndarray:
    """Rank cut-offs of the precision-recall curve: ceil(i * n_db / points), i = 1..points.

    Returns a strictly increasing int64 array ending at n_db (fewer than ``points`` entries
    when n_db < points).
    """
    cut = -(-np.arange(1, points + 1, dtype=np.int64) * n_db // points)
    return np.unique(cut[cut >= 1])


def top_r_cutoffs(n_db: int) -> np.ndarray:
    """The Precision@top-R cut-offs R = 100, 200, ..., 1000 that do not exceed n_db."""
    r = np.arange(100, 1001, 100, dtype=np.int64)
    return r[r <= n_db]


def harmonic_table(n: int) -> np.ndarray:
    """H[0..n] with H[m] = sum_{j<=m} 1/j, in extended precision (np.longdouble), shape (n+1,)."""
    h = np.zeros(n + 1, dtype=np.longdouble)
    np.cumsum(1.0 / np.arange(1, n + 1, dtype=np.longdouble), out=h[1:])
    return h


class Ranks:
    """The relevant positions of one block of queries (see the module doc).

    rel_pos: (T,) int64, row_ptr: (b + 1,) int64, n_db: database size.
    """

    def __init__(self, rel_pos: np.ndarray, row_ptr: np.ndarray, n_db: int):
        self.rel_pos = np.asarray(rel_pos, dtype=np.int64)
        self.row_ptr = np.asarray(row_ptr, dtype=np.int64)
        self.n_db = int(n_db)
        self.n_queries = len(self.row_ptr) - 1
        self.n_rel = np.diff(self.row_ptr)
        self._keys = None

    def row(self, i: int) -> np.ndarray:
        """Ascending 0-based ranks of query i's relevant items."""
        return self.rel_pos[self.row_ptr[i]:self.row_ptr[i + 1]]

    def count_below(self, rows: np.ndarray, cut: np.ndarray) -> np.ndarray:
        """Relevant items in the top ``cut[j]`` of query ``rows[j]``.

        rows, cut: int arrays of one shape, cut in [0, n_db]. Returns int64 of that shape.
        """
        stride = self.n_db + 1
        if self._keys is None:
            rows_of = np.repeat(np.arange(self.n_queries, dtype=np.int64), self.n_rel)
            self._keys = rows_of * stride + self.rel_pos
        target = rows.astype(np.int64) * stride + cut
        return np.searchsorted(self._keys, target, side="left") - self.row_ptr[rows]

    def hits_at(self, cutoffs: np.ndarray) -> np.ndarray:
        """(b, C) int64: relevant items in the top c, per query and cut-off c in [0, n_db]."""
        cut = np.asarray(cutoffs, dtype=np.int64)[None, :]
        rows = np.arange(self.n_queries, dtype=np.int64)[:, None]
        return self.count_below(*np.broadcast_arrays(rows, cut))

    def average_precision(self, k: int | None = None, normaliser: str = "rk") -> np.ndarray:
        """AP@K of every query, (b,) float64.

        AP@K = (1/norm) sum_{r <= K} P@r rel_r with norm = R_K (relevant in the top K, "rk"),
        min(K, R) ("min_k_r") or R ("r"); 0 when no relevant item is in the top K. k=None
        means K = n_db, where all three normalisers give the textbook AP.
        """
        if normaliser not in NORMALISERS:
            raise ValueError(f"unknown normaliser {normaliser!r}")
        kk = self.n_db if k is None else min(int(k), self.n_db)
        ranks = np.arange(1, int(self.n_rel.max(initial=0)) + 1, dtype=np.float64)
        out = np.zeros(self.n_queries, dtype=np.float64)
        for i in range(self.n_queries):
            p = self.row(i)
            if kk < self.n_db:
                p = p[:np.searchsorted(p, kk)]
            if len(p) == 0:
                continue
            total = np.dot(ranks[:len(p)], 1.0 / (p + 1.0))
            norm = {"rk": len(p), "min_k_r": min(kk, len(self.row(i))),
                    "r": len(self.row(i))}[normaliser]
            out[i] = total / norm
        return out


class TieGroups:
    """Per-query runs of equal distance in rank order, with their relevant counts.

    group_row, group_size: (G,) int64, see the module doc; ranks: the block's relevant
    positions. Derived per group: ``start`` (items ranked before it, N_<d), ``rel_before``
    (R_<d) and ``rel`` (r_d).
    """

    def __init__(self, group_row: np.ndarray, group_size: np.ndarray, ranks: Ranks):
        n_db = ranks.n_db
        self.n_db = n_db
        self.n_queries = ranks.n_queries
        self.row = np.asarray(group_row, dtype=np.int64)
        self.size = np.asarray(group_size, dtype=np.int64)
        self.start = np.cumsum(self.size) - self.size - self.row * n_db
        self.rel_before = ranks.count_below(self.row, self.start)
        self.rel = ranks.count_below(self.row, self.start + self.size) - self.rel_before
        self.n_rel = ranks.n_rel

    def _per_query_ap(self, group_sums: np.ndarray, mask: np.ndarray) -> np.ndarray:
        total = np.bincount(self.row[mask], weights=group_sums.astype(np.float64),
                            minlength=self.n_queries)
        out = np.zeros(self.n_queries, dtype=np.float64)
        np.divide(total, self.n_rel, out=out, where=self.n_rel > 0)
        return out

    def average_precision(self, harmonic: np.ndarray) -> dict[str, np.ndarray]:
        """Expected, optimistic and pessimistic AP@all per query, each (b,) float64.

        harmonic: ``harmonic_table(n_db)``. Closed forms, per group with a = N_<d, n = n_d,
        r = r_d, R' = R_<d, c = (r - 1)/(n - 1) (0 when n = 1) and dH(x, y) = H(y) - H(x):
        expected    sum_{j=1..n} (r/n) [R' + 1 + (j - 1) c] / (a + j)
                    = (r/n) [(R' + 1 - c (a + 1)) dH(a, a + n) + c n]
        optimistic  (relevant first) sum_{j=1..r} (R' + j)/(a + j) = r - (a - R') dH(a, a + r)
        pessimistic (relevant last)  r - (a + n - r - R') dH(a + n - r, a + n)
        """
        m = self.rel > 0
        a, n, r, rb = self.start[m], self.size[m], self.rel[m], self.rel_before[m]
        a_l, n_l, r_l, rb_l = (x.astype(np.longdouble) for x in (a, n, r, rb))
        c = np.zeros(len(n), dtype=np.longdouble)
        many = n > 1
        c[many] = (r_l[many] - 1) / (n_l[many] - 1)
        expected = (r_l / n_l) * ((rb_l + 1 - c * (a_l + 1)) * (harmonic[a + n] - harmonic[a])
                                  + c * n_l)
        optimistic = r_l - (a_l - rb_l) * (harmonic[a + r] - harmonic[a])
        pessimistic = r_l - (a_l + n_l - r_l - rb_l) * (harmonic[a + n] - harmonic[a + n - r])
        return {"expected": self._per_query_ap(expected, m),
                "optimistic": self._per_query_ap(optimistic, m),
                "pessimistic": self._per_query_ap(pessimistic, m)}

    def expected_hits(self, cutoffs: np.ndarray) -> np.ndarray:
        """E[relevant items in the top c] under random order within ties, (b, C) float64.

        With d* the group that rank c cuts: R_<d* + (c - N_<d*) r_d* / n_d*. cutoffs in
        [1, n_db].
        """
        b = self.n_queries
        stride = self.n_db + 1
        end_keys = self.row * stride + self.start + self.size
        rows = np.arange(b, dtype=np.int64)[:, None]
        cut = np.asarray(cutoffs, dtype=np.int64)[None, :]
        g = np.searchsorted(end_keys, rows * stride + cut, side="left")
        return self.rel_before[g] + (cut - self.start[g]) * (self.rel[g] / self.size[g])


def radius_counts(level_hist: np.ndarray, ranks: Ranks) -> tuple[np.ndarray, np.ndarray]:
    """Items and relevant items within each Hamming radius.

    level_hist: (b, B + 1) int, items at distance d = 0..B. Returns (n_le, r_le), both
    (b, B + 1) int64: items with distance <= r and relevant ones among them. Because items
    come in ascending distance, the items within radius r are exactly the top n_le[r].
    """
    n_le = np.cumsum(level_hist, axis=1, dtype=np.int64)
    rows = np.broadcast_to(np.arange(len(n_le), dtype=np.int64)[:, None], n_le.shape)
    return n_le, ranks.count_below(rows, n_le)


def safe_ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den elementwise as float64, 0 where den == 0."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.zeros(np.broadcast(num, den).shape, dtype=np.float64)
    np.divide(num, den, out=out, where=den != 0)
    return out
