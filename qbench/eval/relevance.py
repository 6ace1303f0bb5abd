"""Relevance: which database items share a label with each query, one block of queries at a
time.

:class:`Labels` prepares the query and database labels once (class ids, or multi-hot
labels as a matrix product) and serves each block's (b, n_db) bool relevance to the
numpy and torch rankings (:mod:`qbench.eval.ranking`) and as label masks to the compiled
Hamming kernel (:mod:`qbench.eval.kernels`); :func:`relevance` is the one-call form.
"""

from __future__ import annotations

import numpy as np

from qbench.core.errors import QbenchError
from qbench.core.labels import as_labels


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
