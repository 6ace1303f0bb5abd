"""Load codes or embeddings produced elsewhere (``qbench evaluate CODES.npz``).

The ``.npz`` archive holds ``query_labels`` and ``db_labels`` ((n,) integer class ids or
(n, C) multi-hot {0,1}) and one of three representations:

- ``query_bits`` + ``db_bits``: (n, B) in {0, 1} or {-1, +1} -> :class:`BinaryCodes`
- ``query_emb`` + ``db_emb``: (n, D) float -> :class:`FloatCodes` (metric "l2")
- ``query_emb`` + ``db_codes`` (n_db, M) ints + ``codebooks`` (M, K, D/M) float, K = 2^b
  -> :class:`PQCodes` (searched by ADC); with full-width ``codebooks`` (M, K, D), M > 1:
  additive codes (residual quantization, LSQ; each item the sum of its M codewords) ->
  :class:`AQCodes` (searched by ADC). With M = 1 both readings are the same quantizer.

Every problem is a :class:`QbenchError` on one line naming the file, the key, and what
was expected against what was found.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from qbench.core.codes import AQCodes, BinaryCodes, FloatCodes, PQCodes
from qbench.core.errors import QbenchError
from qbench.core.labels import as_labels

KINDS = {
    "binary": ("query_bits", "db_bits"),
    "pq": ("query_emb", "db_codes", "codebooks"),
    "float": ("query_emb", "db_emb"),
}


class _Archive:
    """The arrays of one .npz file, read one key at a time with file-naming errors."""

    def __init__(self, path: Path):
        self.path = path
        if not path.is_file():
            raise QbenchError(f"{path}: no such file")
        with path.open("rb") as f:
            magic = f.read(6)
        if magic == b"\x93NUMPY":
            raise QbenchError(f"{path}: expected a .npz archive of named arrays, found a "
                              "single .npy array")
        if not zipfile.is_zipfile(path):
            raise QbenchError(f"{path}: not a .npz archive (expected a zip file of .npy arrays)")
        try:
            data = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
            raise QbenchError(f"{path}: not a readable .npz archive ({_one_line(exc)})") from None
        with data:
            self.keys = set(data.files)
            self.arrays = {}
            for key in data.files:
                try:
                    self.arrays[key] = data[key]
                except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
                    raise QbenchError(f"{path}: key '{key}' cannot be read "
                                      f"({_one_line(exc)})") from None

    def error(self, key: str, expected: str, found: str) -> QbenchError:
        return QbenchError(f"{self.path}: key '{key}': expected {expected}, found {found}")

    def get(self, key: str, kinds: str, ndim: int, shape_hint: str) -> np.ndarray:
        """The array under ``key``, checked for dtype kind (numpy letters) and ndim."""
        if key not in self.arrays:
            raise QbenchError(f"{self.path}: missing key '{key}' (expected shape {shape_hint}); "
                              f"keys present: {', '.join(sorted(self.keys)) or 'none'}")
        a = self.arrays[key]
        if a.ndim != ndim or a.shape[0] == 0 or 0 in a.shape:
            raise self.error(key, f"a non-empty array of shape {shape_hint}",
                             f"shape {a.shape}")
        if a.dtype.kind not in kinds:
            raise self.error(key, f"shape {shape_hint} of {_kind_names(kinds)}",
                             f"dtype {a.dtype}")
        if a.dtype.kind == "f" and not np.all(np.isfinite(a)):
            raise self.error(key, "finite values", "NaN or infinity")
        return a


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _kind_names(kinds: str) -> str:
    names = {"b": "booleans", "i": "integers", "u": "integers", "f": "floats"}
    return " or ".join(dict.fromkeys(names[k] for k in kinds))


def _bits(archive: _Archive, key: str) -> np.ndarray:
    a = archive.get(key, "biuf", 2, "(n, B)")
    values = np.unique(a)
    if np.all(np.isin(values, (0, 1))) or np.all(np.isin(values, (-1, 1))):
        return (a > 0).astype(np.uint8)
    shown = ", ".join(str(v) for v in values[:5]) + (", ..." if len(values) > 5 else "")
    raise archive.error(key, "values in {0, 1} or in {-1, +1}", f"values {{{shown}}}")


def _labels(archive: _Archive, key: str, n: int, n_name: str) -> np.ndarray:
    if key not in archive.arrays:
        archive.get(key, "biuf", 1, f"({n_name},) or ({n_name}, C)")  # raises: missing
    a = archive.arrays[key]
    hint = f"({n_name}={n},) class ids or ({n_name}={n}, C) multi-hot"
    if a.ndim not in (1, 2) or len(a) != n or 0 in a.shape:
        raise archive.error(key, hint, f"shape {a.shape}")
    return as_labels(a, f"{archive.path}: key '{key}'")


def _check_width(archive: _Archive, key: str, a: np.ndarray, width: int, hint: str):
    """Raise unless a.shape[1] == width; hint names the expected shape, e.g. "(n_db, B=12)"."""
    if a.shape[1] != width:
        raise archive.error(key, f"shape {hint}", f"shape {a.shape}")


def load_codes_npz(path) -> tuple[BinaryCodes | FloatCodes | PQCodes | AQCodes, np.ndarray,
                                 np.ndarray]:
    """Read ``path`` (.npz, see the module doc) -> (codes, query_labels, db_labels).

    query_labels: (n_query,) int64 or (n_query, C) uint8; db_labels likewise for n_db.
    Raises QbenchError (one line naming file, key, expected and found) on any problem.
    """
    archive = _Archive(Path(path))
    keys = archive.keys
    # the keys that mark a kind: its own, not query_emb, which float and PQ share
    kinds = {kind: sorted(keys & (set(names) - {"query_emb"})) for kind, names in KINDS.items()}
    kinds = {kind: marks for kind, marks in kinds.items() if marks}
    if len(kinds) > 1:
        found = "; ".join(f"{kind}: {', '.join(k)}" for kind, k in kinds.items())
        raise QbenchError(f"{archive.path}: holds more than one kind of codes ({found}); "
                          "allowed: one kind per file")
    if kinds:
        kind = next(iter(kinds))
    elif "query_emb" in keys:
        kind = "float"
    else:
        raise QbenchError(
            f"{archive.path}: no codes found; expected keys query_bits + db_bits, "
            "query_emb + db_emb, or query_emb + db_codes + codebooks; keys present: "
            f"{', '.join(sorted(keys)) or 'none'}")

    if kind == "binary":
        q, db = _bits(archive, "query_bits"), _bits(archive, "db_bits")
        _check_width(archive, "db_bits", db, q.shape[1],
                     f"(n_db, B={q.shape[1]}) as in 'query_bits'")
        codes = BinaryCodes(q, db)
    elif kind == "float":
        q = archive.get("query_emb", "iuf", 2, "(n_query, D)")
        db = archive.get("db_emb", "iuf", 2, "(n_db, D)")
        _check_width(archive, "db_emb", db, q.shape[1],
                     f"(n_db, D={q.shape[1]}) as in 'query_emb'")
        codes = FloatCodes(q.astype(np.float32), db.astype(np.float32), metric="l2")
    else:
        q = archive.get("query_emb", "iuf", 2, "(n_query, D)")
        db = archive.get("db_codes", "iu", 2, "(n_db, M)")
        cb = archive.get("codebooks", "iuf", 3, "(M, K, D/M)")
        m, d = db.shape[1], q.shape[1]
        additive = m > 1 and cb.shape[0] == m and cb.shape[2] == d
        if not additive and (cb.shape[0] != m or cb.shape[0] * cb.shape[2] != d):
            raise archive.error("codebooks", f"shape (M={m}, K, D/M={d / m:g}) for "
                                f"'db_codes' with M={m} and 'query_emb' with D={d} (or "
                                f"(M, K, D={d}) for additive codes)", f"shape {cb.shape}")
        k = cb.shape[1]
        if k & (k - 1):
            raise archive.error("codebooks", "K = 2^b codewords per subspace", f"K={k}")
        if db.min() < 0 or db.max() >= k:
            raise archive.error("db_codes", f"codeword ids in [0, {k})",
                                f"values in [{db.min()}, {db.max()}]")
        kind = AQCodes if additive else PQCodes
        codes = kind(q.astype(np.float32), db.astype(np.int64), cb.astype(np.float32))

    n_query, n_db = len(q), len(db)
    query_labels = _labels(archive, "query_labels", n_query, "n_query")
    db_labels = _labels(archive, "db_labels", n_db, "n_db")
    if query_labels.ndim != db_labels.ndim or (
            query_labels.ndim == 2 and query_labels.shape[1] != db_labels.shape[1]):
        raise archive.error("db_labels", f"the same kind of labels as 'query_labels' "
                            f"(shape {query_labels.shape})", f"shape {db_labels.shape}")
    return codes, query_labels, db_labels
