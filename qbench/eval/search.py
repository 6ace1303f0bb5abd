"""Distances and rankings: one block of queries against the whole database.

Input is a codes object from :mod:`qbench.core.codes` (this module never knows which method made
it). Distances (SPEC section 4):

- :class:`~qbench.core.codes.BinaryCodes`: Hamming distance, exact integers (``"hamming"``):
  XOR and popcount (``numpy.bitwise_count``) on packed words.
- :class:`~qbench.core.codes.PQCodes`: ADC, the squared L2 distance from the unquantized query to
  each database reconstruction through per-query lookup tables (``"adc-l2sq"``); with
  ``sdc=True`` the query is quantized too (``"sdc-l2sq"``).
- :class:`~qbench.core.codes.FloatCodes`: squared L2 (same order as L2, ``"l2"``) or cosine
  distance 1 - cos (``"cosine"``).

For Hamming distances the evaluator normally skips this module's ranking: the compiled
kernel of :mod:`qbench.eval.kernels` counts by distance level instead of sorting (no sort, O(N + B)
per query); :func:`rank_numpy` is its numpy fallback and reference.

A block is ranked by one sort per query of packed keys (distance, database index, relevance
bit): ascending distance, equal distances broken by database index. The sorted keys give at
once the positions of the relevant items and the runs of equal distance (tie groups, for
every distance: Hamming levels, equal ADC/SDC sums, equal floats), which is all
:mod:`qbench.eval.metrics` needs. With ``torch`` the same keys are built and sorted on a device.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qbench.core.codes import BinaryCodes, FloatCodes, PQCodes
from qbench.core.errors import QbenchError
from qbench.core.labels import as_labels

# ----------------------------------------------------------------------------- relevance


class Labels:
    """Query and database labels prepared once for blockwise relevance.

    query_labels: (n_query,) class ids or (n_query, C) multi-hot; db_labels likewise.
    """

    def __init__(self, query_labels, db_labels):
        q = as_labels(query_labels, "query_labels")
        d = as_labels(db_labels, "db_labels")
        if q.ndim != d.ndim or (q.ndim == 2 and q.shape[1] != d.shape[1]):
            raise QbenchError(f"query_labels shape {q.shape} and db_labels shape {d.shape} "
                              "are not the same kind of labels")
        self.multi = q.ndim == 2
        self.n_query, self.n_db = len(q), len(d)
        if self.multi:
            self.query = q.astype(np.float32)
            self.db = np.ascontiguousarray(d.T, dtype=np.float32)  # (C, n_db)
        else:
            self.query, self.db = q, d
        self._torch = None
        self._kernel = None

    def kernel_args(self) -> dict:
        """Relevance as :func:`qbench.eval.kernels.hamming_block` reads it, for all queries:
        int64 class ids (``q_labels``, ``db_labels``), or for multi-hot labels uint64 label
        masks (``q_masks``, ``db_masks``: a shared label is a non-zero AND)."""
        if self._kernel is None:
            from qbench.eval.kernels import label_masks

            if self.multi:
                self._kernel = {"q_masks": label_masks(self.query > 0.5),
                                "db_masks": label_masks(self.db.T > 0.5)}
            else:
                self._kernel = {"q_labels": self.query.astype(np.int64),
                                "db_labels": self.db.astype(np.int64)}
        return self._kernel

    def block(self, start: int, stop: int) -> np.ndarray:
        """(stop - start, n_db) bool: query i shares at least one label with item j."""
        if self.multi:
            return (self.query[start:stop] @ self.db) > 0.5
        return self.query[start:stop, None] == self.db[None, :]

    def block_torch(self, start: int, stop: int, device):
        """The same relevance as a torch bool tensor on ``device``."""
        import torch

        if self._torch is None:
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
    return Labels(query_labels_block, db_labels).block(0, len(np.asarray(query_labels_block)))


# ----------------------------------------------------------------------------- distances


def _popcount16_torch(x):
    """Bit count of every element of an int32 tensor holding 16-bit values."""
    x = x - ((x >> 1) & 0x5555)
    x = (x & 0x3333) + ((x >> 2) & 0x3333)
    x = (x + (x >> 4)) & 0x0F0F
    return (x + (x >> 8)) & 0x1F


class HammingDistances:
    """Hamming distances between {0,1} codes: exact integers in [0, B] (``levels`` = B + 1)."""

    name = "hamming"

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
        self.bytes_per_pair = 10 + np.dtype(self.word).itemsize
        self._query_bits, self._db_bits = q, d
        self._torch = None
        self._words64 = None

    def words64(self) -> tuple[np.ndarray, np.ndarray]:
        """(query (n_query, W), db (n_db, W)): the codes packed into uint64 words, item-major,
        as :func:`qbench.eval.kernels.hamming_block` reads them."""
        if self._words64 is None:
            from qbench.eval.kernels import pack_words

            self._words64 = (pack_words(self._query_bits), pack_words(self._db_bits))
        return self._words64

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
        """The same distances as an int32 tensor on ``device``."""
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


class LookupTableDistances:
    """PQ distances through per-query lookup tables: ADC, or SDC with ``symmetric``.

    Tables are (b, M, K) float32; the distance to item j is sum_m table[:, m, code[j, m]],
    added in subspace order.
    """

    levels = None
    bytes_per_pair = 32

    def __init__(self, codes: PQCodes, symmetric: bool):
        self.symmetric = symmetric
        self.name = "sdc-l2sq" if symmetric else "adc-l2sq"
        self.codebooks = np.ascontiguousarray(codes.codebooks, dtype=np.float32)  # (M, K, ds)
        self.m, self.k, self.dsub = self.codebooks.shape
        self.query = np.ascontiguousarray(codes.query, dtype=np.float32)
        self.codes_t = np.ascontiguousarray(np.asarray(codes.db_codes).T, dtype=np.intp)
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
        out = np.empty((len(lut), self.codes_t.shape[1]), dtype=np.float32)
        part = np.empty(self.codes_t.shape[1], dtype=np.float32)
        for i, table in enumerate(lut):  # one small table per row: 1-D gathers stay in cache
            np.take(table[0], self.codes_t[0], out=out[i])
            for m in range(1, self.m):
                np.take(table[m], self.codes_t[m], out=part)
                out[i] += part
        return out

    def torch(self, start: int, stop: int, device):
        """The same distances as a float32 tensor on ``device``."""
        import torch

        if self._torch is None:
            self._torch = torch.from_numpy(self.codes_t.astype(np.int64)).to(device)
        lut = torch.from_numpy(self.tables(start, stop)).to(device)
        out = lut[:, 0, :][:, self._torch[0]]
        for m in range(1, self.m):
            out += lut[:, m, :][:, self._torch[m]]
        return out


class EmbeddingDistances:
    """Float embeddings: squared L2 (clipped at 0) or cosine distance 1 - cos, float32."""

    levels = None
    bytes_per_pair = 32

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
        """(b, n_db) float32 distances."""
        dot = self.query[start:stop] @ self.db.T
        if self.name == "cosine":
            return np.float32(1) - dot
        dist = (self.query_sq[start:stop, None] + self.db_sq[None, :]) - 2 * dot
        return np.maximum(dist, 0, out=dist)

    def torch(self, start: int, stop: int, device):
        """The same distances as a float32 tensor on ``device``."""
        import torch

        if self._torch is None:
            self._torch = tuple(torch.from_numpy(a).to(device) for a in
                                (self.query, self.db, self.query_sq, self.db_sq))
        q, d, qs, ds = self._torch
        dot = q[start:stop] @ d.T
        if self.name == "cosine":
            return 1 - dot
        return ((qs[start:stop, None] + ds[None, :]) - 2 * dot).clamp_min_(0)


Distances = HammingDistances | LookupTableDistances | EmbeddingDistances


def check_codes(codes, sdc: bool) -> tuple[int, int]:
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
    floats = [(q, names[0])]
    if isinstance(codes, BinaryCodes):
        if q.shape[1] != d.shape[1]:
            raise QbenchError(f"codes: query_bits have {q.shape[1]} bits, db_bits {d.shape[1]}")
        for a, name in zip((q, d), names):
            if not np.all((a == 0) | (a == 1)):
                raise QbenchError(f"codes.{name}: bits must be 0 or 1")
        floats = []
    elif isinstance(codes, PQCodes):
        cb = np.asarray(codes.codebooks)
        if cb.ndim != 3 or cb.shape[0] != d.shape[1] or cb.shape[0] * cb.shape[2] != q.shape[1]:
            raise QbenchError(f"codes.codebooks: expected shape (M={d.shape[1]}, K, "
                              f"D/M) with D={q.shape[1]}, got {cb.shape}")
        if d.dtype.kind not in "iu" or d.min() < 0 or d.max() >= cb.shape[1]:
            raise QbenchError(f"codes.db_codes: expected integers in [0, {cb.shape[1]})")
        floats.append((cb, "codebooks"))
    else:
        if q.shape[1] != d.shape[1]:
            raise QbenchError(f"codes: query has dimension {q.shape[1]}, db {d.shape[1]}")
        floats.append((d, names[1]))
    for a, name in floats:
        if not np.all(np.isfinite(a)):
            raise QbenchError(f"codes.{name}: contains NaN or infinite values")
    return q.shape[0], d.shape[0]


def make_distances(codes, sdc: bool) -> Distances:
    """The distance computer for a (checked) codes object."""
    if isinstance(codes, BinaryCodes):
        return HammingDistances(codes)
    if isinstance(codes, PQCodes):
        return LookupTableDistances(codes, symmetric=sdc)
    return EmbeddingDistances(codes)


def distances(codes, start: int = 0, stop: int | None = None, *, sdc: bool = False) -> np.ndarray:
    """The evaluator's distances from queries start..stop-1 to the whole database.

    Returns (stop - start, n_db): uint8 (uint16 when B > 255) Hamming distances for
    BinaryCodes, float32 squared L2 (ADC, or SDC with ``sdc=True``) for PQCodes, float32
    squared L2 or 1 - cos for FloatCodes. Meant for small slices (checks, debugging).
    """
    n_query, _ = check_codes(codes, sdc)
    stop = n_query if stop is None else min(stop, n_query)
    return make_distances(codes, sdc).numpy(start, stop)


# ----------------------------------------------------------------------------- ranking


@dataclass
class BlockRanking:
    """One block of b queries reduced to what :mod:`qbench.eval.metrics` needs.

    rel_pos (T,), row_ptr (b + 1,): relevant positions; group_row, group_start, group_size
    (G,): every run of >= 2 items at equal distance; level_hist (b, B + 1): items per
    Hamming distance (Hamming only). All int64.
    """

    rel_pos: np.ndarray
    row_ptr: np.ndarray
    group_row: np.ndarray
    group_start: np.ndarray
    group_size: np.ndarray
    level_hist: np.ndarray | None = None


def _row_ptr(rows: np.ndarray, b: int) -> np.ndarray:
    ptr = np.zeros(b + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=b), out=ptr[1:])
    return ptr


def _groups_from_levels(cum: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Tie groups from (b, levels + 1) cumulative counts per distance level."""
    hist = np.diff(cum, axis=1)
    tied = hist > 1
    rows = np.nonzero(tied)[0]
    return rows, cum[:, :-1][tied], hist[tied]


