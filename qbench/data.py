"""The value a dataset plugin returns, and the base class dataset plugins derive from."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from qbench.errors import QbenchError


@dataclass(frozen=True)
class ProtocolSpec:
    """Sizes of a named split protocol (SPEC §5).

    n_query / n_train / n_val items are drawn per class (single-label: equal numbers per
    class; multi-label: per concept, see :mod:`qbench.protocols`). The validation split is
    drawn from the database items outside the training split; it stays in the database.
    ``db_includes_train``: the database is every item except the queries (True) or every
    item except queries and training items (False).
    ``map_k``: the cut-off K of the protocol's headline MAP (None: the whole database).
    """

    name: str
    n_query: int
    n_train: int
    n_val: int
    db_includes_train: bool = True
    map_k: int | None = None
    description: str = ""


@dataclass
class Dataset:
    """A loaded dataset: all items with labels, before any split.

    X: (n, d) float32 vectors, or (n, C, H, W) images (uint8 or float32 in [0, 1]).
    y: (n,) int64 class ids, or (n, L) uint8 multi-hot labels.
    modality: "vector" or "image".
    """

    name: str
    X: np.ndarray
    y: np.ndarray
    modality: str
    source: str = ""
    class_names: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if len(self.X) != len(self.y):
            raise QbenchError(
                f"dataset {self.name}: {len(self.X)} items but {len(self.y)} labels"
            )
        if self.modality not in ("vector", "image"):
            raise ValueError(f"modality must be 'vector' or 'image', got {self.modality!r}")

    @property
    def multilabel(self) -> bool:
        return self.y.ndim == 2

    def __len__(self) -> int:
        return len(self.X)


class DatasetPlugin:
    """Base of dataset plugins.

    Subclasses set ``name``, ``description``, ``params`` (tuple of
    :class:`qbench.registry.Param`), ``protocols`` (dict name -> :class:`ProtocolSpec`),
    ``default_protocol``, and implement :meth:`load`.
    """

    name: str = ""
    description: str = ""
    params: tuple = ()
    protocols: dict[str, ProtocolSpec] = {}
    default_protocol: str = "standard"

    def __init__(self, params: dict, data_dir: Path | None = None):
        self.params = params
        self.data_dir = Path(data_dir) if data_dir is not None else None

    def load(self) -> Dataset:
        raise NotImplementedError

    def protocol(self, name: str | None) -> ProtocolSpec:
        from qbench.errors import choice_error

        name = name or self.default_protocol
        specs = self.protocol_specs()
        if name not in specs:
            raise choice_error(f"protocol for dataset {self.name}:", name, specs)
        return specs[name]

    def protocol_specs(self) -> dict[str, ProtocolSpec]:
        """The protocols this dataset offers (override when they depend on params)."""
        return self.protocols
