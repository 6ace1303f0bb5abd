"""Rankings: one block of queries' distances and relevance reduced to what
:mod:`qbench.eval.metrics` needs (:class:`BlockRanking`).

A block is ranked by one sort per query of packed keys (distance, database index, relevance
bit): ascending distance, equal distances broken by database index. The sorted keys give at
once the positions of the relevant items and the runs of equal distance (tie groups, for
every distance: Hamming levels, equal ADC/SDC sums, equal floats), which is all
:mod:`qbench.eval.metrics` needs. With ``torch`` the same keys are built and sorted on a device
(:func:`rank_torch`).

For Hamming distances the evaluator normally skips this module's ranking: the compiled
kernel of :mod:`qbench.eval.kernels` counts by distance level instead of sorting (no sort, O(N + B)
per query); :func:`rank_numpy` is its numpy fallback and reference.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qbench.core.errors import QbenchError
from qbench.eval.distances import Distances


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


@dataclass
class BucketRanking:
    """One block of b queries reduced by the compiled float-distance kernel
    (:func:`qbench.eval.buckets.rank_block`).

    n_rel (b,) int64; total_terms (b,) float64: the sum of every relevant item's precision
    term; cuts (C,) int64 ascending, cut_hits (b, C) int64, cut_terms (b, C) float64: relevant
    items and their term sum in the top c; pr11 (b, 11) float64; tie groups (G,) int64
    ``group_row``, ``group_start``, ``group_size`` with the relevant items and term sums
    before them (``rel_start``, ``terms_start``) and before their end (``rel_end``,
    ``terms_end``), sorted by (row, start).
    """

    n_rel: np.ndarray
    total_terms: np.ndarray
    cuts: np.ndarray
    cut_hits: np.ndarray
    cut_terms: np.ndarray
    pr11: np.ndarray
    group_row: np.ndarray
    group_start: np.ndarray
    group_size: np.ndarray
    rel_start: np.ndarray
    rel_end: np.ndarray
    terms_start: np.ndarray
    terms_end: np.ndarray
    level_hist = None


def _row_ptr(rows: np.ndarray, b: int) -> np.ndarray:
    ptr = np.zeros(b + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=b), out=ptr[1:])
    return ptr


def groups_from_levels(cum: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
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
        groups = groups_from_levels(cum)
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
        groups = groups_from_levels(cum)
    else:
        high = keys >> shift
        ties = torch.nonzero(high[:, 1:] == high[:, :-1]).cpu().numpy()
        groups = _groups_from_ties(ties[:, 0], ties[:, 1])
    return BlockRanking(nz[:, 1].astype(np.int64), ptr, *groups, level_hist)
