"""The selection pool: which items model selection's validation queries search (SPEC §4).

Database items outside the training split and outside the validation queries themselves
(all of them, or a seeded per-class sample capped for speed). The pool never holds training
items, which the network has memorised, nor query items.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qbench.core.errors import QbenchError
from qbench.data.protocols import Splits, draw_per_class

DEFAULT_POOL_SIZE = 10_000
"""Default cap on the selection pool (a seeded per-class sample above it; 0: no cap)."""


@dataclass
class SelectionPool:
    """Index arrays (into the dataset) of the validation queries and the pool they search."""

    val: np.ndarray
    pool: np.ndarray
    overlaps_train: bool
    cap: int = DEFAULT_POOL_SIZE

    def summary(self) -> dict:
        return {"n_val_queries": int(len(self.val)), "n_pool": int(len(self.pool)),
                "pool_size": self.cap, "pool_overlaps_train": self.overlaps_train}


def _has_positive(val_labels: np.ndarray, pool_labels: np.ndarray) -> np.ndarray:
    """(n_val,) bool: whether each validation query has a relevant item in the pool."""
    if val_labels.ndim == 1:
        return np.isin(val_labels, np.unique(pool_labels))
    present = (pool_labels > 0).any(axis=0)
    return ((val_labels > 0) & present[None, :]).any(axis=1)


def selection_pool(splits: Splits, labels: np.ndarray, *, cap: int = DEFAULT_POOL_SIZE,
                   seed: int = 0) -> SelectionPool:
    """The pool of ``splits``: database minus train minus val, per-class sampled to ``cap``.

    ``labels``: the dataset's labels (all items). Raises :class:`QbenchError` when a
    validation query has no relevant item in the pool (its AP would be undefined).
    """
    if cap < 0:
        raise QbenchError(f"--pool-size must be >= 0 (0: no cap), got {cap}")
    pool = np.setdiff1d(np.setdiff1d(splits.database, splits.train), splits.val)
    if cap and len(pool) > cap:
        available = np.zeros(len(labels), dtype=bool)
        available[pool] = True
        rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5E1EC7]))
        pool = draw_per_class(labels, available, cap, rng)
    missing = ~_has_positive(labels[splits.val], labels[pool])
    if missing.any():
        raise QbenchError(
            f"selection pool of {len(pool)} items holds no relevant item for "
            f"{int(missing.sum())} of {len(splits.val)} validation queries (e.g. item "
            f"{int(splits.val[missing][0])}); raise --pool-size (0: all) or use a larger "
            "database")
    overlaps = bool(np.intersect1d(pool, splits.train).size)
    return SelectionPool(splits.val, pool, overlaps, cap)
