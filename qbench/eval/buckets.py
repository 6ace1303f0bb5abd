"""Compiled kernels (numba) for float distances: an exact ranking without a full sort.

The numpy path ranks a query by sorting all n keys (distance, index, relevance): O(n log n)
per query, although the metrics only read the positions of the R relevant items and the
runs of equal distance that hold one of them (:mod:`qbench.eval.ties` drops the rest). Per
query, in O(n + L) expected time with L = n / 2 buckets (``BUCKETS_PER_ITEM``):

1. distances: for PQ codes the ADC (or SDC) sum of the M lookup-table entries of every
   item, added in subspace order in float32 exactly as :class:`LookupTableDistances` adds
   them (the same bits); for additive codes the same sum of inner products, then
   ``max((|q|^2 + |x|^2) - 2 dot, 0)`` in float32 as :class:`AdditiveDistances` computes it;
   any other float distances (float embeddings) come in precomputed;
2. a monotone bucket of every distance, ``floor((d - lo) (L - 1) / (hi - lo))`` clamped
   into [0, L - 1], with lo and hi the range of a sample of the row (equal distances share
   a bucket, a smaller distance never lands in a later bucket), and the items and relevant
   items per bucket;
3. items ranked before each bucket (prefix sums); a relevant item alone in its bucket has
   its rank at once;
4. the items of every bucket that holds a relevant item and anything else, gathered in
   database-index order and sorted stably by distance (insertion sort; a stable merge sort
   for a large bucket, so the worst case is the full sort's O(n log n)): their ranks, ties
   broken by database index exactly like the full sort, and the runs of equal distance
   among them, which are complete (equal distances share a bucket);
5. from the relevant ranks: their precision terms t / (p + 1) and running sums, the relevant
   counts and term sums at the requested cut-offs and before and after every tie group,
   and the 11-point interpolated precision.

The result, :class:`BucketRanking`, is what :class:`qbench.eval.metrics.BoundaryRanks` reads:
the numpy path's figures for the same distances, kept at the cut-offs and at the ends of
every tie group that holds a relevant item (groups without one cannot change any metric).
-0.0 ranks as +0.0, NaN is refused. The kernels release the GIL (the evaluator runs query
blocks on threads) and are cached on disk (``cache=True``). Without numba,
:func:`qbench.eval.kernels.available` is False and the evaluator sorts with numpy.
"""

from __future__ import annotations

import numpy as np

from qbench.core.errors import QbenchError
from qbench.eval.kernels import N_PR11, cuts_and_pr11, numba
from qbench.eval.ranking import BucketRanking

INSERTION_MAX = 32
"""Buckets up to this many items are sorted by insertion, larger ones by a merge sort."""

MODE_GIVEN, MODE_PQ, MODE_ADDITIVE = 0, 1, 2

BUCKETS_PER_ITEM = 0.5
"""Buckets per database item (L = n_db * this): fewer buckets are cheaper to clear and scan
but hold more items to sort."""


