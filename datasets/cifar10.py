"""CIFAR-10 from the official python or binary distribution.

Accepted in ``--data-dir`` (or in the download cache ``~/.cache/qbench/cifar10``), first
match wins:

- ``cifar-10-batches-bin/`` (extracted binary version), or the folder itself;
- ``cifar-10-batches-py/`` (extracted python version), or the folder itself;
- ``cifar-10-binary.tar.gz`` / ``cifar-10-python.tar.gz`` (md5-checked, read in memory
  without extracting).

Without ``--data-dir`` and with nothing in the cache, the python archive is downloaded
from the official URL and md5-checked. An archive whose md5 is not the official one is
refused; an extracted folder is read without an md5 check.

Through :meth:`qbench.data.dataset.DatasetPlugin.load_cached`, the md5 check and the decoding run
once per machine: later loads memory-map the cached arrays while the archive (or the
folder's batch files) keeps its size, mtime, ctime and inode.

The python batches are pickles written by Python 2; they are read with
:class:`RestrictedUnpickler`, which resolves only the three numpy globals an ndarray
pickle needs, so a crafted file cannot run code. The binary batches are 10,000 records
of one label byte and 3,072 pixel bytes. Both store each image as 1024 red, 1024 green and
1024 blue bytes, row-major, so both give the same (60000, 3, 32, 32) uint8 array.
"""

from __future__ import annotations

import io
import pickle
import tarfile
import zlib
from pathlib import Path

import numpy as np

from qbench.core.errors import QbenchError
from qbench.data.dataset import Dataset, DatasetPlugin, ProtocolSpec
from qbench.data.download import cache_dir, download, verify_md5
from qbench.registry import DATASETS

URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
HOME_URL = "https://www.cs.toronto.edu/~kriz/cifar.html"
PY_ARCHIVE = "cifar-10-python.tar.gz"
BIN_ARCHIVE = "cifar-10-binary.tar.gz"
PY_FOLDER = "cifar-10-batches-py"
BIN_FOLDER = "cifar-10-batches-bin"
ARCHIVE_MD5 = {
    PY_ARCHIVE: "c58f30108f718f92721af3b95e74349a",
    BIN_ARCHIVE: "c32a1d4ab5d03f1284b67883e8d87530",
}
PY_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",)
BIN_BATCHES = tuple(f"{b}.bin" for b in PY_BATCHES)
# Items of the five training batches + the test batch; tests shrink it to load tiny files.
EXPECTED_TOTAL = 60_000
PIXELS = 3 * 32 * 32
RECORD_BYTES = 1 + PIXELS
CLASS_NAMES = (
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
)


