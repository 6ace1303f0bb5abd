"""What one run hands its method: the data, the splits, the code budget and how models are
selected (:class:`RunContext`). A plain value: the training engine and the methods read it,
neither knows where it came from."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from qbench.data.dataset import Dataset
from qbench.data.pool import SelectionPool, selection_pool
from qbench.data.protocols import Splits


@dataclass
class RunContext:
    """Everything a method may use: data, splits, code budget, seed, device, and how
    models are selected: ``select`` ("best" or "last"), the selection ``pool``, the
    stage-1 encoder ``cache`` (a :class:`qbench.train.encoder_cache.EncoderCache`, or None)."""

    dataset: Dataset
    splits: Splits
    bits: int
    seed: int = 0
    device: str = "cpu"
    progress: bool = False
    select: str = "best"
    pool: SelectionPool | None = None
    cache: object | None = None
    selection_only: bool = False  # stop after model selection (tuning trials)
    report: Callable[[int, float], bool] | None = None
    """A tuning trial's reporter: called with (epoch, validation value) as each candidate
    is scored during training; True means the pruner stops the training there."""

    def __post_init__(self) -> None:
        if self.pool is None:
            self.pool = selection_pool(self.splits, self.dataset.y, seed=self.splits.seed)

    def x(self, split: str) -> np.ndarray:
        """Inputs of a split ("train", "val", "query", "database")."""
        return self.dataset.X[getattr(self.splits, split)]

    def y(self, split: str) -> np.ndarray:
        """Labels of a split."""
        return self.dataset.y[getattr(self.splits, split)]

    def flat_x(self, split: str) -> np.ndarray:
        """(n, d) float32 raw inputs of a split, images flattened (unsupervised baselines)."""
        x = self.x(split)
        return x.reshape(len(x), -1).astype(np.float32)
