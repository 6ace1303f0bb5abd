"""Distances: one block of queries against the whole database, one backend per kind of code.

Input is a codes object from :mod:`qbench.core.codes` (this module never knows which method made
it), checked once at the boundary (:func:`check_codes`). Distances (SPEC section 4):

- :class:`~qbench.core.codes.BinaryCodes`: Hamming distance, exact integers (``"hamming"``):
  XOR and popcount (``numpy.bitwise_count``) on packed words.
- :class:`~qbench.core.codes.PQCodes`: ADC, the squared L2 distance from the unquantized query to
  each database reconstruction through per-query lookup tables (``"adc-l2sq"``); with
  ``sdc=True`` the query is quantized too (``"sdc-l2sq"``).
- :class:`~qbench.core.codes.AQCodes`: ADC for additive codes (RQ, LSQ), the same squared L2
  from the unquantized query to each reconstruction (``"adc-l2sq"``), through per-query
  tables of inner products and each reconstruction's squared norm.
- :class:`~qbench.core.codes.FloatCodes`: squared L2 (same order as L2, ``"l2"``) or cosine
  distance 1 - cos (``"cosine"``).

Every backend gives a block's distances as a numpy array (``numpy``) or as a torch tensor on
a device (``torch``, torch imported only then); :mod:`qbench.eval.ranking` ranks them.
"""

from __future__ import annotations

import numpy as np

from qbench.core.codes import AQCodes, BinaryCodes, FloatCodes, PQCodes
from qbench.core.errors import QbenchError


def _popcount16_torch(x):
    """Bit count of every element of an int32 tensor holding 16-bit values."""
    x = x - ((x >> 1) & 0x5555)
    x = (x & 0x3333) + ((x >> 2) & 0x3333)
    x = (x + (x >> 4)) & 0x0F0F
    return (x + (x >> 8)) & 0x1F


def _subspace_major(db_codes, k: int) -> np.ndarray:
    """(M, n) codes, subspace-major, in the smallest unsigned type that holds K codewords:
    what the compiled ranking of :mod:`qbench.eval.buckets` reads."""
    dtype = np.uint8 if k <= 2**8 else np.uint16 if k <= 2**16 else np.uint32
    return np.ascontiguousarray(np.asarray(db_codes).T, dtype=dtype)


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
        self.codes = _subspace_major(codes.db_codes, self.k)
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

    def kernel_inputs(self, start: int, stop: int) -> dict:
        """What :func:`qbench.eval.buckets.rank_block` reads: the block's tables and the
        codes (the distances are summed in the kernel, in the same order as here)."""
        return {"tables": self.tables(start, stop), "codes": self.codes}

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


