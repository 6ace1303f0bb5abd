"""Index-order retrieval metrics (MAP, precision, recall, PR curves) computed from rankings,
one block of queries at a time.

The evaluator reduces each query's ranking of the database to two compact descriptions,
and every metric here is computed from them without touching the full ranking again:

- **relevant positions**: for each query, the 0-based ranks of its relevant database items
  in the deterministic order (ascending distance, ties by database index). A block of
  ``b`` queries stores them flat, row after row, each row ascending: ``rel_pos`` (T,) int64
  with ``row_ptr`` (b + 1,) int64 so that row i is ``rel_pos[row_ptr[i]:row_ptr[i + 1]]``.
- **tie groups**: for each query, runs of items at equal distance in rank order, as flat
  ``group_row``, ``group_start`` (items ranked before the run, N_<d) and ``group_size`` (n_d),
  (G,) int64 each, sorted by (row, start). Every run of two or more items must be listed;
  single items may be (they are never ambiguous). Together with the relevant positions they
  give the per-distance counts n_d, r_d of SPEC section 4 for any distance.

The compiled Hamming kernel (:mod:`qbench.eval.kernels`) keeps no positions: :class:`LevelRanks`
answers the same questions from its per-level counts and its sums at the cut-offs the
metrics ask for, and every metric below runs unchanged on either.

Every metric here reads that deterministic order (ties by database index); the tie-aware
values (random order within tie groups) are computed from the same two descriptions in
:mod:`qbench.eval.ties`. Conventions (recorded in the metric card): a query with no
relevant item (in the top K) scores AP = 0 and recall = 0, and is counted in every mean.
Ranks and cut-offs are 1-based counts ("top c").
"""

from __future__ import annotations

import numpy as np

NORMALISERS = ("rk", "min_k_r", "r")
"""AP@K normalisers: relevant items in the top K | min(K, R) | R (all relevant items)."""

PR11_RECALL = tuple(i / 10 for i in range(11))
"""Recall levels of the 11-point interpolated precision."""


def pr_cutoffs(n_db: int, points: int = 64) -> np.ndarray:
    """Rank cut-offs of the precision-recall curve: ``points`` geometrically spaced ranks
    from 1 to n_db, rounded and deduplicated (dense at the low-recall end).

    Returns a strictly increasing int64 array starting at 1 and ending at n_db.
    """
    cut = np.rint(np.geomspace(1, n_db, points)).astype(np.int64)
    return np.unique(np.clip(cut, 1, n_db))


def top_r_cutoffs(n_db: int) -> np.ndarray:
    """The Precision@top-R cut-offs R = 100, 200, ..., 1000 that do not exceed n_db."""
    r = np.arange(100, 1001, 100, dtype=np.int64)
    return r[r <= n_db]


def safe_ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den elementwise as float64, 0 where den == 0."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.zeros(np.broadcast(num, den).shape, dtype=np.float64)
    np.divide(num, den, out=out, where=den != 0)
    return out


