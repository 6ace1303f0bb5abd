"""Compiled kernels (numba) for integer distances: Hamming ranking without a sort.

For Hamming distances the evaluator needs no comparison sort (SPEC section 4). Per query,
in O(N + B + R + C) with N items, B + 1 distance levels, R relevant items and C cut-offs:

1. pass 1: each item's distance (XOR and popcount of packed 64-bit words) and relevance
   (same class, or a shared label through 64-bit label masks), kept as a uint16 code
   ``2 d + rel``, and the histograms n_d (items at distance d) and r_d (relevant ones);
2. prefix sums N_<d, R_<d;
3. pass 2, items in database-index order with a counter per level: the relevant item that
   is the s-th relevant and the t-th item of level d has 0-based rank p = N_<d + t and
   goes to slot R_<d + s, so the relevant positions come out sorted ascending;
4. from the sorted positions: the precision terms t / (p + 1), their sums at every level
   boundary and at the requested cut-offs, the relevant counts at the cut-offs and the
   11-point interpolated precision.

The result, :class:`LevelRanking`, is what :class:`qbench.eval.metrics.LevelRanks` reads: every
index-order quantity at the level boundaries and cut-offs the metrics ask for, from which
the tie-aware values follow as on the numpy path. The kernels release the GIL (the
evaluator runs query blocks on threads) and are cached on disk (``cache=True``): they are
compiled once per machine. Without numba, :func:`available` is False and the evaluator
uses the numpy path of :mod:`qbench.eval.ranking`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

try:  # numba is optional at import time: without it the numpy path runs
    import numba
    from numba import types
    from numba.extending import intrinsic
except ImportError:  # pragma: no cover - exercised only where numba is missing
    numba = None

MAX_LEVELS = 2**16
"""Distance levels the 16-bit level field of a record holds (B + 1 <= 65536)."""

N_PR11 = 11


def available() -> bool:
    """Whether the compiled kernels can run (numba importable)."""
    return numba is not None


@dataclass
class LevelRanking:
    """One block of b queries reduced by the kernel.

    level_hist, level_rel: (b, L) int64, items and relevant items per distance level;
    level_terms: (b, L + 1) float64, sum of the precision terms t / (p + 1) of the relevant
    items ranked before each level boundary N_<d (index order); cuts: (C,) int64 ascending
    cut-offs in [0, n_db]; cut_hits (b, C) int64 and cut_terms (b, C) float64: relevant
    items and their term sum in the top c; pr11 (b, 11) float64.
    """

    level_hist: np.ndarray
    level_rel: np.ndarray
    level_terms: np.ndarray
    cuts: np.ndarray
    cut_hits: np.ndarray
    cut_terms: np.ndarray
    pr11: np.ndarray


if numba is not None:

    @numba.njit(cache=True, nogil=True)
    def cuts_and_pr11(pos, prefix, n_rel, cuts, hits, terms, pr11, work):
        """From the ascending ranks pos[:R] of a query's R relevant items and the prefix
        sums of their precision terms (R + 1): the relevant items and term sums ranked
        before each ascending cut-off (hits, terms), and the 11-point interpolated
        precision, the largest term over relevant ranks >= ceil(r R) (pr11). work: (>= R,)
        float64 scratch space; it may be ``prefix`` itself, which is read first."""
        t = 0
        for k in range(cuts.shape[0]):  # merged walk
            while t < n_rel and pos[t] < cuts[k]:
                t += 1
            hits[k] = t
            terms[k] = prefix[t]
        m = 0.0
        for t in range(n_rel - 1, -1, -1):  # suffix maxima of the terms
            m = max(m, (t + 1.0) / (pos[t] + 1.0))
            work[t] = m
        for level in range(N_PR11):
            first = max(1, -(-level * n_rel // (N_PR11 - 1)))
            pr11[level] = work[first - 1] if n_rel > 0 else 0.0

    @intrinsic
    def _popcount64(typingctx, x):
        """Bit count of a uint64 (LLVM ctpop: one instruction where the CPU has it)."""
        if not isinstance(x, types.Integer):
            return None

        def codegen(context, builder, signature, args):
            return builder.ctpop(args[0])

        return types.uint64(types.uint64), codegen

    @numba.njit(cache=True, nogil=True)
    def _hamming_block(q_words, db_words, q_labels, db_labels, q_masks, db_masks, multi,
                       levels, cuts, level_hist, level_rel, level_terms, cut_hits, cut_terms,
                       pr11):
        """Fill the output arrays (b rows) for queries q_words (b, W) against db_words
        (n, W), both uint64. Relevance: q_labels[i] == db_labels[j] (int64), or with
        ``multi`` any(q_masks[i] & db_masks[j]) (uint64 words)."""
        b, n_words = q_words.shape
        n = db_words.shape[0]
        n_label_words = q_masks.shape[1]
        record = np.empty(n + 1, dtype=np.int64)
        pos = np.empty(n, dtype=np.int64)
        prefix = np.empty(n + 1, dtype=np.float64)
        best = np.empty(n + 1, dtype=np.float64)
        before = np.empty(levels, dtype=np.int64)
        slot = np.empty(levels, dtype=np.int64)
        for i in range(b):
            hist = level_hist[i]
            hist[:] = 0
            # pass 1, database-index order: the distance d of every item and its rank k
            # among the items of level d so far; a relevant item leaves the record
            # (k << 16) | d (written for every item, kept only when relevant: no branch)
            n_rel = 0
            if n_words == 1 and not multi:
                qw = q_words[i, 0]
                ql = q_labels[i]
                for j in range(n):
                    d = np.int64(_popcount64(qw ^ db_words[j, 0]))
                    k = hist[d]
                    hist[d] = k + 1
                    record[n_rel] = (k << 16) | d
                    n_rel += np.int64(db_labels[j] == ql)
            else:
                for j in range(n):
                    d = np.int64(0)
                    for w in range(n_words):
                        d += np.int64(_popcount64(q_words[i, w] ^ db_words[j, w]))
                    r = np.int64(0)
                    if multi:
                        for w in range(n_label_words):
                            if q_masks[i, w] & db_masks[j, w]:
                                r = 1
                                break
                    else:
                        r = np.int64(db_labels[j] == q_labels[i])
                    k = hist[d]
                    hist[d] = k + 1
                    record[n_rel] = (k << 16) | d
                    n_rel += r
            # r_d, then the prefix sums N_<d (before) and R_<d (slot)
            rhist = level_rel[i]
            rhist[:] = 0
            for t in range(n_rel):
                rhist[record[t] & 0xFFFF] += 1
            acc, racc = 0, 0
            for d in range(levels):
                before[d] = acc
                slot[d] = racc
                acc += hist[d]
                racc += rhist[d]
            # relevant items in index order: within a level their ranks ascend, so the
            # next free slot of the level is theirs and the positions come out sorted
            for t in range(n_rel):
                x = record[t]
                d = x & 0xFFFF
                pos[slot[d]] = before[d] + (x >> 16)
                slot[d] += 1
            # precision terms and their prefix sums
            prefix[0] = 0.0
            s = 0.0
            for t in range(n_rel):
                s += (t + 1.0) / (pos[t] + 1.0)
                prefix[t + 1] = s
            terms = level_terms[i]
            racc = 0
            for d in range(levels):
                terms[d] = prefix[racc]
                racc += rhist[d]
            terms[levels] = prefix[n_rel]
            cuts_and_pr11(pos, prefix, n_rel, cuts, cut_hits[i], cut_terms[i], pr11[i], best)


def pack_words(bits: np.ndarray) -> np.ndarray:
    """(n, B) {0,1} -> (n, ceil(B / 64)) uint64, zero-padded (Hamming distances unchanged)."""
    packed = np.packbits(np.asarray(bits, dtype=np.uint8), axis=1)
    width = 8 * max(1, -(-packed.shape[1] // 8))
    out = np.zeros((len(packed), width), dtype=np.uint8)
    out[:, :packed.shape[1]] = packed
    return out.view(np.uint64)


def label_masks(multi_hot: np.ndarray) -> np.ndarray:
    """(n, C) {0,1} -> (n, ceil(C / 64)) uint64 label masks (shared label: a & b != 0)."""
    return pack_words(multi_hot)


def hamming_block(q_words: np.ndarray, db_words: np.ndarray, levels: int, cuts: np.ndarray,
                  q_labels: np.ndarray | None = None, db_labels: np.ndarray | None = None,
                  q_masks: np.ndarray | None = None,
                  db_masks: np.ndarray | None = None) -> LevelRanking:
    """Rank one block of queries by Hamming distance (ties by database index).

    q_words (b, W), db_words (n, W): uint64 packed codes (:func:`pack_words`); levels: B + 1;
    cuts: ascending int64 cut-offs in [0, n]. Relevance from class ids q_labels (b,),
    db_labels (n,) (int64), or from label masks q_masks (b, V), db_masks (n, V) (uint64).
    """
    if numba is None:  # pragma: no cover
        raise RuntimeError("numba is not installed")
    if levels > MAX_LEVELS:
        raise ValueError(f"at most {MAX_LEVELS - 1} bits, got {levels - 1}")
    b = len(q_words)
    multi = q_masks is not None
    none_i = np.zeros(0, dtype=np.int64)
    none_m = np.zeros((0, 1), dtype=np.uint64)
    if multi:
        q_labels, db_labels = np.zeros(b, dtype=np.int64), none_i
    else:
        q_masks, db_masks = np.zeros((b, 1), dtype=np.uint64), none_m
    cuts = np.ascontiguousarray(cuts, dtype=np.int64)
    out = LevelRanking(np.empty((b, levels), np.int64), np.empty((b, levels), np.int64),
                       np.empty((b, levels + 1), np.float64), cuts,
                       np.empty((b, len(cuts)), np.int64), np.empty((b, len(cuts)), np.float64),
                       np.empty((b, N_PR11), np.float64))
    _hamming_block(np.ascontiguousarray(q_words, dtype=np.uint64),
                   np.ascontiguousarray(db_words, dtype=np.uint64),
                   np.ascontiguousarray(q_labels, dtype=np.int64),
                   np.ascontiguousarray(db_labels, dtype=np.int64),
                   np.ascontiguousarray(q_masks, dtype=np.uint64),
                   np.ascontiguousarray(db_masks, dtype=np.uint64), multi, levels, cuts,
                   out.level_hist, out.level_rel, out.level_terms, out.cut_hits,
                   out.cut_terms, out.pr11)
    return out


def warm_up() -> None:
    """Compile (or load from the on-disk cache) the kernels on a tiny input."""
    if numba is None:
        return
    words = np.zeros((1, 1), dtype=np.uint64)
    cuts = np.array([0, 1], dtype=np.int64)
    hamming_block(words, words, 65, cuts, np.zeros(1, np.int64), np.zeros(1, np.int64))
    hamming_block(words, words, 65, cuts, q_masks=np.ones((1, 1), np.uint64),
                  db_masks=np.ones((1, 1), np.uint64))