def _groups_from_ties(rows: np.ndarray, pos: np.ndarray):
    """Tie groups from the (row, p) pairs where sorted items p and p + 1 have equal distance
    (row-major order): each run of consecutive p is one group of (run length + 1) items."""
    if len(pos) == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty
    new = np.ones(len(pos), dtype=bool)
    new[1:] = (rows[1:] != rows[:-1]) | (pos[1:] != pos[:-1] + 1)
    first = np.flatnonzero(new)
    last = np.append(first[1:], len(pos)) - 1
    return (rows[first].astype(np.int64), pos[first].astype(np.int64),
            (pos[last] - pos[first] + 2).astype(np.int64))


def monotone_bits(dist: np.ndarray) -> np.ndarray:
    """uint32 codes of float32 distances with the same order (-0.0 counts as +0.0)."""
    d = np.add(dist, np.float32(0), dtype=np.float32)  # -0.0 + 0.0 = +0.0
    low = d.min(initial=np.inf)
    if low >= 0:  # the usual case: non-negative floats order like their bit patterns
        return d.view(np.uint32)
    if np.isnan(low):
        raise QbenchError("distances contain NaN (check the embeddings or codebooks)")
    u = d.view(np.uint32)
    return u ^ (((u >> np.uint32(31)) * np.uint32(0x7FFFFFFF)) | np.uint32(0x80000000))


