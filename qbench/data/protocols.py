"""Split protocols: query / train / validation / database index arrays, seeded and checked.

A protocol (a :class:`qbench.data.dataset.ProtocolSpec`) is materialised once per seed as index
arrays with a checksum; every method of a grid loads the same file. The validator checks
counts, that the query split is disjoint from train and database, and that the validation
split lies in the database and outside train.
"""

from __future__ import annotations

import hashlib
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qbench.core.atomic import atomic_write
from qbench.core.errors import QbenchError
from qbench.data.dataset import Dataset, ProtocolSpec

SPLIT_NAMES = ("query", "train", "val", "database")


@dataclass
class Splits:
    """Index arrays (int64, sorted) into the dataset's items, for one protocol and seed."""

    protocol: str
    seed: int
    query: np.ndarray
    train: np.ndarray
    val: np.ndarray
    database: np.ndarray

    @property
    def checksum(self) -> str:
        """sha256 over the four index arrays, in a fixed order."""
        h = hashlib.sha256()
        for name in SPLIT_NAMES:
            arr = np.ascontiguousarray(getattr(self, name), dtype=np.int64)
            h.update(name.encode())
            h.update(len(arr).to_bytes(8, "little"))
            h.update(arr.tobytes())
        return h.hexdigest()

    def summary(self) -> dict:
        """JSON-ready description recorded in every result."""
        out = {"protocol": self.protocol, "seed": self.seed, "checksum": self.checksum}
        out.update({f"n_{name}": int(len(getattr(self, name))) for name in SPLIT_NAMES})
        return out

    def save(self, path: Path) -> None:
        """Write atomically as .npz (indices plus checksum)."""
        with atomic_write(path) as fh:
            np.savez(
                fh,
                protocol=self.protocol,
                seed=self.seed,
                checksum=self.checksum,
                **{name: getattr(self, name) for name in SPLIT_NAMES},
            )

    @classmethod
    def load(cls, path: Path) -> Splits:
        try:
            with np.load(path) as z:
                splits = cls(
                    protocol=str(z["protocol"]),
                    seed=int(z["seed"]),
                    **{name: z[name].astype(np.int64) for name in SPLIT_NAMES},
                )
                stored = str(z["checksum"])
        except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as exc:
            raise QbenchError(f"protocol file {path} is unreadable or incomplete: {exc}; "
                              "delete the file to regenerate it") from None
        if splits.checksum != stored:
            raise QbenchError(
                f"protocol file {path}: checksum {splits.checksum[:12]} does not match the "
                f"stored {stored[:12]}; delete the file to regenerate it"
            )
        return splits


def _allocate(n: int, capacity: np.ndarray) -> np.ndarray:
    """Split n draws over groups: equal shares where capacity allows, else proportional."""
    groups = len(capacity)
    if capacity.sum() < n:
        raise QbenchError(f"protocol needs {n} items but only {int(capacity.sum())} remain")
    equal = np.full(groups, n // groups)
    equal[: n % groups] += 1
    if np.all(equal <= capacity):
        return equal
    share = capacity / capacity.sum() * n
    counts = np.floor(share).astype(int)
    order = np.argsort(-(share - counts), kind="stable")
    counts[order[: n - counts.sum()]] += 1
    return np.minimum(counts, capacity)


def draw_per_class(
    y: np.ndarray, available: np.ndarray, n: int, rng: np.random.Generator
) -> np.ndarray:
    """Draw n indices from ``available`` (bool mask), spread over classes / concepts."""
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    if y.ndim == 1:
        classes = np.unique(y[available])
        pools = [np.flatnonzero(available & (y == c)) for c in classes]
    else:
        pools = [np.flatnonzero(available & (y[:, c] > 0)) for c in range(y.shape[1])]
    counts = _allocate(n, np.array([len(p) for p in pools]))
    chosen: list[int] = []
    taken = np.zeros(len(y), dtype=bool)
    for pool, count in zip(pools, counts):
        pool = pool[~taken[pool]]  # multi-label items may sit in several pools
        pick = rng.choice(pool, size=min(count, len(pool)), replace=False)
        taken[pick] = True
        chosen.extend(pick.tolist())
    if len(chosen) < n:  # multi-label overlap left a shortfall: fill at random
        rest = np.flatnonzero(available & ~taken)
        chosen.extend(rng.choice(rest, size=n - len(chosen), replace=False).tolist())
    return np.sort(np.asarray(chosen, dtype=np.int64))


def make_splits(dataset: Dataset, spec: ProtocolSpec, seed: int) -> Splits:
    """Draw the splits of ``spec`` for ``dataset``, deterministically from ``seed``."""
    n = len(dataset)
    needed = spec.n_query + spec.n_train + spec.n_val
    if needed > n:
        raise QbenchError(
            f"protocol {spec.name} needs {needed} items (query {spec.n_query} + train "
            f"{spec.n_train} + val {spec.n_val}) but dataset {dataset.name} has {n}"
        )
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x51B5]))
    free = np.ones(n, dtype=bool)
    query = draw_per_class(dataset.y, free, spec.n_query, rng)
    free[query] = False
    train = draw_per_class(dataset.y, free, spec.n_train, rng)
    free[train] = False
    val = draw_per_class(dataset.y, free, spec.n_val, rng)
    db_mask = np.ones(n, dtype=bool)
    db_mask[query] = False
    if not spec.db_includes_train:
        db_mask[train] = False
    splits = Splits(spec.name, seed, query, train, val, np.flatnonzero(db_mask))
    validate_splits(splits, spec, n)
    return splits