if numba is not None:

    @numba.njit(cache=True, nogil=True)
    def _relevance(i, q_labels, db_labels, q_masks, db_masks, multi, rel):
        """rel[j] = 1 where database item j is relevant to query i; returns the count."""
        n = rel.shape[0]
        count = 0
        if multi:
            n_words = q_masks.shape[1]
            for j in range(n):
                r = 0
                for w in range(n_words):
                    if q_masks[i, w] & db_masks[j, w]:
                        r = 1
                        break
                rel[j] = r
                count += r
        else:
            ql = q_labels[i]
            for j in range(n):
                r = 1 if db_labels[j] == ql else 0
                rel[j] = r
                count += r
        return count

    @numba.njit(cache=True, nogil=True)
    def _distances(mode, i, dist, tables, codes_t, q_sq, db_sq, d):
        """Query i's distances into d (n,) float32: given (mode 0), the PQ table sum (1) or
        the additive formula (2), subspace by subspace (codes_t (M, n)) in the order the
        numpy path adds them."""
        n = d.shape[0]
        if mode == 0:
            for j in range(n):
                d[j] = dist[i, j]
            return
        table = tables[i]
        t0, c0 = table[0], codes_t[0]
        for j in range(n):
            d[j] = t0[c0[j]]
        for m in range(1, codes_t.shape[0]):
            tm, cm = table[m], codes_t[m]
            for j in range(n):
                d[j] += tm[cm[j]]
        if mode == 2:
            two, zero = np.float32(2), np.float32(0)
            qs = q_sq[i]
            for j in range(n):
                x = (qs + db_sq[j]) - two * d[j]
                d[j] = zero if x < zero else x  # NaN stays NaN (refused), as np.maximum

    @numba.njit(cache=True, nogil=True)
    def _sort_bucket(seg, d):
        """Sort the item indices ``seg`` (in index order) stably by d[seg]."""
        c = seg.shape[0]
        vals = np.empty(c, dtype=np.float32)
        for i in range(c):
            vals[i] = d[seg[i]]
        order = np.argsort(vals, kind="mergesort")
        tmp = seg.copy()
        for i in range(c):
            seg[i] = tmp[order[i]]

    @numba.njit(cache=True, nogil=True)
    def _rank_row(d, rel, count, relcount, start, fill, bk, members, pos, prefix, groups):
        """Rank one query's distances d (n,) float32 with relevance rel (n,) uint8: the
        relevant items' 0-based ranks ascending into ``pos``, the running sums of their
        precision terms into ``prefix`` (R + 1), and per tie group (a run of >= 2 equal
        distances holding a relevant item) one row of ``groups``: start, size, relevant
        items and term sum before it, and the same before its end. Returns (R, G), or
        (-1, 0) when d holds NaN. count, relcount, start, fill (L,), bk (n,) and members
        (n + 1,) are work space."""
        n = d.shape[0]
        n_buckets = count.shape[0]
        # the range from a sample: a bucket is clamped into [0, L - 1], which keeps the
        # map monotone whatever lies outside the sample's range
        step = max(1, n // 1024)
        lo, hi = d[0], d[0]
        for j in range(0, n, step):
            lo = min(lo, d[j])
            hi = max(hi, d[j])
        flo = np.float32(lo)
        scale = np.float32((n_buckets - 1) / (np.float64(hi) - np.float64(lo)) if hi > lo else 0)
        # clamped in integers: float32(L - 1) rounds up to L once L > 2^24
        top, zero, last = np.float32(n_buckets - 1), np.float32(0), np.int32(n_buckets - 1)
        bad = False
        for j in range(n):  # no branch, vectorised: the bucket of every item
            x = d[j]
            bad |= x != x
            f = (x - flo) * scale
            f = f if f >= zero else zero  # below the sample's range, or NaN (refused)
            f = f if f <= top else top
            b = np.int32(f)
            bk[j] = b if b <= last else last
        if bad:
            return -1, 0
        # per bucket, items (low 32 bits) and relevant items (high 32 bits): one counter
        count[:] = 0
        one, low = np.int64(1), np.int64(0xFFFFFFFF)
        for j in range(n):
            count[bk[j]] += one + (np.int64(rel[j]) << 32)
        acc = 0
        for k in range(n_buckets):
            v = count[k]
            c = v & low
            start[k] = acc
            relcount[k] = v >> 32
            count[k] = c
            # a bucket holding a relevant item and another one gathers its items at its
            # place in the ranking; every other bucket writes to one spare slot, members[n]
            fill[k] = acc if c > 1 and v > low else n
            acc += c
        for j in range(n):  # no branch: the spare slot absorbs the other buckets' items
            k = bk[j]
            f = fill[k]
            members[f] = j
            fill[k] = f + (f < n)
        t, g = 0, 0
        s = 0.0
        prefix[0] = 0.0
        for k in range(n_buckets):
            if relcount[k] == 0:
                continue
            c = count[k]
            p0 = start[k]
            if c == 1:
                pos[t] = p0
                t += 1
                s += t / (p0 + 1.0)
                prefix[t] = s
                continue
            seg = members[p0:p0 + c]
            if c > INSERTION_MAX:
                _sort_bucket(seg, d)
            else:  # insertion sort, stable
                for i in range(1, c):
                    j = seg[i]
                    x = d[j]
                    q = i - 1
                    while q >= 0 and d[seg[q]] > x:
                        seg[q + 1] = seg[q]
                        q -= 1
                    seg[q + 1] = j
            run_begin, run_t, run_s = 0, t, s
            for i in range(c + 1):
                if i == c or (i > 0 and d[seg[i]] != d[seg[i - 1]]):
                    if i - run_begin > 1 and t > run_t:
                        groups[g, 0] = p0 + run_begin
                        groups[g, 1] = i - run_begin
                        groups[g, 2] = run_t
                        groups[g, 3] = t
                        groups[g, 4] = run_s
                        groups[g, 5] = s
                        g += 1
                    if i == c:
                        break
                    run_begin, run_t, run_s = i, t, s
                if rel[seg[i]]:
                    pos[t] = p0 + i
                    t += 1
                    s += t / (p0 + i + 1.0)
                    prefix[t] = s
        return t, g

    @numba.njit(cache=True, nogil=True)
    def _rank_block(mode, dist, tables, codes, q_sq, db_sq, q_labels, db_labels, q_masks,
                    db_masks, multi, n_buckets, cuts, n_rel, total, cut_hits, cut_terms, pr11):
        """Rank b queries and reduce each to what the metrics read: n_rel (b,), cut_hits and
        cut_terms (b, C) at the ascending cut-offs, total (b,) the sum of all precision
        terms, pr11 (b, 11). Returns (groups (G, 6)
        float64: start, size, relevant and terms before, at the end; group_row (G,)), or
        group_row [-1] when a distance is NaN.

        mode 0: dist (b, n) float32 given; 1: PQ tables (b, M, K) float32 with codes (M, n);
        2: additive inner-product tables with codes, q_sq (b,) and db_sq (n,) float32."""
        b = tables.shape[0] if mode != 0 else dist.shape[0]
        n = codes.shape[1] if mode != 0 else dist.shape[1]
        rel = np.empty(n, dtype=np.uint8)
        d = np.empty(n, dtype=np.float32)
        count = np.empty(n_buckets, dtype=np.int64)
        relcount = np.empty(n_buckets, dtype=np.int32)
        start = np.empty(n_buckets, dtype=np.int32)
        fill = np.empty(n_buckets, dtype=np.int32)
        bk = np.empty(n, dtype=np.int32)
        members = np.empty(n + 1, dtype=np.int32)
        pos = np.empty(n, dtype=np.int64)
        prefix = np.empty(n + 1, dtype=np.float64)
        row_groups = np.empty((n // 2 + 1, 6), dtype=np.float64)
        out = np.empty((max(16, 4 * b), 6), dtype=np.float64)
        out_row = np.empty(out.shape[0], dtype=np.int64)
        n_groups = 0
        for i in range(b):
            r = _relevance(i, q_labels, db_labels, q_masks, db_masks, multi, rel)
            _distances(mode, i, dist, tables, codes, q_sq, db_sq, d)
            t, g = _rank_row(d, rel, count, relcount, start, fill, bk, members, pos, prefix,
                             row_groups)
            if t < 0:
                out_row[0] = -1
                return out[:1], out_row[:1]
            n_rel[i] = r
            if n_groups + g > out.shape[0]:
                size = max(2 * out.shape[0], n_groups + g)
                grown = np.empty((size, 6), dtype=np.float64)
                grown[:n_groups] = out[:n_groups]
                grown_row = np.empty(size, dtype=np.int64)
                grown_row[:n_groups] = out_row[:n_groups]
                out, out_row = grown, grown_row
            out[n_groups:n_groups + g] = row_groups[:g]
            out_row[n_groups:n_groups + g] = i
            n_groups += g
            total[i] = prefix[t]
            # the 11-point precision's suffix maxima go into prefix's place
            cuts_and_pr11(pos, prefix, t, cuts, cut_hits[i], cut_terms[i], pr11[i], prefix)
        return out[:n_groups], out_row[:n_groups]


def rank_block(labels: dict, cuts: np.ndarray, *, dist: np.ndarray | None = None,
               tables: np.ndarray | None = None, codes: np.ndarray | None = None,
               q_sq: np.ndarray | None = None, db_sq: np.ndarray | None = None) -> BucketRanking:
    """Rank one block of queries exactly (ties by database index) without a full sort.

    labels: :meth:`qbench.eval.relevance.Labels.kernel_args` sliced to the block; cuts:
    ascending int64 cut-offs in [0, n] the metrics will ask for. Either ``dist`` (b, n)
    float32 distances, or ``tables`` (b, M, K) float32 with ``codes`` (M, n) integer codes:
    PQ lookup tables (ADC / SDC), or with ``q_sq`` (b,) and ``db_sq`` (n,) additive codes'
    inner-product tables.
    """
    none_f = np.zeros((0, 0, 0), dtype=np.float32)
    if dist is not None:
        mode, dist = MODE_GIVEN, np.ascontiguousarray(dist, dtype=np.float32)
        tables, codes = none_f, np.zeros((1, 0), dtype=np.uint8)
        n = dist.shape[1]
    else:
        mode = MODE_PQ if q_sq is None else MODE_ADDITIVE
        tables = np.ascontiguousarray(tables, dtype=np.float32)
        codes = np.ascontiguousarray(codes)
        dist = np.zeros((0, 0), dtype=np.float32)
        n = codes.shape[1]
    zeros = np.zeros(0, dtype=np.float32)
    q_sq = zeros if q_sq is None else np.ascontiguousarray(q_sq, dtype=np.float32)
    db_sq = zeros if db_sq is None else np.ascontiguousarray(db_sq, dtype=np.float32)
    multi = "q_masks" in labels
    none_i, none_m = np.zeros(0, dtype=np.int64), np.zeros((0, 1), dtype=np.uint64)
    if multi:
        b = len(labels["q_masks"])
        args = (np.zeros(b, np.int64), none_i, labels["q_masks"], labels["db_masks"])
    else:
        b = len(labels["q_labels"])
        args = (labels["q_labels"], labels["db_labels"], np.zeros((b, 1), np.uint64), none_m)
    args = tuple(np.ascontiguousarray(a) for a in args)
    cuts = np.ascontiguousarray(cuts, dtype=np.int64)
    out = (np.empty(b, np.int64), np.empty(b, np.float64), np.empty((b, len(cuts)), np.int64),
           np.empty((b, len(cuts)), np.float64), np.empty((b, N_PR11), np.float64))
    groups, rows = _rank_block(mode, dist, tables, codes, q_sq, db_sq, *args, multi,
                               max(1, int(n * BUCKETS_PER_ITEM)), cuts, *out)
    if len(rows) and rows[0] < 0:
        raise QbenchError("distances contain NaN (check the embeddings or codebooks)")
    n_rel, total, cut_hits, cut_terms, pr11 = out
    ints = groups[:, :4].astype(np.int64)
    return BucketRanking(n_rel, total, cuts, cut_hits, cut_terms, pr11, rows, ints[:, 0],
                         ints[:, 1], ints[:, 2], ints[:, 3], groups[:, 4].copy(),
                         groups[:, 5].copy())
