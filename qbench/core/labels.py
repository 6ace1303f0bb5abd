"""Label arrays: the one check of what qbench accepts as labels."""

from __future__ import annotations

import numpy as np

from qbench.core.errors import QbenchError


def as_labels(y, where: str, n_items: int | None = None) -> np.ndarray:
    """``y`` as (n,) int64 class ids (>= 0) or (n, C) uint8 multi-hot labels.

    Float arrays are accepted when they hold whole numbers. Anything else raises
    :class:`QbenchError` with ``where`` (e.g. a file and key) at the start of the message;
    ``n_items``, when given, is the number of labels expected.
    """
    a = np.asarray(y)
    if a.ndim not in (1, 2):
        raise QbenchError(f"{where}: shape {a.shape}, expected (n,) class ids or (n, C) multi-hot")
    if n_items is not None and len(a) != n_items:
        raise QbenchError(f"{where}: {len(a)} labels for {n_items} items, expected equal counts")
    if a.dtype.kind == "f":
        if not np.isfinite(a).all() or not np.array_equal(a, np.round(a)):
            raise QbenchError(f"{where}: non-integer values (dtype {a.dtype}); class ids must "
                              "be integers")
    elif a.dtype.kind not in "iub":
        raise QbenchError(f"{where}: dtype {a.dtype}, expected integer labels")
    if a.ndim == 2:
        if not np.isin(a, (0, 1)).all():
            raise QbenchError(f"{where}: multi-hot labels must be 0 or 1")
        return a.astype(np.uint8)
    if a.size and a.min() < 0:
        raise QbenchError(f"{where}: class id {int(a.min())}, expected ids >= 0")
    return a.astype(np.int64)
