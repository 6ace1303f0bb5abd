"""scikit-learn's handwritten digits: the embedded default dataset (works offline)."""

from __future__ import annotations

import numpy as np

from qbench.data.dataset import Dataset, DatasetPlugin, ProtocolSpec
from qbench.registry import DATASETS


@DATASETS.register
class Digits(DatasetPlugin):
    """1,797 8x8 digit images as 64-d vectors scaled to [0, 1], 10 classes."""

    name = "digits"
    description = "scikit-learn load_digits: 1797 8x8 digits as 64-d vectors (embedded, offline)"
    params = ()
    protocols = {
        "standard": ProtocolSpec(
            "standard", n_query=100, n_train=500, n_val=100,
            description="100 query (10/class) / 500 train / database = rest incl. train",
        )
    }

    def load(self) -> Dataset:
        from sklearn.datasets import load_digits

        bunch = load_digits()
        X = (bunch.data / 16.0).astype(np.float32)
        return Dataset(
            self.name, X, bunch.target.astype(np.int64), "vector",
            source="sklearn.datasets.load_digits",
            class_names=[str(c) for c in bunch.target_names],
        )
