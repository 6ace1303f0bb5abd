"""The value a dataset plugin returns, and the base class dataset plugins derive from (with
its cached loading, :meth:`DatasetPlugin.load_cached`)."""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import os
import stat
from dataclasses import InitVar, dataclass, field
from pathlib import Path

import numpy as np

from qbench.core.errors import QbenchError
from qbench.data import arraycache
from qbench.data.arraycache import ArrayCache, arrays_checksum, digest


@dataclass(frozen=True)
class ProtocolSpec:
    """Sizes of a named split protocol (SPEC §5).

    n_query / n_train / n_val items are drawn per class (single-label: equal numbers per
    class; multi-label: per concept, see :mod:`qbench.data.protocols`). The validation split is
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
    X and y may be read-only memory maps (a dataset-cache hit).
    known_checksum: :attr:`checksum` when the loader already knows it (a cache entry's).
    """

    name: str
    X: np.ndarray
    y: np.ndarray
    modality: str
    source: str = ""
    class_names: list[str] = field(default_factory=list)
    known_checksum: InitVar[str | None] = None

    def __post_init__(self, known_checksum: str | None) -> None:
        self._checksum = known_checksum
        if len(self.X) != len(self.y):
            raise QbenchError(
                f"dataset {self.name}: {len(self.X)} items but {len(self.y)} labels"
            )
        if self.modality not in ("vector", "image"):
            raise ValueError(f"modality must be 'vector' or 'image', got {self.modality!r}")

    @property
    def checksum(self) -> str:
        """sha256 hex of the decoded X and y (dtype, shape and bytes): identifies the data.

        Read from the cache entry on a dataset-cache hit; otherwise computed on first use
        (about 1 s per GB).
        """
        if self._checksum is None:
            self._checksum = arrays_checksum({"X": self.X, "y": self.y})
        return self._checksum

    @property
    def multilabel(self) -> bool:
        return self.y.ndim == 2

    def __len__(self) -> int:
        return len(self.X)


class DatasetPlugin:
    """Base of dataset plugins.

    Subclasses set ``name``, ``description``, ``params`` (tuple of
    :class:`qbench.registry.Param`), ``protocols`` (dict name -> :class:`ProtocolSpec`),
    ``default_protocol``, and implement :meth:`load`. Plugins that read files that are slow
    to verify or decode also implement :meth:`source_files`, which lets :meth:`load_cached`
    keep the decoded arrays.
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
        """Read, verify and decode the source: the dataset, uncached."""
        raise NotImplementedError

    def identity_params(self) -> dict:
        """The parameters as they identify the data (:mod:`qbench.run.identity`): ``params``;
        a plugin that reads a file or folder named relative to ``--data-dir`` gives it
        resolved, so that the same ``-D path`` under two data folders is two runs."""
        return dict(self.params)

    def source_files(self) -> list[Path] | None:
        """The files :meth:`load` reads, located (downloaded if need be) but not read.

        None (the default): the dataset is cheap to build and :meth:`load_cached` does not
        cache it.
        """
        return None

    def load_cached(self, cache_dir: Path | None) -> Dataset:
        """The dataset, verified and decoded once per machine: :meth:`load` through a cache.

        ``cache_dir``: the cache root; entries go to ``<cache_dir>/datasets/<name>/``.
        None turns caching off. A plugin without :meth:`source_files` is not cached.

        The entry's key hashes the dataset name and parameters, the source code of the
        plugin's module and of :mod:`qbench.data.arraycache`, and each source file's path, size,
        mtime, ctime and inode. A miss runs :meth:`load` (which verifies the source, e.g.
        CIFAR-10's md5) and stores X and y; the entry it supersedes (same dataset,
        parameters and source paths, older source or code) is removed. A hit reads neither
        the source nor its checksum: X and y are memory-mapped from the entry after their
        sha256 is checked against the entry's manifest. A changed source file has a new
        identity, hence a miss and a new verification. A corrupt entry is reported on stderr
        and rebuilt. An unwritable cache folder raises :class:`QbenchError` naming it
        before anything is decoded.
        """
        sources = self.source_files() if cache_dir is not None else None
        identity = _identity(sources) if sources is not None else None
        if identity is None:  # not cacheable, or a source is missing: load() explains
            return self.load()
        slot = digest({"dataset": self.name, "params": self.params,
                       "paths": [ident[0] for ident in identity]})
        key = digest({"slot": slot, "code": _code_digest(type(self)), "sources": identity})
        cache = ArrayCache(Path(cache_dir) / "datasets" / self.name)
        entry = cache.get(key)
        if entry is not None:
            meta = entry.meta
            return Dataset(self.name, entry.arrays["X"], entry.arrays["y"], meta["modality"],
                           source=meta["source"], class_names=meta["class_names"],
                           known_checksum=entry.checksum)
        cache.check_writable()
        dataset = self.load()
        if _identity(sources) != identity:  # the source changed while it was decoded
            return dataset
        meta = {"dataset": self.name, "params": self.params, "slot": slot,
                "sources": identity, "source": dataset.source,
                "modality": dataset.modality, "class_names": dataset.class_names}
        checksum = cache.put(key, {"X": dataset.X, "y": dataset.y}, meta)
        cache.remove_where(lambda other, other_meta: other != key
                           and other_meta.get("slot") == slot)
        return dataclasses.replace(dataset, known_checksum=checksum)

    def protocol(self, name: str | None) -> ProtocolSpec:
        from qbench.core.errors import choice_error

        name = name or self.default_protocol
        specs = self.protocol_specs()
        if name not in specs:
            raise choice_error(f"protocol for dataset {self.name}:", name, specs)
        return specs[name]

    def protocol_specs(self) -> dict[str, ProtocolSpec]:
        """The protocols this dataset offers (override when they depend on params)."""
        return self.protocols


def _identity(paths: list[Path]) -> list[list] | None:
    """[absolute path, size, mtime_ns, ctime_ns, inode] per file; None if one is missing.

    Any rewrite or replacement of a file changes at least one of these (ctime cannot be
    set back by the user), so a changed source is never taken for the cached one.
    """
    out = []
    folders: dict[str, str] = {}  # one resolve per folder: 60,000 images in 0.3 s, not 3 s
    for path in paths:
        try:
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                resolved, st = str(Path(path).resolve()), os.stat(path)
            else:
                folder, name = os.path.split(os.fspath(path))
                if folder not in folders:
                    folders[folder] = str(Path(folder or ".").resolve())
                resolved = os.path.join(folders[folder], name)
        except OSError:
            return None
        out.append([resolved, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino])
    return out


def _code_digest(plugin_cls: type) -> str:
    """sha256 of the source of the plugin's module and of the array cache."""
    h = hashlib.sha256()
    for module_file in (inspect.getsourcefile(plugin_cls), arraycache.__file__):
        h.update(Path(module_file).read_bytes())
    return h.hexdigest()