class AdditiveDistances:
    """ADC for additive codes: ||q - x||^2 = (||q||^2 + ||x||^2) - 2 sum_m <q, c_m[code_m]>.

    Tables are (b, M, K) float32 inner products of the query with every codeword, summed in
    codebook order like PQ's; ||x||^2 of each reconstruction is computed once from the
    decoded database (exactly what faiss's additive indexes store as a float norm).
    """

    levels = None
    bytes_per_pair = 32
    name = "adc-l2sq"

    def __init__(self, codes: AQCodes):
        self.codebooks = np.ascontiguousarray(codes.codebooks, dtype=np.float32)  # (M, K, D)
        self.m, self.k, _ = self.codebooks.shape
        self.query = np.ascontiguousarray(codes.query, dtype=np.float32)
        self.query_sq = (self.query * self.query).sum(1)
        self.codes_t = np.ascontiguousarray(np.asarray(codes.db_codes).T, dtype=np.intp)
        self.codes = _subspace_major(codes.db_codes, self.k)
        recon = AQCodes(self.query, np.asarray(codes.db_codes), self.codebooks).reconstruct_db()
        self.db_sq = (recon * recon).sum(1)
        self._torch = None

    def tables(self, start: int, stop: int) -> np.ndarray:
        """(b, M, K) float32 inner products of each query with every codeword."""
        flat = self.codebooks.reshape(self.m * self.k, -1)
        return (self.query[start:stop] @ flat.T).reshape(stop - start, self.m, self.k)

    def kernel_inputs(self, start: int, stop: int) -> dict:
        """What :func:`qbench.eval.buckets.rank_block` reads: tables, codes and the squared
        norms (the distances are formed in the kernel, in float32, as here)."""
        return {"tables": self.tables(start, stop), "codes": self.codes,
                "q_sq": self.query_sq[start:stop], "db_sq": self.db_sq}

    def numpy(self, start: int, stop: int) -> np.ndarray:
        """(b, n_db) float32 distances, clipped at 0."""
        lut = self.tables(start, stop)
        dot = np.empty((len(lut), self.codes_t.shape[1]), dtype=np.float32)
        part = np.empty(self.codes_t.shape[1], dtype=np.float32)
        for i, table in enumerate(lut):
            np.take(table[0], self.codes_t[0], out=dot[i])
            for m in range(1, self.m):
                np.take(table[m], self.codes_t[m], out=part)
                dot[i] += part
        dist = (self.query_sq[start:stop, None] + self.db_sq[None, :]) - 2 * dot
        return np.maximum(dist, 0, out=dist)

    def torch(self, start: int, stop: int, device):
        """The same distances as a float32 tensor on ``device``."""
        import torch

        if self._torch is None:
            self._torch = (torch.from_numpy(self.codes_t.astype(np.int64)).to(device),
                           torch.from_numpy(self.query_sq).to(device),
                           torch.from_numpy(self.db_sq).to(device))
        codes_t, qs, ds = self._torch
        lut = torch.from_numpy(self.tables(start, stop)).to(device)
        dot = lut[:, 0, :][:, codes_t[0]]
        for m in range(1, self.m):
            dot += lut[:, m, :][:, codes_t[m]]
        return ((qs[start:stop, None] + ds[None, :]) - 2 * dot).clamp_min_(0)


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

    def kernel_inputs(self, start: int, stop: int) -> dict:
        """What :func:`qbench.eval.buckets.rank_block` reads: the block's distances."""
        return {"dist": self.numpy(start, stop)}

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


Distances = HammingDistances | LookupTableDistances | AdditiveDistances | EmbeddingDistances


def check_codes(codes, sdc: bool) -> tuple[int, int]:
    """Validate a codes object at the boundary; return (n_query, n_db)."""
    if isinstance(codes, BinaryCodes):
        q, d = np.asarray(codes.query_bits), np.asarray(codes.db_bits)
        names = ("query_bits", "db_bits")
    elif isinstance(codes, (PQCodes, AQCodes)):
        q, d = np.asarray(codes.query), np.asarray(codes.db_codes)
        names = ("query", "db_codes")
    elif isinstance(codes, FloatCodes):
        q, d = np.asarray(codes.query), np.asarray(codes.db)
        names = ("query", "db")
    else:
        raise QbenchError(f"cannot evaluate {type(codes).__name__}; expected FloatCodes, "
                          "PQCodes, AQCodes or BinaryCodes")
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
    elif isinstance(codes, AQCodes):
        cb = np.asarray(codes.codebooks)
        if cb.ndim != 3 or cb.shape[0] != d.shape[1] or cb.shape[2] != q.shape[1]:
            raise QbenchError(f"codes.codebooks: expected shape (M={d.shape[1]}, K, "
                              f"D={q.shape[1]}) for additive codes, got {cb.shape}")
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
    if isinstance(codes, AQCodes):
        return AdditiveDistances(codes)
    return EmbeddingDistances(codes)


def distances(codes, start: int = 0, stop: int | None = None, *, sdc: bool = False) -> np.ndarray:
    """The evaluator's distances from queries start..stop-1 to the whole database.

    Returns (stop - start, n_db): uint8 (uint16 when B > 255) Hamming distances for
    BinaryCodes, float32 squared L2 (ADC, or SDC with ``sdc=True``) for PQCodes, ADC for
    AQCodes, float32
    squared L2 or 1 - cos for FloatCodes. Meant for small slices (checks, debugging).
    """
    n_query, _ = check_codes(codes, sdc)
    stop = n_query if stop is None else min(stop, n_query)
    return make_distances(codes, sdc).numpy(start, stop)
