"""Gaussian clusters, for tests and scale runs."""

from __future__ import annotations

import os

import numpy as np

from qbench.core.errors import QbenchError
from qbench.data.dataset import Dataset, DatasetPlugin, ProtocolSpec
from qbench.registry import DATASETS, Param

MAX_ITEMS = 10_000_000
"""Most items (and query, training, validation items) a synthetic dataset may have."""
MAX_DIM = 100_000
"""Most dimensions (and classes) a synthetic dataset may have."""


def available_bytes() -> int | None:
    """Bytes of memory the system can still give (``MemAvailable``); None where unknown."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def needed_bytes(n_items: int, dim: int, n_classes: int, multilabel: bool) -> int:
    """Peak bytes :meth:`Synthetic.load` takes: float64 noise, centre and sum arrays plus
    the float32 copy, and the multi-hot labels."""
    return n_items * dim * (8 + 4 + 8 + 4) + n_items * 8 + (
        n_items * n_classes if multilabel else 0)


@DATASETS.register
class Synthetic(DatasetPlugin):
    """n_items vectors in `dim` dimensions around `n_classes` Gaussian centres.

    Centres are drawn from N(0, I); items are centre + `noise` * N(0, I). With
    `multilabel`, each item also carries a second, random label (multi-hot labels).
    """

    name = "synthetic"
    description = "Gaussian clusters of configurable size (tests, scale runs)"
    params = (
        Param("n_items", int, 2000, "number of items", minimum=1,
              maximum=MAX_ITEMS),
        Param("dim", int, 32, "input dimension", minimum=1, maximum=MAX_DIM),
        Param("n_classes", int, 10, "number of clusters / classes", minimum=1,
              maximum=MAX_DIM),
        Param("noise", float, 1.0, "standard deviation around each centre", minimum=0.0),
        Param("multilabel", bool, False, "add a random second label per item"),
        Param("n_query", int, 100, "query items", minimum=1, maximum=MAX_ITEMS),
        Param("n_train", int, 500, "training items", minimum=2, maximum=MAX_ITEMS),
        Param("n_val", int, 100, "validation items", minimum=1, maximum=MAX_ITEMS),
        Param("data_seed", int, 0, "seed of the data itself (splits use --seed)"),
    )

    def protocol_specs(self) -> dict[str, ProtocolSpec]:
        p = self.params
        return {
            "standard": ProtocolSpec(
                "standard", n_query=p["n_query"], n_train=p["n_train"], n_val=p["n_val"],
                description="configurable counts; database = rest incl. train",
            )
        }

    def load(self) -> Dataset:
        p = self.params
        need = needed_bytes(p["n_items"], p["dim"], p["n_classes"], p["multilabel"])
        have = available_bytes()
        if have is not None and need > have:
            raise QbenchError(
                f"dataset synthetic: n_items={p['n_items']}, dim={p['dim']} need about "
                f"{need / 2**30:.1f} GiB of memory, but only {have / 2**30:.1f} GiB is "
                "available; allowed: smaller n_items or dim")
        rng = np.random.default_rng(p["data_seed"])
        centres = rng.standard_normal((p["n_classes"], p["dim"])).astype(np.float32)
        y = rng.integers(0, p["n_classes"], size=p["n_items"])
        X = centres[y] + p["noise"] * rng.standard_normal((p["n_items"], p["dim"]))
        labels = y.astype(np.int64)
        if p["multilabel"]:
            hot = np.zeros((p["n_items"], p["n_classes"]), dtype=np.uint8)
            hot[np.arange(p["n_items"]), y] = 1
            hot[np.arange(p["n_items"]), rng.integers(0, p["n_classes"], p["n_items"])] = 1
            labels = hot
        return Dataset(self.name, X.astype(np.float32), labels, "vector", source="generated")
