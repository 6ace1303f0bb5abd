"""NUS-WIDE (multi-label web images) from files the user provides in ``--data-dir``.

NUS-WIDE cannot be downloaded automatically (its images are Flickr URLs), so the user
brings either

- ``features.npy`` (n, d) float vectors or (n, C, H, W) uint8 images, plus ``labels.npy``
  (n, L) 0/1 multi-hot; or
- ``nus_wide.npz`` with the same two arrays under keys ``X`` and ``y``.

The common protocol uses the 21 most frequent of the 81 concepts. With ``L = 81`` and
``concepts=21`` (the default), the 21 columns with the most positive items are kept (in
their original order; ties go to the lower column) and items with none of them are
dropped. ``L = 21`` is taken as already reduced. Items with no label at all are always
dropped: no item could be relevant to them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from qbench.core.errors import QbenchError
from qbench.data.dataset import Dataset, DatasetPlugin, ProtocolSpec
from qbench.registry import DATASETS, Param

from .features import check_labels, check_vectors, load_npz

NPZ_FILE = "nus_wide.npz"
X_FILE = "features.npy"
Y_FILE = "labels.npy"
ALL_CONCEPTS = 81
TOP_CONCEPTS = 21


def most_frequent_concepts(y: np.ndarray, k: int) -> np.ndarray:
    """Sorted column indices of the ``k`` concepts of (n, L) multi-hot ``y`` with most items."""
    counts = y.sum(axis=0, dtype=np.int64)
    order = np.argsort(-counts, kind="stable")
    return np.sort(order[:k])


def _load_npy(path: Path, mmap: bool) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise QbenchError(f"{path}: not a readable .npy array ({exc})") from None


@DATASETS.register
class NusWide(DatasetPlugin):
    """NUS-WIDE with 21 concepts (multi-hot labels) from user-provided files."""

    name = "nus-wide"
    description = "NUS-WIDE, 21 most frequent concepts, multi-label (your files in --data-dir)"
    params = (
        Param(
            "concepts", int, TOP_CONCEPTS,
            "concepts kept from an 81-concept label file (21: the most frequent)",
            choices=(TOP_CONCEPTS, ALL_CONCEPTS),
        ),
    )
    protocols = {
        "standard": ProtocolSpec(
            "standard", n_query=2100, n_train=10500, n_val=2100, map_k=5000,
            description="2100 query (100/concept) / 10500 train (500/concept) / "
            "database = rest incl. train; MAP@5000",
        )
    }

    def load(self) -> Dataset:
        X, y, source = self._read()
        where_y = f"{source}: labels"
        y = check_labels(y, len(X), where_y)
        if y.ndim != 2 or y.shape[1] not in (TOP_CONCEPTS, ALL_CONCEPTS):
            raise QbenchError(
                f"{where_y}: shape {y.shape}, expected (n, {TOP_CONCEPTS}) or "
                f"(n, {ALL_CONCEPTS}) multi-hot concepts"
            )
        concepts = self.params["concepts"]
        if y.shape[1] == TOP_CONCEPTS and concepts == ALL_CONCEPTS:
            raise QbenchError(
                f"{where_y}: {TOP_CONCEPTS} concept columns, but -D concepts={ALL_CONCEPTS} "
                f"needs all {ALL_CONCEPTS}"
            )
        if y.shape[1] == ALL_CONCEPTS and concepts == TOP_CONCEPTS:
            y = y[:, most_frequent_concepts(y, TOP_CONCEPTS)]
        keep = np.flatnonzero(y.any(axis=1))
        if keep.size == 0:
            raise QbenchError(f"{where_y}: no item has any of the {y.shape[1]} concepts")
        y = np.ascontiguousarray(y[keep])
        X = np.asarray(X[keep])
        where_x = f"{source}: features"
        if X.ndim == 4:
            if X.dtype != np.uint8:
                raise QbenchError(f"{where_x}: images of dtype {X.dtype}, expected uint8")
            return Dataset(self.name, X, y, "image", source=source)
        X = check_vectors(X, where_x)
        return Dataset(self.name, X, y, "vector", source=source)

    def _read(self) -> tuple[np.ndarray, np.ndarray, str]:
        """(X, y, source) from ``--data-dir``; X may be memory-mapped."""
        expected = f"{X_FILE} + {Y_FILE}, or {NPZ_FILE} with keys X and y"
        if self.data_dir is None:
            raise QbenchError(
                f"dataset nus-wide needs --data-dir DIR holding {expected}; "
                "NUS-WIDE cannot be downloaded automatically"
            )
        npz = self.data_dir / NPZ_FILE
        if npz.is_file():
            arrays = load_npz(npz, ("X", "y"))
            return arrays["X"], arrays["y"], str(npz)
        x_path, y_path = self.data_dir / X_FILE, self.data_dir / Y_FILE
        if x_path.is_file() and y_path.is_file():
            return _load_npy(x_path, mmap=True), _load_npy(y_path, mmap=False), str(self.data_dir)
        raise QbenchError(f"--data-dir {self.data_dir}: no NUS-WIDE files, expected {expected}")