def rank_numpy(search: Distances, dist: np.ndarray, rel: np.ndarray) -> BlockRanking:
    """Rank a block: dist (b, n) from ``search.numpy``, rel (b, n) bool.

    One in-place sort per row of keys (distance code, database index, relevance bit): uint32
    keys for Hamming levels where they fit, uint64 keys (32-bit order-preserving float
    codes) otherwise.
    """
    b, n = dist.shape
    shift = max(1, (n - 1).bit_length()) + 1
    levels = search.levels
    if levels is not None:
        key_type = np.uint32 if shift + (levels - 1).bit_length() <= 32 else np.uint64
        code = dist
    else:
        if shift > 32:
            raise QbenchError(f"database too large to rank ({n} items, at most 2^31)")
        key_type, shift, code = np.uint64, 32, monotone_bits(dist)
    keys = np.left_shift(code, shift, dtype=key_type)
    keys |= np.arange(n, dtype=key_type) << key_type(1)
    keys |= rel
    keys.sort(axis=1)
    if np.little_endian:  # the relevance bits: the lowest byte of every key, read in place
        flags = np.bitwise_and(keys.view(np.uint8)[:, ::keys.itemsize], 1).view(bool)
    else:
        flags = (keys & key_type(1)).astype(bool)
    flat = np.flatnonzero(flags)  # 1-D: far faster than a 2-D nonzero
    ptr = np.searchsorted(flat, np.arange(b + 1, dtype=np.int64) * n)
    pos = flat - np.repeat(np.arange(b, dtype=np.int64) * n, np.diff(ptr))
    level_hist = None
    if levels is not None:
        bounds = np.arange(levels + 1, dtype=key_type) << key_type(shift)
        cum = np.stack([np.searchsorted(row, bounds) for row in keys]).astype(np.int64)
        level_hist = np.diff(cum, axis=1)
        groups = _groups_from_levels(cum)
    else:
        high = keys.view(np.uint32)[:, 1::2] if np.little_endian else keys >> np.uint64(32)
        groups = _groups_from_ties(*np.divmod(np.flatnonzero(high[:, 1:] == high[:, :-1]),
                                              n - 1))
    return BlockRanking(pos, ptr, *groups, level_hist)


def rank_torch(search: Distances, dist, rel) -> BlockRanking:
    """The torch version of :func:`rank_numpy`: int64 keys sorted on dist's device."""
    import torch

    b, n = dist.shape
    shift = max(1, (n - 1).bit_length()) + 1
    if shift + 32 > 63:
        raise QbenchError(f"database too large for the torch path ({n} items)")
    if search.levels is not None:
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
    ptr = _row_ptr(nz[:, 0], b)
    level_hist = None
    if search.levels is not None:
        levels = search.levels
        offsets = torch.arange(b, device=dist.device, dtype=torch.int64)[:, None] * levels
        hist = torch.bincount((code + offsets).flatten(), minlength=b * levels)
        level_hist = hist.view(b, levels).cpu().numpy().astype(np.int64)
        cum = np.zeros((b, levels + 1), dtype=np.int64)
        np.cumsum(level_hist, axis=1, out=cum[:, 1:])
        groups = _groups_from_levels(cum)
    else:
        high = keys >> shift
        ties = torch.nonzero(high[:, 1:] == high[:, :-1]).cpu().numpy()
        groups = _groups_from_ties(ties[:, 0], ties[:, 1])
    return BlockRanking(nz[:, 1].astype(np.int64), ptr, *groups, level_hist)