def _numpy_reconstruct():
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the globals a pickled numpy array needs.

    Anything else (``os.system``, ``builtins.eval``, ...) raises
    :class:`pickle.UnpicklingError` before it can be called.
    """

    def find_class(self, module: str, name: str):
        if name == "_reconstruct" and module in ("numpy.core.multiarray", "numpy._core.multiarray"):
            return _numpy_reconstruct()
        if module == "numpy" and name == "ndarray":
            return np.ndarray
        if module == "numpy" and name == "dtype":
            return np.dtype
        raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")


def load_batch_pickle(data: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    """Images (n, 3072) uint8 and labels (n,) int64 of one python-version batch.

    ``data`` is the pickle's bytes, ``where`` names it in errors.
    """
    try:
        batch = RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()
    except pickle.UnpicklingError as exc:
        if "refusing" in str(exc):
            raise QbenchError(
                f"{where}: {exc}; a CIFAR batch holds only dicts, lists, bytes, ints and "
                "numpy arrays"
            ) from None
        raise QbenchError(f"{where}: corrupt or truncated pickle ({exc})") from None
    except Exception as exc:  # any other failure of a malformed pickle stream
        raise QbenchError(
            f"{where}: corrupt or truncated pickle ({type(exc).__name__}: {exc})"
        ) from None
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise QbenchError(f"{where}: expected a dict with keys b'data' and b'labels'")
    images, labels = batch[b"data"], batch[b"labels"]
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 2 \
            or images.shape[1] != PIXELS:
        desc = f"{images.dtype} array {images.shape}" if isinstance(images, np.ndarray) \
            else type(images).__name__
        raise QbenchError(f"{where}: b'data' is {desc}, expected a uint8 array (n, {PIXELS})")
    if not isinstance(labels, list) or not all(type(v) is int for v in labels):
        raise QbenchError(f"{where}: b'labels' must be a list of ints")
    if len(labels) != len(images):
        raise QbenchError(
            f"{where}: {len(images)} images but {len(labels)} labels, expected equal counts"
        )
    return images, np.asarray(labels, dtype=np.int64)


def load_batch_binary(data: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    """Images (n, 3072) uint8 and labels (n,) int64 of one binary-version batch."""
    if len(data) == 0 or len(data) % RECORD_BYTES:
        raise QbenchError(
            f"{where}: {len(data)} bytes, expected a positive multiple of {RECORD_BYTES} "
            "(1 label byte + 3072 pixel bytes per image; truncated file?)"
        )
    records = np.frombuffer(data, dtype=np.uint8).reshape(-1, RECORD_BYTES)
    return records[:, 1:], records[:, 0].astype(np.int64)


def _read_archive(path: Path, folder: str, members: tuple[str, ...]) -> dict[str, bytes]:
    """The bytes of ``folder/<member>`` for each member of the tar.gz at ``path``."""
    wanted = {f"{folder}/{m}": m for m in members}
    found: dict[str, bytes] = {}
    try:
        with tarfile.open(path, "r:gz") as tar:
            for info in tar:
                if info.name in wanted and info.isfile():
                    found[wanted[info.name]] = tar.extractfile(info).read()
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise QbenchError(f"{path}: truncated or corrupt tar.gz archive ({exc})") from None
    missing = [f"{folder}/{m}" for m in members if m not in found]
    if missing:
        raise QbenchError(f"{path}: archive lacks {', '.join(missing)} (truncated or not CIFAR-10)")
    return found


def _read_folder(path: Path, members: tuple[str, ...]) -> dict[str, bytes]:
    missing = [m for m in members if not (path / m).is_file()]
    if missing:
        raise QbenchError(f"{path}: missing {', '.join(missing)}, expected {', '.join(members)}")
    return {m: (path / m).read_bytes() for m in members}


def _class_names_py(meta: bytes, where: str) -> list[str]:
    batch = RestrictedUnpickler(io.BytesIO(meta), encoding="bytes")
    try:
        names = batch.load().get(b"label_names")
    except Exception as exc:
        raise QbenchError(f"{where}: corrupt batches.meta ({type(exc).__name__}: {exc})") from None
    if not isinstance(names, list) or len(names) != len(CLASS_NAMES):
        return list(CLASS_NAMES)
    return [n.decode() if isinstance(n, bytes) else str(n) for n in names]


def _find_source(folder: Path) -> tuple[str, Path] | None:
    """(kind, path) of the first CIFAR-10 form found in ``folder``; kind is py/bin + dir/tar."""
    candidates = (
        ("bin-dir", folder / BIN_FOLDER),
        ("bin-dir", folder),
        ("py-dir", folder / PY_FOLDER),
        ("py-dir", folder),
        ("bin-tar", folder / BIN_ARCHIVE),
        ("py-tar", folder / PY_ARCHIVE),
    )
    for kind, path in candidates:
        first = BIN_BATCHES[0] if kind == "bin-dir" else PY_BATCHES[0]
        if kind.endswith("dir") and (path / first).is_file():
            return kind, path
        if kind.endswith("tar") and path.is_file():
            return kind, path
    return None


def _members(kind: str) -> tuple[str, ...]:
    """The six batch files then the meta file of source ``kind`` (see :func:`_find_source`)."""
    if kind.startswith("bin"):
        return BIN_BATCHES + ("batches.meta.txt",)
    return PY_BATCHES + ("batches.meta",)


def _verify_archive(path: Path, md5: str, folder: str) -> None:
    """Refuse an archive whose md5 is not the official ``md5``, saying what to do instead."""
    try:
        verify_md5(path, md5)
    except QbenchError as exc:
        raise QbenchError(
            f"{exc}; download it again from {HOME_URL}, or extract it and pass the folder "
            f"holding the extracted {folder}/ with --data-dir (folders are read without an "
            "md5 check)"
        ) from None


@DATASETS.register
class Cifar10(DatasetPlugin):
    """CIFAR-10: 60,000 32x32 colour images in 10 classes (50,000 train + 10,000 test)."""

    name = "cifar10"
    description = "CIFAR-10, 60000 32x32 colour images (official archive: --data-dir or download)"
    params = ()
    protocols = {
        "standard": ProtocolSpec(
            "standard", n_query=1000, n_train=5000, n_val=1000, db_includes_train=True,
            description="1000 query (100/class) / 5000 train (500/class) / "
            "database = the other 59000 items incl. train",
        ),
        "excl-train": ProtocolSpec(
            "excl-train", n_query=1000, n_train=5000, n_val=1000, db_includes_train=False,
            description="1000 query (100/class) / 5000 train (500/class) / "
            "database = the other 54000 items, train excluded",
        ),
    }

    def source_files(self) -> list[Path]:
        """The archive, or the batch and meta files of the extracted folder."""
        kind, path = self._locate()
        return [path] if kind.endswith("tar") else [path / m for m in _members(kind)]

    def load(self) -> Dataset:
        kind, path = self._locate()
        members = _members(kind)
        if kind.startswith("bin"):
            folder, reader, archive = BIN_FOLDER, load_batch_binary, BIN_ARCHIVE
        else:
            folder, reader, archive = PY_FOLDER, load_batch_pickle, PY_ARCHIVE
        if kind.endswith("tar"):
            _verify_archive(path, ARCHIVE_MD5[archive], folder)
            files = _read_archive(path, folder, members)
            where = f"{path}:{folder}/"
        else:
            files = _read_folder(path, members)
            where = f"{path}/"
        parts = [reader(files[m], where + m) for m in members[:-1]]
        images = np.concatenate([p[0] for p in parts])
        labels = np.concatenate([p[1] for p in parts])
        if len(labels) != EXPECTED_TOTAL:
            raise QbenchError(
                f"{path}: {len(labels)} images in the six batches, expected {EXPECTED_TOTAL}"
            )
        bad = labels[(labels < 0) | (labels >= len(CLASS_NAMES))]
        if bad.size:
            raise QbenchError(f"{path}: label {int(bad[0])}, expected 0..9")
        meta = files[members[-1]]
        if kind.startswith("bin"):
            names = [n.strip() for n in meta.decode("ascii", "replace").splitlines() if n.strip()]
            class_names = names if len(names) == len(CLASS_NAMES) else list(CLASS_NAMES)
        else:
            class_names = _class_names_py(meta, where + members[-1])
        X = images.reshape(-1, 3, 32, 32)
        return Dataset(self.name, X, labels, "image", source=str(path), class_names=class_names)

    def _locate(self) -> tuple[str, Path]:
        if self.data_dir is not None:
            found = _find_source(self.data_dir)
            if found is None:
                raise QbenchError(
                    f"--data-dir {self.data_dir} holds no CIFAR-10: expected {PY_ARCHIVE} or "
                    f"{BIN_ARCHIVE} (from {HOME_URL}) or the "
                    f"extracted {PY_FOLDER}/ or {BIN_FOLDER}/; or omit --data-dir to download"
                )
            return found
        cache = cache_dir(self.name)
        found = _find_source(cache)
        if found is not None:
            return found
        try:
            path = download(URL, cache / PY_ARCHIVE, ARCHIVE_MD5[PY_ARCHIVE])
        except QbenchError as exc:
            raise QbenchError(
                f"cifar10: nothing in {cache} and the download failed ({exc}); put "
                f"{PY_ARCHIVE} or {BIN_ARCHIVE} into a folder and pass it with --data-dir"
            ) from None
        return "py-tar", path