class _RankQueries:
    """What the metrics ask of a block's index-order ranking: ``n_db``, ``n_queries``,
    ``n_rel`` (b,), ``count_below``, ``terms_below``, ``total_terms`` and
    ``interpolated_precision``; the rest follows from those."""

    n_db: int
    n_queries: int
    n_rel: np.ndarray

    def count_below(self, rows: np.ndarray, cut: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def terms_below(self, rows: np.ndarray, cut: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def total_terms(self) -> np.ndarray:
        raise NotImplementedError

    def hits_at(self, cutoffs: np.ndarray) -> np.ndarray:
        """(b, C) int64: relevant items in the top c, per query and cut-off c in [0, n_db]."""
        cut = np.asarray(cutoffs, dtype=np.int64)[None, :]
        rows = np.arange(self.n_queries, dtype=np.int64)[:, None]
        return self.count_below(*np.broadcast_arrays(rows, cut))

    def normaliser(self, k: int, normaliser: str, hits_k: np.ndarray) -> np.ndarray:
        """(b,) the AP@K denominator: hits_k ("rk"), min(K, R) or R."""
        if normaliser not in NORMALISERS:
            raise ValueError(f"unknown normaliser {normaliser!r}")
        return {"rk": hits_k, "min_k_r": np.minimum(k, self.n_rel), "r": self.n_rel}[normaliser]

    def average_precision(self, k: int | None = None, normaliser: str = "rk") -> np.ndarray:
        """AP@K of every query, (b,) float64.

        AP@K = (1/norm) sum_{r <= K} P@r rel_r with norm = R_K (relevant in the top K, "rk"),
        min(K, R) ("min_k_r") or R ("r"); 0 when no relevant item is in the top K. k=None
        means K = n_db, where all three normalisers give the textbook AP.
        """
        kk = self.n_db if k is None else min(int(k), self.n_db)
        rows = np.arange(self.n_queries, dtype=np.int64)
        if kk >= self.n_db:
            hits, total = self.n_rel, self.total_terms()
        else:
            hits = self.count_below(rows, np.full(self.n_queries, kk))
            total = self.terms_below(rows, np.full(self.n_queries, kk))
        return safe_ratio(total, self.normaliser(kk, normaliser, hits))


class Ranks(_RankQueries):
    """The relevant positions of one block of queries (see the module doc).

    rel_pos: (T,) int64, row_ptr: (b + 1,) int64, n_db: database size. ``terms`` (T,) holds
    each relevant item's precision at its own rank, t / (p + 1) for the t-th relevant item
    of its row at 0-based rank p.
    """

    def __init__(self, rel_pos: np.ndarray, row_ptr: np.ndarray, n_db: int):
        self.rel_pos = np.asarray(rel_pos, dtype=np.int64)
        self.row_ptr = np.asarray(row_ptr, dtype=np.int64)
        self.n_db = int(n_db)
        self.n_queries = len(self.row_ptr) - 1
        self.n_rel = np.diff(self.row_ptr)
        rows_of = np.repeat(np.arange(self.n_queries, dtype=np.int64), self.n_rel)
        # row i's positions shifted by i * n_db: ascending over the whole block, so that
        # one searchsorted answers "how many in the top c" for any (row, c <= n_db)
        self._keys = rows_of * self.n_db + self.rel_pos
        rel_rank = np.arange(1, len(self.rel_pos) + 1, dtype=np.int64) - self.row_ptr[rows_of]
        self.terms = rel_rank / (self.rel_pos + 1.0)
        self._prefix = np.concatenate([[0.0], np.cumsum(self.terms)])

    def count_below(self, rows: np.ndarray, cut: np.ndarray) -> np.ndarray:
        """Relevant items in the top ``cut[j]`` of query ``rows[j]``.

        rows, cut: int arrays of one shape, cut in [0, n_db]. Returns int64 of that shape.
        """
        rows = np.asarray(rows, dtype=np.int64)
        target = rows * self.n_db + cut
        return np.searchsorted(self._keys, target, side="left") - self.row_ptr[rows]

    def terms_below(self, rows: np.ndarray, cut: np.ndarray) -> np.ndarray:
        """Sum of ``terms`` of query ``rows[j]``'s relevant items in its top ``cut[j]``."""
        rows = np.asarray(rows, dtype=np.int64)
        first = self.row_ptr[rows]
        return self._prefix[first + self.count_below(rows, cut)] - self._prefix[first]

    def total_terms(self) -> np.ndarray:
        """(b,) the sum of every query's ``terms``."""
        return self._prefix[self.row_ptr[1:]] - self._prefix[self.row_ptr[:-1]]

    def interpolated_precision(self) -> np.ndarray:
        """(b, 11) float64: the 11-point interpolated precision of every query.

        At recall level r in PR11_RECALL: the highest precision at any rank whose recall is
        >= r, read exactly from the whole ranking (the maximum is reached at a relevant
        rank: at the t-th relevant item, for t >= ceil(r R)). 0 for a query without
        relevant items.
        """
        levels = len(PR11_RECALL)
        out = np.zeros((self.n_queries, levels), dtype=np.float64)
        has = np.flatnonzero(self.n_rel > 0)
        if len(has) == 0:
            return out
        n_rel = self.n_rel[has][:, None]
        steps = np.arange(levels, dtype=np.int64)[None, :]
        first = np.maximum(1, -(-steps * n_rel // (levels - 1)))  # ceil(r R), at least 1
        starts = self.row_ptr[has][:, None] + first - 1
        ends = np.broadcast_to(self.row_ptr[has + 1][:, None], starts.shape)
        pairs = np.stack([starts, ends], axis=-1).ravel()
        # maximum over terms[start:end] for every (query, level): reduceat over start/end
        # pairs, the even results; the sentinel makes an end equal to T a valid index
        maxima = np.maximum.reduceat(np.append(self.terms, 0.0), pairs)[0::2]
        out[has] = maxima.reshape(starts.shape)
        return out


class _ListedRanks(_RankQueries):
    """A ranking kept only where the metrics ask: at listed cut-offs (``cuts`` (C,) with
    ``cut_hits`` and ``cut_terms`` (b, C)) and at listed boundaries (flat ascending keys
    row * (n_db + 1) + boundary, with the relevant count and term sum before each);
    ``count_below`` and ``terms_below`` at any other cut-off raise ValueError."""

    def _listed(self, cuts, cut_hits, cut_terms, bound_keys, bound_rel, bound_terms):
        self.cuts = np.asarray(cuts, dtype=np.int64)
        self.cut_hits = np.asarray(cut_hits, dtype=np.int64)
        self.cut_terms = np.asarray(cut_terms, dtype=np.float64)
        self._bounds = np.asarray(bound_keys, dtype=np.int64)
        self._bound_rel = np.asarray(bound_rel, dtype=np.int64)
        self._bound_terms = np.asarray(bound_terms, dtype=np.float64)

    def _lookup(self, rows, cut, at_bounds: np.ndarray, at_cuts: np.ndarray) -> np.ndarray:
        rows, cut = np.broadcast_arrays(np.asarray(rows, dtype=np.int64),
                                        np.asarray(cut, dtype=np.int64))
        out = np.empty(cut.shape, dtype=at_bounds.dtype)
        if len(self.cuts):
            j = np.minimum(np.searchsorted(self.cuts, cut), len(self.cuts) - 1)
            listed = self.cuts[j] == cut
            out[listed] = at_cuts[rows[listed], j[listed]]
            rest = ~listed
        else:
            rest = np.ones(cut.shape, dtype=bool)
        if rest.any():
            target = rows[rest] * (self.n_db + 1) + cut[rest]
            k = np.minimum(np.searchsorted(self._bounds, target), len(self._bounds) - 1)
            if len(self._bounds) == 0 or not np.array_equal(self._bounds[k], target):
                raise ValueError("cut-off neither at a listed boundary nor among the "
                                 "kernel's cut-offs")
            out[rest] = at_bounds[k]
        return out

    def count_below(self, rows: np.ndarray, cut: np.ndarray) -> np.ndarray:
        """Relevant items in the top ``cut[j]`` of query ``rows[j]`` (int64)."""
        return self._lookup(rows, cut, self._bound_rel, self.cut_hits)

    def terms_below(self, rows: np.ndarray, cut: np.ndarray) -> np.ndarray:
        """Sum of the precision terms of query ``rows[j]``'s relevant items in its top
        ``cut[j]``."""
        return self._lookup(rows, cut, self._bound_terms, self.cut_terms)

    def interpolated_precision(self) -> np.ndarray:
        """(b, 11) float64, as :meth:`Ranks.interpolated_precision` (computed by the kernel)."""
        return self.pr11


class LevelRanks(_ListedRanks):
    """A block's index-order ranking as the compiled Hamming kernel reduces it
    (:class:`qbench.eval.kernels.LevelRanking`): no positions, only what the metrics read.

    level_hist, level_rel (b, L) int64: items and relevant items per distance level;
    level_terms (b, L + 1) float64: sum of the precision terms of the relevant items ranked
    before each level boundary N_<d; cuts (C,) ascending, cut_hits (b, C), cut_terms (b, C):
    relevant items and their term sum in the top c; pr11 (b, 11). ``count_below`` and
    ``terms_below`` answer at the level boundaries (every tie group's ends, the Hamming
    radii) and at the kernel's cut-offs; any other cut-off raises ValueError.
    """

    def __init__(self, level_hist, level_rel, level_terms, cuts, cut_hits, cut_terms, pr11,
                 n_db: int):
        self.n_db = int(n_db)
        self.n_queries = len(level_hist)
        b, levels = np.shape(level_hist)
        self.n_rel = np.asarray(level_rel, dtype=np.int64).sum(axis=1)
        self.level_terms = np.asarray(level_terms, dtype=np.float64)
        self.pr11 = np.asarray(pr11, dtype=np.float64)
        # level boundaries N_<d (d = 0..L) and R_<d, flat and shifted by row * (n_db + 1):
        # ascending over the block, so one searchsorted finds any (row, boundary)
        cum = np.zeros((b, levels + 1), dtype=np.int64)
        np.cumsum(level_hist, axis=1, out=cum[:, 1:])
        rel_cum = np.zeros((b, levels + 1), dtype=np.int64)
        np.cumsum(level_rel, axis=1, out=rel_cum[:, 1:])
        keys = (np.arange(b, dtype=np.int64)[:, None] * (self.n_db + 1) + cum).ravel()
        self._listed(cuts, cut_hits, cut_terms, keys, rel_cum.ravel(), self.level_terms.ravel())

    def total_terms(self) -> np.ndarray:
        return self.level_terms[:, -1]


class BoundaryRanks(_ListedRanks):
    """A block's index-order ranking as the compiled float-distance kernel reduces it
    (:class:`qbench.eval.buckets.BucketRanking`): the metrics' cut-offs and both ends of
    every tie group that holds a relevant item, nothing else."""

    def __init__(self, r, n_db: int):
        self.n_db = int(n_db)
        self.n_queries = len(r.n_rel)
        self.n_rel = np.asarray(r.n_rel, dtype=np.int64)
        self.pr11 = np.asarray(r.pr11, dtype=np.float64)
        self._total = np.asarray(r.total_terms, dtype=np.float64)
        base = np.asarray(r.group_row, dtype=np.int64) * (self.n_db + 1)
        start = base + r.group_start
        # each group's start, then its end: ascending (groups are disjoint and sorted)
        keys = np.stack([start, start + r.group_size], axis=1).ravel()
        rel = np.stack([r.rel_start, r.rel_end], axis=1).ravel()
        terms = np.stack([r.terms_start, r.terms_end], axis=1).ravel()
        self._listed(r.cuts, r.cut_hits, r.cut_terms, keys, rel, terms)

    def total_terms(self) -> np.ndarray:
        return self._total


def radius_counts(level_hist: np.ndarray, ranks: Ranks) -> tuple[np.ndarray, np.ndarray]:
    """Items and relevant items within each Hamming radius.

    level_hist: (b, B + 1) int, items at distance d = 0..B. Returns (n_le, r_le), both
    (b, B + 1) int64: items with distance <= r and relevant ones among them. Because items
    come in ascending distance, the items within radius r are exactly the top n_le[r].
    """
    n_le = np.cumsum(level_hist, axis=1, dtype=np.int64)
    rows = np.broadcast_to(np.arange(len(n_le), dtype=np.int64)[:, None], n_le.shape)
    return n_le, ranks.count_below(rows, n_le)
