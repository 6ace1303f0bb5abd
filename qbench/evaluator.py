"""The one evaluator: rank the database for every query, then score the rankings.

Input is a codes object from :mod:`qbench.codes` (the evaluator never knows which method made
it) and the query / database labels. Distances (SPEC section 4):

- :class:`~qbench.codes.BinaryCodes`: Hamming distance, exact integers (``"hamming"``).
- :class:`~qbench.codes.PQCodes`: ADC, the squared L2 distance from the unquantized query to
  each database reconstruction through per-query lookup tables (``"adc-l2sq"``); with
  ``sdc=True`` the query is quantized too (``"sdc-l2sq"``).
- :class:`~qbench.codes.FloatCodes`: squared L2 (same order as L2, ``"l2"``) or cosine
  distance 1 - cos (``"cosine"``).

Ordering is ascending distance, equal distances broken by database index. Queries are
processed in blocks (about 256 MB of working memory each, never a full n_query x n_db float64
matrix); each block is reduced at once to the ranks of its relevant items (and, for integer
distances, its per-distance histograms), from which :mod:`qbench.metrics` computes every
metric. Blocks run on a few threads (numpy releases the GIL in the heavy operations).
With ``device="cuda"`` distances, sorting and histograms run in torch on the GPU.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from qbench import metrics as M
from qbench.codes import BinaryCodes, FloatCodes, PQCodes
from qbench.errors import QbenchError
from qbench.labels import as_labels

BLOCK_BYTES = 256 * 2**20
"""Working-memory target of one block of queries, in bytes."""

MAX_WORKERS = 4
MAX_BLOCK_QUERIES = 64
HAMMING_RADIUS = 2


@dataclass
class Evaluation:
    """Everything the evaluator reports for one set of codes.

    metrics: JSON-ready floats/ints (see :func:`evaluate`); curves: JSON-ready lists;
    metric_card: the conventions behind the numbers; timings: seconds (``search_s``,
    ``eval_s``) and ``queries_per_s``; per_query_ap: (n_query,) float64, the AP behind
    ``map_all`` (for significance tests).
    """

    metrics: dict
    curves: dict
    metric_card: dict
    timings: dict
    per_query_ap: np.ndarray = field(repr=False)


# ----------------------------------------------------------------------------- labels


def _as_labels(labels, name: str) -> np.ndarray:
    """Validate labels: (n,) integer class ids -> int64, or (n, C) multi-hot {0,1} -> bool."""
    a = as_labels(labels, name)
    return a.astype(bool) if a.ndim == 2 else a


class _Labels:
    """Query and database labels prepared once for blockwise relevance."""

    def __init__(self, query_labels, db_labels):
        q = _as_labels(query_labels, "query_labels")
        d = _as_labels(db_labels, "db_labels")
        if q.ndim != d.ndim or (q.ndim == 2 and q.shape[1] != d.shape[1]):
            raise QbenchError(f"query_labels shape {q.shape} and db_labels shape {d.shape} "
                              "are not the same kind of labels")
        self.multi = q.ndim == 2
        self.n_query, self.n_db = len(q), len(d)
        if self.multi:
            self.query = q.astype(np.float32)
            self.db_t = np.ascontiguousarray(d.T, dtype=np.float32)  # (C, n_db)
        else:
            self.query, self.db = q, d
        self._torch = None

    def block(self, start: int, stop: int) -> np.ndarray:
        """(stop - start, n_db) bool: query i shares at least one label with item j."""
        if self.multi:
            return (self.query[start:stop] @ self.db_t) > 0.5
        return self.query[start:stop, None] == self.db[None, :]

    def block_torch(self, start: int, stop: int, device):
        import torch

        if self._torch is None:
            if self.multi:
                self._torch = (torch.from_numpy(self.query).to(device),
                               torch.from_numpy(self.db_t).to(device))
            else:
                self._torch = (torch.from_numpy(self.query).to(device),
                               torch.from_numpy(self.db).to(device))
        q, d = self._torch
        if self.multi:
            return (q[start:stop] @ d) > 0.5
        return q[start:stop, None] == d[None, :]


def relevance(query_labels_block, db_labels) -> np.ndarray:
    """Relevance of every database item to every query of a block.

    query_labels_block: (b,) integer class ids or (b, C) multi-hot {0,1}; db_labels: (n_db,)
    or (n_db, C) of the same kind. Returns (b, n_db) bool: True where the query and the item
    share at least one label (single-label: the same class).
    """
    return _Labels(query_labels_block, db_labels).block(0, len(np.asarray(query_labels_block)))


# ----------------------------------------------------------------------------- distances


def _popcount16_torch(x):
    """Bit count of every element of an int32 tensor holding 16-bit values."""
    x = x - ((x >> 1) & 0x5555)
    x = (x & 0x3333) + ((x >> 2) & 0x3333)
    x = (x + (x >> 4)) & 0x0F0F
    return (x + (x >> 8)) & 0x1F


class _Hamming:
    """Hamming distances between {0,1} codes, exact integers in [0, B]."""

    name = "hamming"
    tied = True  # integer distances: tie-aware metrics apply

    def __init__(self, codes: BinaryCodes):
        q, d = np.asarray(codes.query_bits), np.asarray(codes.db_bits)
        self.bits = d.shape[1]
        self.levels = self.bits + 1
        self.out_dtype = np.uint8 if self.bits <= 255 else np.uint16
        nbytes = max(1, -(-self.bits // 8))
        width = {1: 1, 2: 2, 3: 4, 4: 4}.get(nbytes, 8 * -(-nbytes // 8))
        self.word = {1: np.uint8, 2: np.uint16, 4: np.uint32}.get(width, np.uint64)
        self.query_words = self._pack(q, width)  # (n_query, W)
        self.db_words = np.ascontiguousarray(self._pack(d, width).T)  # (W, n_db)
        self.bytes_per_pair = 3 + np.dtype(self.word).itemsize
        self._query_bits = np.ascontiguousarray(q)
        self._db_bits = np.ascontiguousarray(d)
        self._torch = None

    def _pack(self, bits: np.ndarray, width: int) -> np.ndarray:
        packed = np.packbits(bits.astype(np.uint8), axis=1)
        padded = np.zeros((len(bits), width), dtype=np.uint8)
        padded[:, :packed.shape[1]] = packed
        return padded.view(self.word)

    def numpy(self, start: int, stop: int) -> np.ndarray:
        """(stop - start, n_db) uint8 (uint16 when B > 255) Hamming distances."""
        q = self.query_words[start:stop]
        n_words, n_db = self.db_words.shape
        out = np.zeros((len(q), n_db), dtype=self.out_dtype)
        xor = np.empty((len(q), n_db), dtype=self.word)
        count = np.empty((len(q), n_db), dtype=np.uint8) if n_words > 1 else out
        for w in range(n_words):
            np.bitwise_xor(q[:, w, None], self.db_words[w][None, :], out=xor)
            np.bitwise_count(xor, out=count)
            if n_words > 1:
                out += count
        return out

    def torch(self, start: int, stop: int, device):
        import torch

        if self._torch is None:
            def words16(bits):
                b = torch.from_numpy(bits.astype(np.int32))
                pad = (-b.shape[1]) % 16
                b = torch.nn.functional.pad(b, (0, pad)).view(b.shape[0], -1, 16)
                return (b << torch.arange(16, dtype=torch.int32)).sum(-1, dtype=torch.int32)

            self._torch = (words16(self._query_bits).to(device),
                           words16(self._db_bits).to(device))
        q, d = self._torch
        return _popcount16_torch(q[start:stop, None, :] ^ d[None, :, :]).sum(-1)


class _LookupTables:
    """PQ distances through per-query lookup tables: ADC, or SDC with ``symmetric``.

    Tables are (b, M, K) float32; the distance to item j is sum_m table[:, m, code[j, m]],
    added in subspace order.
    """

    def __init__(self, codes: PQCodes, symmetric: bool):
        self.symmetric = symmetric
        self.tied = symmetric  # SDC distances take few distinct values
        self.name = "sdc-l2sq" if symmetric else "adc-l2sq"
        self.codebooks = np.ascontiguousarray(codes.codebooks, dtype=np.float32)  # (M, K, ds)
        self.m, self.k, self.dsub = self.codebooks.shape
        self.query = np.ascontiguousarray(codes.query, dtype=np.float32)
        self.codes_t = np.ascontiguousarray(np.asarray(codes.db_codes).T, dtype=np.intp)
        self.bytes_per_pair = 24
        if symmetric:
            diff = self.codebooks[:, :, None, :] - self.codebooks[:, None, :, :]
            self.codeword_dist = (diff * diff).sum(-1)  # (M, K, K)
        self._torch = None

    def tables(self, start: int, stop: int) -> np.ndarray:
        """(b, M, K) float32 squared distances of query subvectors to every codeword."""
        q = self.query[start:stop].reshape(-1, self.m, 1, self.dsub)
        diff = q - self.codebooks[None]
        lut = (diff * diff).sum(-1)
        if not self.symmetric:
            return lut
        nearest = lut.argmin(axis=2)  # (b, M): the query's own codes
        return self.codeword_dist[np.arange(self.m)[None, :], nearest]

    def numpy(self, start: int, stop: int) -> np.ndarray:
        """(b, n_db) float32 distances."""
        lut = self.tables(start, stop)
        out = np.take(lut[:, 0, :], self.codes_t[0], axis=1)
        part = np.empty_like(out)
        for m in range(1, self.m):
            np.take(lut[:, m, :], self.codes_t[m], axis=1, out=part)
            out += part
        return out

    def torch(self, start: int, stop: int, device):
        import torch

        if self._torch is None:
            self._torch = torch.from_numpy(self.codes_t.astype(np.int64)).to(device)
        lut = torch.from_numpy(self.tables(start, stop)).to(device)
        out = lut[:, 0, :][:, self._torch[0]]
        for m in range(1, self.m):
            out += lut[:, m, :][:, self._torch[m]]
        return out


class _Embedding:
    """Float embeddings: squared L2 (clipped at 0) or cosine distance 1 - cos, float32."""

    tied = False
    bytes_per_pair = 28

    def __init__(self, codes: FloatCodes):
        if codes.metric not in ("l2", "cosine"):
            raise QbenchError(f"unknown float metric {codes.metric!r}; allowed: cosine, l2")
        self.name = codes.metric
        q = np.asarray(codes.query, dtype=np.float32)
        d = np.asarray(codes.db, dtype=np.float32)
        if codes.metric == "cosine":
            q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-30)
            d = d / np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-30)
        self.query, self.db = np.ascontiguousarray(q), np.ascontiguousarray(d)
        self.query_sq = (self.query * self.query).sum(1)
        self.db_sq = (self.db * self.db).sum(1)
        self._torch = None

    def numpy(self, start: int, stop: int) -> np.ndarray:
        dot = self.query[start:stop] @ self.db.T
        if self.name == "cosine":
            return np.float32(1) - dot
        dist = (self.query_sq[start:stop, None] + self.db_sq[None, :]) - 2 * dot
        return np.maximum(dist, 0, out=dist)

    def torch(self, start: int, stop: int, device):
        import torch

        if self._torch is None:
            self._torch = tuple(torch.from_numpy(a).to(device) for a in
                                (self.query, self.db, self.query_sq, self.db_sq))
        q, d, qs, ds = self._torch
        dot = q[start:stop] @ d.T
        if self.name == "cosine":
            return 1 - dot
        return ((qs[start:stop, None] + ds[None, :]) - 2 * dot).clamp_min_(0)


def _check_codes(codes, sdc: bool) -> tuple[int, int]:
    """Validate a codes object at the boundary; return (n_query, n_db)."""
    if isinstance(codes, BinaryCodes):
        q, d = np.asarray(codes.query_bits), np.asarray(codes.db_bits)
        names = ("query_bits", "db_bits")
    elif isinstance(codes, PQCodes):
        q, d = np.asarray(codes.query), np.asarray(codes.db_codes)
        names = ("query", "db_codes")
    elif isinstance(codes, FloatCodes):
        q, d = np.asarray(codes.query), np.asarray(codes.db)
        names = ("query", "db")
    else:
        raise QbenchError(f"cannot evaluate {type(codes).__name__}; expected FloatCodes, "
                          "PQCodes or BinaryCodes")
    for a, name in zip((q, d), names):
        if a.ndim != 2 or a.shape[0] == 0 or a.shape[1] == 0:
            raise QbenchError(f"codes.{name}: expected a non-empty 2-D array, got shape {a.shape}")
    if sdc and not isinstance(codes, PQCodes):
        raise QbenchError("sdc=True needs PQCodes")
    if isinstance(codes, BinaryCodes):
        if q.shape[1] != d.shape[1]:
            raise QbenchError(f"codes: query_bits have {q.shape[1]} bits, db_bits {d.shape[1]}")
        for a, name in zip((q, d), names):
            if not np.all((a == 0) | (a == 1)):
                raise QbenchError(f"codes.{name}: bits must be 0 or 1")
    elif isinstance(codes, PQCodes):
        cb = np.asarray(codes.codebooks)
        if cb.ndim != 3 or cb.shape[0] != d.shape[1] or cb.shape[0] * cb.shape[2] != q.shape[1]:
            raise QbenchError(f"codes.codebooks: expected shape (M={d.shape[1]}, K, "
                              f"D/M) with D={q.shape[1]}, got {cb.shape}")
        if d.dtype.kind not in "iu" or d.min() < 0 or d.max() >= cb.shape[1]:
            raise QbenchError(f"codes.db_codes: expected integers in [0, {cb.shape[1]})")
    elif q.shape[1] != d.shape[1]:
        raise QbenchError(f"codes: query has dimension {q.shape[1]}, db {d.shape[1]}")
    if not isinstance(codes, BinaryCodes) and not np.all(np.isfinite(q)):
        raise QbenchError("codes.query: contains NaN or infinite values")
    return q.shape[0], d.shape[0]


def _make_search(codes, sdc: bool):
    if isinstance(codes, BinaryCodes):
        return _Hamming(codes)
    if isinstance(codes, PQCodes):
        return _LookupTables(codes, symmetric=sdc)
    return _Embedding(codes)


def distances(codes, start: int = 0, stop: int | None = None, *, sdc: bool = False) -> np.ndarray:
    """The evaluator's distances from queries start..stop-1 to the whole database.

    Returns (stop - start, n_db): uint8 (uint16 when B > 255) Hamming distances for
    BinaryCodes, float32 squared L2 (ADC, or SDC with ``sdc=True``) for PQCodes, float32
    squared L2 or 1 - cos for FloatCodes. Meant for small slices (checks, debugging).
    """
    n_query, _ = _check_codes(codes, sdc)
    stop = n_query if stop is None else min(stop, n_query)
    return _make_search(codes, sdc).numpy(start, stop)


# ----------------------------------------------------------------------------- ranking


@dataclass
class _Ranking:
    """One block of queries reduced to what the metrics need (see :mod:`qbench.metrics`)."""

    rel_pos: np.ndarray
    row_ptr: np.ndarray
    group_row: np.ndarray | None = None
    group_size: np.ndarray | None = None
    level_hist: np.ndarray | None = None


def _row_ptr(counts: np.ndarray) -> np.ndarray:
    ptr = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(counts, out=ptr[1:])
    return ptr


def _counting_sort_numpy(dist_row: np.ndarray, levels: int) -> tuple[np.ndarray, np.ndarray]:
    """(order, counts): stable order of one row of small integer distances and the items at
    each distance 0..levels-1. numpy's stable argsort of small unsigned integers is a radix
    (counting) sort: O(n), ties in database-index order."""
    return np.argsort(dist_row, kind="stable"), np.bincount(dist_row, minlength=levels)


def _counting_sort_pandas(dist_row: np.ndarray, levels: int) -> tuple[np.ndarray, np.ndarray]:
    """Same as :func:`_counting_sort_numpy` through pandas' compiled counting sort (about
    2.5x faster, and the counts come with it)."""
    order, counts = _pandas_groupsort(dist_row.astype(np.intp), levels)
    return order, counts[1:]


try:  # pandas' counting sort: optional, checked against numpy's in the tests
    from pandas._libs.algos import groupsort_indexer as _pandas_groupsort

    _counting_sort = _counting_sort_pandas
except ImportError:  # pragma: no cover - depends on the installed pandas
    _counting_sort = _counting_sort_numpy


def _rank_hamming(dist: np.ndarray, rel: np.ndarray, levels: int) -> _Ranking:
    """Rank a block of integer distances (b, n) by (distance, index) with a counting sort:
    O(n) per query, no comparison sort."""
    b = len(dist)
    parts = []
    hist = np.empty((b, levels), dtype=np.int64)
    for i in range(b):
        order, hist[i] = _counting_sort(dist[i], levels)
        parts.append(np.flatnonzero(np.take(rel[i], order)))
    ptr = _row_ptr(np.fromiter((len(p) for p in parts), dtype=np.int64, count=b))
    groups = np.nonzero(hist)
    return _Ranking(np.concatenate(parts).astype(np.int64), ptr, groups[0], hist[groups], hist)


def _monotone_bits(dist: np.ndarray) -> np.ndarray:
    """uint32 codes of float32 distances with the same order (-0.0 counts as +0.0)."""
    d = np.add(dist, np.float32(0), dtype=np.float32)
    if np.isnan(d).any():
        raise QbenchError("distances contain NaN (check the embeddings or codebooks)")
    u = d.view(np.uint32)
    return u ^ (((u >> np.uint32(31)) * np.uint32(0x7FFFFFFF)) | np.uint32(0x80000000))


def _rank_float(dist: np.ndarray, rel: np.ndarray, tied: bool) -> _Ranking:
    """Rank a block of float distances (b, n) by (distance, index).

    An LSD radix sort of the 32-bit order-preserving codes in two stable 16-bit passes
    (numpy's stable argsort of uint16 is a radix sort), about 2.5x faster than a comparison
    sort. With ``tied``, also the runs of equal distance (for tie-aware metrics).
    """
    b, n = dist.shape
    code = _monotone_bits(dist)
    low = code.astype(np.uint16)
    high = (code >> np.uint32(16)).astype(np.uint16)
    parts, group_rows, group_sizes = [], [], []
    for i in range(b):
        by_low = np.argsort(low[i], kind="stable")
        order = np.take(by_low, np.argsort(np.take(high[i], by_low), kind="stable"))
        parts.append(np.flatnonzero(np.take(rel[i], order)))
        if tied:
            ordered = np.take(code[i], order)
            starts = np.flatnonzero(np.concatenate([[True], ordered[1:] != ordered[:-1]]))
            group_sizes.append(np.diff(np.append(starts, n)))
            group_rows.append(np.full(len(starts), i, dtype=np.int64))
    ptr = _row_ptr(np.fromiter((len(p) for p in parts), dtype=np.int64, count=b))
    ranking = _Ranking(np.concatenate(parts).astype(np.int64), ptr)
    if tied:
        ranking.group_row = np.concatenate(group_rows)
        ranking.group_size = np.concatenate(group_sizes)
    return ranking


def _rank_numpy(search, dist: np.ndarray, rel: np.ndarray) -> _Ranking:
    if isinstance(search, _Hamming):
        return _rank_hamming(dist, rel, search.levels)
    return _rank_float(dist, rel, search.tied)


def _key_shift(n_db: int) -> int:
    """Bits below the distance in a torch sort key: the database index and the relevance bit."""
    return max(1, (n_db - 1).bit_length()) + 1


def _rank_torch(search, dist, rel, n_db: int) -> _Ranking:
    """The torch version of the ranking: int64 keys sorted on the device."""
    import torch

    b, n = dist.shape
    shift = _key_shift(n_db)
    if shift + 32 > 63:
        raise QbenchError(f"database too large for the torch path ({n_db} items)")
    if isinstance(search, _Hamming):
        code = dist.to(torch.int64)
    else:
        d = dist.to(torch.float32) + 0.0
        if torch.isnan(d).any():
            raise QbenchError("distances contain NaN (check the embeddings or codebooks)")
        u = d.view(torch.int32).to(torch.int64) & 0xFFFFFFFF
        code = torch.where(u >= 0x80000000, u ^ 0xFFFFFFFF, u | 0x80000000)
    idx = torch.arange(n, device=dist.device, dtype=torch.int64) << 1
    keys = torch.sort((code << shift) | idx | rel.to(torch.int64), dim=1).values
    nz = torch.nonzero(keys & 1).cpu().numpy()
    ranking = _Ranking(nz[:, 1].astype(np.int64),
                       _row_ptr(np.bincount(nz[:, 0], minlength=b)))
    if isinstance(search, _Hamming):
        levels = search.levels
        offsets = torch.arange(b, device=dist.device, dtype=torch.int64)[:, None] * levels
        hist = torch.bincount((code + offsets).flatten(), minlength=b * levels)
        ranking.level_hist = hist.view(b, levels).cpu().numpy().astype(np.int64)
        g = np.nonzero(ranking.level_hist)
        ranking.group_row, ranking.group_size = g[0], ranking.level_hist[g]
    elif search.tied:
        hi = keys >> shift
        new = torch.ones((b, n), dtype=torch.bool, device=dist.device)
        new[:, 1:] = hi[:, 1:] != hi[:, :-1]
        starts = torch.nonzero(new.flatten()).flatten().cpu().numpy()
        ranking.group_row = starts // n
        ranking.group_size = np.diff(np.append(starts, b * n))
    return ranking


# ----------------------------------------------------------------------------- scoring


@dataclass
class _Plan:
    """What to compute for every block."""

    n_db: int
    k: int
    normaliser: str
    quick: bool = False
    curves: bool = True
    tie_aware: bool = False
    harmonic: np.ndarray | None = None
    pr_cut: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    top_cut: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))


def _score_block(r: _Ranking, plan: _Plan) -> dict[str, np.ndarray]:
    """Per-query numbers of one block (every array has the block's queries on axis 0)."""
    ranks = M.Ranks(r.rel_pos, r.row_ptr, plan.n_db)
    ap_k = ranks.average_precision(plan.k, plan.normaliser)
    if plan.quick:
        return {"ap_k": ap_k}
    out = {"ap_k": ap_k, "n_rel": ranks.n_rel}
    out["ap_all"] = ap_k if plan.k == plan.n_db else ranks.average_precision()
    cut = np.concatenate([[plan.k], plan.pr_cut, plan.top_cut])
    out["hits"] = ranks.hits_at(cut)
    if plan.tie_aware and r.group_row is not None:
        groups = M.TieGroups(r.group_row, r.group_size, ranks)
        for name, ap in groups.average_precision(plan.harmonic).items():
            out["tie_ap_" + name] = ap
        out["expected_hits"] = groups.expected_hits(cut)
    if r.level_hist is not None:
        out["n_le"], out["r_le"] = M.radius_counts(r.level_hist, ranks)
    return out


def _mean(x: np.ndarray) -> float:
    return float(np.mean(x)) if len(x) else 0.0


def _summarise(per_query: dict[str, np.ndarray], plan: _Plan, search, bytes_per_code: float,
               curves: bool) -> tuple[dict, dict]:
    """Means over queries -> (metrics, curves) as JSON-ready dicts."""
    n_rel = per_query["n_rel"]
    k = plan.k
    n_pr = len(plan.pr_cut)
    metrics = {
        "map_all": _mean(per_query["ap_all"]),
        "map_at_k": _mean(per_query["ap_k"]),
        "p_at_k": _mean(per_query["hits"][:, 0] / k),
        "r_at_k": _mean(M.safe_ratio(per_query["hits"][:, 0], n_rel)),
        "bytes_per_code": float(bytes_per_code),
        "queries_without_relevant": int(np.sum(n_rel == 0)),
    }
    tie_aware = "expected_hits" in per_query
    if tie_aware:
        metrics["tie_aware_map_all"] = _mean(per_query["tie_ap_expected"])
        metrics["tie_aware_map_all_optimistic"] = _mean(per_query["tie_ap_optimistic"])
        metrics["tie_aware_map_all_pessimistic"] = _mean(per_query["tie_ap_pessimistic"])
        metrics["tie_aware_p_at_k"] = _mean(per_query["expected_hits"][:, 0] / k)
        metrics["tie_aware_r_at_k"] = _mean(
            M.safe_ratio(per_query["expected_hits"][:, 0], n_rel))
    if "n_le" in per_query:
        radius = min(HAMMING_RADIUS, search.bits)
        metrics["p_at_hamming2"] = _mean(M.safe_ratio(per_query["r_le"][:, radius],
                                                      per_query["n_le"][:, radius]))
    out_curves: dict = {}
    if curves:
        hits = per_query["expected_hits"] if tie_aware else per_query["hits"]
        pr_hits, top_hits = hits[:, 1:1 + n_pr], hits[:, 1 + n_pr:]
        out_curves["pr"] = {
            "rank": plan.pr_cut.tolist(),
            "recall": np.mean(M.safe_ratio(pr_hits, n_rel[:, None]), axis=0).tolist(),
            "precision": np.mean(pr_hits / plan.pr_cut[None, :], axis=0).tolist(),
        }
        out_curves["top_r"] = {
            "r": plan.top_cut.tolist(),
            "precision": np.mean(top_hits / plan.top_cut[None, :], axis=0).tolist(),
        }
        if "n_le" in per_query:
            n_le, r_le = per_query["n_le"], per_query["r_le"]
            out_curves["pr_hamming"] = {
                "radius": list(range(search.levels)),
                "precision": np.mean(M.safe_ratio(r_le, n_le), axis=0).tolist(),
                "recall": np.mean(M.safe_ratio(r_le, n_rel[:, None]), axis=0).tolist(),
            }
    return metrics, out_curves


def _metric_card(search, labels: _Labels, plan: _Plan, k: int | None, normaliser: str,
                 tie_aware: bool, n_query: int) -> dict:
    card = {
        "relevance": "share at least one label" if labels.multi else "same class",
        "distance": search.name,
        "order": "ascending distance",
        "k": "all" if k is None else int(k),
        "k_effective": plan.k,
        "normaliser": normaliser,
        "zero_hit_policy": "a query with no relevant item in the top K scores AP 0 and "
                           "recall 0, and counts in every mean",
        "tie_policy": "database index",
        "curves": "mean over queries; precision and recall at rank cut-offs",
        "n_query": int(n_query),
        "n_db": int(plan.n_db),
    }
    if tie_aware:
        card["tie_policy"] = ("database index; tie-aware expectation reported (uniformly "
                              "random order within equal distance), with optimistic and "
                              "pessimistic bounds")
        card["curves"] = ("mean over queries; tie-aware expected precision and recall at rank "
                          "cut-offs")
    if isinstance(search, _Hamming):
        card["hamming_radius_curves"] = ("set metrics over items within radius <= r; "
                                         "precision 0 when the ball is empty")
    return card


# ----------------------------------------------------------------------------- driver


def _workers(device: str) -> int:
    return 1 if device != "cpu" else max(1, min(MAX_WORKERS, os.cpu_count() or 1))


def _block_size(search, n_query: int, n_db: int, block_size: int | None, torch: bool) -> int:
    if block_size is not None:
        if int(block_size) < 1:
            raise QbenchError(f"block_size must be >= 1, got {block_size}")
        return min(int(block_size), n_query)
    per_pair = search.bytes_per_pair + (24 if torch else 0)
    if torch and isinstance(search, _Hamming):
        per_pair += 8 * search.query_words.shape[1] * np.dtype(search.word).itemsize
    return max(1, min(n_query, BLOCK_BYTES // (per_pair * n_db), MAX_BLOCK_QUERIES))


def _run(codes, query_labels, db_labels, *, k: int | None, normaliser: str, device: str,
         block_size: int | None, curves: bool, sdc: bool, quick: bool,
         backend: str | None = None) -> tuple[dict, dict, dict, dict, np.ndarray]:
    started = time.perf_counter()
    n_query, n_db = _check_codes(codes, sdc)
    labels = _Labels(query_labels, db_labels)
    if (labels.n_query, labels.n_db) != (n_query, n_db):
        raise QbenchError(f"labels for {labels.n_query} queries and {labels.n_db} database "
                          f"items, codes for {n_query} and {n_db}")
    if normaliser not in M.NORMALISERS:
        raise QbenchError(f"unknown normaliser {normaliser!r}; allowed: "
                          + ", ".join(M.NORMALISERS))
    if k is not None and (isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1):
        raise QbenchError(f"k must be a positive integer or None (all), got {k!r}")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise QbenchError(f"unknown device {device!r}; allowed: cpu, cuda")
    use_torch = backend == "torch" or device != "cpu"
    if device != "cpu":
        import torch

        if not torch.cuda.is_available():
            raise QbenchError(f"device {device!r} requested but CUDA is not available")
    search = _make_search(codes, sdc)
    plan = _Plan(n_db=n_db, k=n_db if k is None else min(int(k), n_db), normaliser=normaliser,
                 quick=quick, curves=curves, tie_aware=search.tied and not quick)
    if not quick:
        plan.harmonic = M.harmonic_table(n_db) if search.tied else None
        if curves:
            plan.pr_cut, plan.top_cut = M.pr_cutoffs(n_db), M.top_r_cutoffs(n_db)
    bs = _block_size(search, n_query, n_db, block_size, use_torch)

    def work(start: int) -> tuple[float, dict]:
        stop = min(start + bs, n_query)
        t0 = time.perf_counter()
        if use_torch:
            dist = search.torch(start, stop, device)
            if device != "cpu":
                import torch

                torch.cuda.synchronize()
            seconds = time.perf_counter() - t0
            ranking = _rank_torch(search, dist, labels.block_torch(start, stop, device), n_db)
        else:
            dist = search.numpy(start, stop)
            seconds = time.perf_counter() - t0
            ranking = _rank_numpy(search, dist, labels.block(start, stop))
        return seconds, _score_block(ranking, plan)

    starts = range(0, n_query, bs)
    workers = 1 if use_torch else min(_workers(device), len(starts))
    if workers > 1:
        with ThreadPoolExecutor(workers) as pool:
            done = list(pool.map(work, starts))
    else:
        done = [work(s) for s in starts]
    search_s = sum(s for s, _ in done)
    per_query = {key: np.concatenate([d[key] for _, d in done]) for key in done[0][1]}
    if quick:
        return {"map_at_k": _mean(per_query["ap_k"])}, {}, {}, {}, per_query["ap_k"]
    metrics, out_curves = _summarise(per_query, plan, search, codes.bytes_per_code, curves)
    card = _metric_card(search, labels, plan, k, normaliser, plan.tie_aware, n_query)
    eval_s = time.perf_counter() - started
    timings = {"search_s": search_s, "eval_s": eval_s,
               "queries_per_s": n_query / search_s if search_s > 0 else None}
    return metrics, out_curves, card, timings, per_query["ap_all"]


def evaluate(codes, query_labels, db_labels, *, k: int | None = None, normaliser: str = "rk",
             device: str = "cpu", block_size: int | None = None, curves: bool = True,
             sdc: bool = False) -> Evaluation:
    """Rank the database for every query and compute all metrics.

    codes: FloatCodes, PQCodes or BinaryCodes with n_query queries and n_db items;
    query_labels: (n_query,) class ids or (n_query, C) multi-hot; db_labels likewise (n_db,
    ...). k: cut-off of MAP@K (None: all); normaliser: AP@K normaliser "rk" | "min_k_r" |
    "r"; device: "cpu" or "cuda"; block_size: queries per block (None: automatic, at most
    64 queries and ~256 MB of working memory per block; on the CPU up to 4 blocks run at once
    on threads); curves: also compute the PR / top-R / Hamming-radius curves; sdc: for
    PQCodes, quantize the query too (symmetric distance, integer-like ties).

    Metrics: map_all, map_at_k, p_at_k, r_at_k (K = k or n_db, database-index order),
    bytes_per_code, queries_without_relevant; for Hamming and SDC also tie_aware_map_all,
    tie_aware_map_all_optimistic, tie_aware_map_all_pessimistic, tie_aware_p_at_k,
    tie_aware_r_at_k; for Hamming p_at_hamming2 (precision within radius <= 2, 0 for an empty
    ball). Curves: pr {rank, recall, precision} at ceil(i n_db / 50), i = 1..50; top_r {r,
    precision} for r = 100..1000 <= n_db (both tie-aware expectations for Hamming and SDC);
    pr_hamming {radius, precision, recall} for Hamming. Timings: search_s (distance
    computation, summed over blocks), eval_s (this call), queries_per_s = n_query / search_s.
    """
    metrics, out_curves, card, timings, ap = _run(
        codes, query_labels, db_labels, k=k, normaliser=normaliser, device=device,
        block_size=block_size, curves=curves, sdc=sdc, quick=False)
    return Evaluation(metrics, out_curves, card, timings, ap)


def mean_average_precision(codes, query_labels, db_labels, *, k: int | None = None,
                           device: str = "cpu") -> float:
    """MAP@K (K = k, None: the whole database) with the "rk" normaliser, nothing else.

    The quick score for model selection on a validation split: the same ranking and AP as
    :func:`evaluate`, without curves, tie-aware metrics or timings.
    """
    metrics, *_ = _run(codes, query_labels, db_labels, k=k, normaliser="rk", device=device,
                       block_size=None, curves=False, sdc=False, quick=True)
    return metrics["map_at_k"]
