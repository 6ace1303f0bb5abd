"""Any precomputed feature file: an ``.npz`` with ``X`` (n, d) and ``y`` (n,) or (n, C).

``y`` holds integer class ids (single-label) or a 0/1 multi-hot matrix (multi-label).
The protocol sizes come from the plugin's parameters. The array checks here are shared by
the other user-file datasets (:mod:`qbench.datasets.nus_wide`).
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from qbench.core.errors import QbenchError
from qbench.core.labels import as_labels
from qbench.data.dataset import Dataset, DatasetPlugin, ProtocolSpec
from qbench.registry import DATASETS, Param


def check_vectors(X: np.ndarray, where: str) -> np.ndarray:
    """``X`` as (n, d) float32; anything else, or a NaN / infinity, raises QbenchError.

    ``where`` names the file and key in errors, e.g. ``"feats.npz: key 'X'"``.
    """
    if X.ndim != 2:
        raise QbenchError(f"{where}: shape {X.shape}, expected (n, d) vectors")
    if not (np.issubdtype(X.dtype, np.floating) or np.issubdtype(X.dtype, np.integer)):
        raise QbenchError(f"{where}: dtype {X.dtype}, expected a float or integer array")
    X = np.asarray(X, dtype=np.float32)
    if not np.isfinite(X).all():
        raise QbenchError(f"{where}: contains NaN or infinite values (or overflows float32)")
    return X


def check_labels(y: np.ndarray, n_items: int, where: str) -> np.ndarray:
    """``y`` as (n,) int64 class ids or (n, C) uint8 multi-hot; raises QbenchError otherwise."""
    return as_labels(y, where, n_items)


def load_npz(path: Path, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The arrays ``keys`` of the ``.npz`` at ``path`` (no pickled objects allowed)."""
    if not path.is_file():
        raise QbenchError(f"{path}: file not found, expected an .npz with keys {', '.join(keys)}")
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [k for k in keys if k not in npz.files]
            if missing:
                raise QbenchError(
                    f"{path}: no key {missing[0]!r}, expected keys {', '.join(keys)} "
                    f"(found: {', '.join(npz.files) or 'none'})"
                )
            out = {}
            for key in keys:
                try:
                    out[key] = npz[key]
                except ValueError as exc:
                    raise QbenchError(f"{path}: key {key!r} is unreadable ({exc})") from None
            return out
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise QbenchError(f"{path}: not a readable .npz file ({exc})") from None


@DATASETS.register
class Features(DatasetPlugin):
    """Precomputed vectors from an ``.npz`` file; protocol sizes set by parameters."""

    name = "features"
    description = "your own vectors: an .npz with X (n, d) and y (n,) or multi-hot (n, C)"
    params = (
        Param("path", str, "", "the .npz file (relative paths resolve under --data-dir)"),
        Param("n_query", int, 1000, "query items", minimum=1),
        Param("n_train", int, 5000, "training items", minimum=2),
        Param("n_val", int, 1000, "validation items (taken from the database)",
              minimum=1),
        Param("map_k", int, 0, "K of the headline MAP@K (0: the whole database)", minimum=0),
        Param("db_includes_train", bool, True, "the database contains the training items"),
    )

    def protocol_specs(self) -> dict[str, ProtocolSpec]:
        p = self.params
        for key in ("n_query", "n_train", "n_val", "map_k"):
            if p[key] < 0:
                raise QbenchError(f"parameter {key} of dataset features: {p[key]}, expected >= 0")
        return {
            "standard": ProtocolSpec(
                "standard", n_query=p["n_query"], n_train=p["n_train"], n_val=p["n_val"],
                db_includes_train=p["db_includes_train"], map_k=p["map_k"] or None,
                description="sizes from the parameters n_query / n_train / n_val",
            )
        }

    def resolve_path(self) -> Path:
        """The file named by the ``path`` parameter (relative: under ``--data-dir``)."""
        if not self.params["path"]:
            raise QbenchError(
                "dataset features needs its file: pass -D path=FILE.npz (an .npz with X and y)"
            )
        path = Path(self.params["path"]).expanduser()
        if not path.is_absolute() and self.data_dir is not None:
            path = self.data_dir / path
        return path

    def identity_params(self) -> dict:
        if not self.params["path"]:
            return dict(self.params)
        return {**self.params, "path": str(self.resolve_path().resolve())}

    def load(self) -> Dataset:
        path = self.resolve_path()
        arrays = load_npz(path, ("X", "y"))
        X = check_vectors(arrays["X"], f"{path}: key 'X'")
        y = check_labels(arrays["y"], len(X), f"{path}: key 'y'")
        return Dataset(self.name, X, y, "vector", source=str(path))