def validate_splits(splits: Splits, spec: ProtocolSpec, n_items: int) -> None:
    """Raise :class:`QbenchError` unless ``splits`` fits ``spec`` on ``n_items`` items."""
    for name in SPLIT_NAMES:
        arr = getattr(splits, name)
        if arr.size and (arr.min() < 0 or arr.max() >= n_items):
            raise QbenchError(f"protocol {spec.name}: {name} indices outside 0..{n_items - 1}")
        if len(np.unique(arr)) != len(arr):
            raise QbenchError(f"protocol {spec.name}: {name} split has repeated indices")
    expected_db = n_items - spec.n_query - (0 if spec.db_includes_train else spec.n_train)
    expected = {"query": spec.n_query, "train": spec.n_train, "val": spec.n_val,
                "database": expected_db}
    for name, count in expected.items():
        got = len(getattr(splits, name))
        if got != count:
            raise QbenchError(
                f"protocol {spec.name}: {name} split has {got} items, expected {count}"
            )
    checks = [
        ("query", "train", False),
        ("query", "database", False),
        ("val", "train", False),
        ("val", "database", True),
    ]
    for a, b, subset in checks:
        inter = np.intersect1d(getattr(splits, a), getattr(splits, b))
        if subset and len(inter) != len(getattr(splits, a)):
            raise QbenchError(f"protocol {spec.name}: {a} split is not inside the {b} split")
        if not subset and len(inter):
            raise QbenchError(f"protocol {spec.name}: {a} and {b} splits share {len(inter)} items")


def _draw_key(dataset: Dataset, spec: ProtocolSpec) -> str:
    """12 hex digits naming everything a draw depends on besides the seed: the protocol's
    sizes and the labels (so a changed dataset or protocol never reuses a stale file)."""
    h = hashlib.sha256(repr(spec).encode())
    labels = np.ascontiguousarray(dataset.y)
    h.update(repr((labels.shape, labels.dtype.str)).encode())
    h.update(labels.tobytes())
    return h.hexdigest()[:12]


def materialise(dataset: Dataset, spec: ProtocolSpec, seed: int, cache_dir: Path | None) -> Splits:
    """The splits for (dataset, protocol, seed): loaded from ``cache_dir`` or drawn and saved."""
    if cache_dir is None:
        return make_splits(dataset, spec, seed)
    path = Path(cache_dir) / f"{dataset.name}-{spec.name}-seed{seed}-{_draw_key(dataset, spec)}.npz"
    if path.exists():
        splits = Splits.load(path)
        validate_splits(splits, spec, len(dataset))
        return splits
    splits = make_splits(dataset, spec, seed)
    splits.save(path)
    return splits
