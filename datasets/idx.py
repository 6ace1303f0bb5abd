"""MNIST and Fashion-MNIST from their IDX files (gzip-compressed or plain).

The IDX format: two zero bytes, a dtype code (0x08: unsigned byte, the only one used by
these datasets), the number of dimensions, one big-endian uint32 per dimension, then the
values in row-major order. Each dataset is four files (train / t10k images and labels);
train and test are concatenated into 70,000 items, images as (n, 1, 28, 28) uint8.

Where the files are looked for, in order:

- ``--data-dir`` when given (only there);
- fashion-mnist only: ``/usr/share/datasets/fashion-mnist`` (Debian package
  ``dataset-fashion-mnist``, which ships the four ``.gz`` files, recompressed: their md5
  differs from the official files, so local files are checked by structure, not md5);
- the download cache ``~/.cache/qbench/<name>`` (see :func:`qbench.data.download.cache_dir`);
- otherwise the official ``.gz`` files are downloaded there, each checked against its
  published md5. MNIST's original host (yann.lecun.com) often refuses downloads, so the
  PyTorch team's S3 copy is tried first and the original host second.

Through :meth:`qbench.data.dataset.DatasetPlugin.load_cached`, the four files are decompressed and
checked once per machine; later loads memory-map the cached arrays while the files keep
their size, mtime, ctime and inode.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from qbench.core.errors import QbenchError
from qbench.data.dataset import Dataset, DatasetPlugin, ProtocolSpec
from qbench.data.download import cache_dir, download
from qbench.registry import DATASETS

IDX_UBYTE = 0x08
FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
# Items of train + test together; tests shrink it to load tiny files.
EXPECTED_TOTAL = 70_000
IMAGE_SHAPE = (28, 28)
N_CLASSES = 10


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file of unsigned bytes (gzip-compressed when it starts with the gzip magic).

    Returns a uint8 array with the file's dimensions. A wrong magic number, another dtype
    or a size that does not match the header raises :class:`QbenchError` naming the file.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise QbenchError(f"{path}: unreadable or truncated gzip file ({exc})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise QbenchError(
            f"{path}: not an IDX file (expected magic bytes 00 00 <dtype> <ndim>, got "
            f"{raw[:4].hex(' ') or 'an empty file'})"
        )
    if raw[2] != IDX_UBYTE:
        raise QbenchError(
            f"{path}: IDX dtype code 0x{raw[2]:02x}, expected 0x08 (unsigned byte)"
        )
    ndim = raw[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise QbenchError(f"{path}: truncated IDX header ({len(raw)} bytes, {ndim} dimensions)")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = header + int(np.prod(shape))
    if len(raw) != expected:
        raise QbenchError(
            f"{path}: {len(raw)} bytes, expected {expected} for an IDX array of shape "
            f"{shape} (truncated or corrupt file)"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def _find(folder: Path, stem: str) -> Path | None:
    for name in (f"{stem}.gz", stem):
        if (folder / name).is_file():
            return folder / name
    return None


class IdxPlugin(DatasetPlugin):
    """Shared loading of a four-file IDX dataset; subclasses name the files' sources."""

    description = ""
    params = ()
    protocols = {
        "standard": ProtocolSpec(
            "standard", n_query=1000, n_train=5000, n_val=1000,
            description="1000 query (100/class) / 5000 train (500/class) / "
            "database = the other 69000 items incl. train",
        )
    }
    mirrors: tuple[str, ...] = ()
    md5: dict[str, str] = {}
    system_dirs: tuple[Path, ...] = ()
    class_names: tuple[str, ...] = ()

    def source_files(self) -> list[Path]:
        """The four IDX files (.gz or plain) that :meth:`load` reads."""
        folder = self._locate()
        return [_find(folder, stem) for stem in FILES]

    def load(self) -> Dataset:
        folder = self._locate()
        paths = [_find(folder, stem) for stem in FILES]
        train_x, train_y, test_x, test_y = (read_idx(p) for p in paths)
        for images, labels, img_path, lab_path in (
            (train_x, train_y, paths[0], paths[1]),
            (test_x, test_y, paths[2], paths[3]),
        ):
            if images.ndim != 3 or images.shape[1:] != IMAGE_SHAPE:
                raise QbenchError(
                    f"{img_path}: images of shape {images.shape}, expected (n, 28, 28)"
                )
            if labels.ndim != 1 or len(labels) != len(images):
                raise QbenchError(
                    f"{lab_path}: labels of shape {labels.shape}, expected ({len(images)},) "
                    f"to match {img_path.name}"
                )
            if labels.size and labels.max() >= N_CLASSES:
                raise QbenchError(
                    f"{lab_path}: label {int(labels.max())}, expected 0..{N_CLASSES - 1}"
                )
        total = len(train_y) + len(test_y)
        if total != EXPECTED_TOTAL:
            raise QbenchError(
                f"{folder}: {total} items in train + t10k files, expected {EXPECTED_TOTAL}"
            )
        X = np.concatenate([train_x, test_x])[:, None, :, :]
        y = np.concatenate([train_y, test_y]).astype(np.int64)
        return Dataset(
            self.name, X, y, "image", source=str(folder), class_names=list(self.class_names)
        )

    def _locate(self) -> Path:
        """The folder holding all four files, downloading them into the cache if needed."""
        expected = ", ".join(f"{stem}.gz" for stem in FILES)
        if self.data_dir is not None:
            if all(_find(self.data_dir, stem) for stem in FILES):
                return self.data_dir
            missing = [stem for stem in FILES if not _find(self.data_dir, stem)]
            raise QbenchError(
                f"--data-dir {self.data_dir} lacks {', '.join(missing)} (.gz or plain); "
                f"expected {expected} (from {self.mirrors[0]}), or omit --data-dir to "
                f"download them into {cache_dir(self.name)}"
            )
        cache = cache_dir(self.name)
        for folder in (*self.system_dirs, cache):
            if all(_find(folder, stem) for stem in FILES):
                return folder
        for stem in FILES:
            if not _find(cache, stem):
                self._download(f"{stem}.gz", cache, expected)
        return cache

    def _download(self, filename: str, folder: Path, expected: str) -> None:
        errors = []
        for mirror in self.mirrors:
            try:
                download(mirror + filename, folder / filename, self.md5[filename])
                return
            except QbenchError as exc:
                errors.append(str(exc))
        raise QbenchError(
            f"{self.name}: no {filename} in {folder} and the download failed "
            f"({'; '.join(errors)}); put {expected} into a folder and pass it with "
            f"--data-dir"
        )


@DATASETS.register
class Mnist(IdxPlugin):
    """MNIST handwritten digits: 70,000 28x28 grey images, 10 classes."""

    name = "mnist"
    description = "MNIST digits, 70000 28x28 grey images (IDX files: --data-dir or download)"
    mirrors = (
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "http://yann.lecun.com/exdb/mnist/",
    )
    md5 = {
        "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    }
    class_names = tuple(str(d) for d in range(10))


@DATASETS.register
class FashionMnist(IdxPlugin):
    """Zalando's Fashion-MNIST: 70,000 28x28 grey article images, 10 classes."""

    name = "fashion-mnist"
    description = "Fashion-MNIST, 70000 28x28 grey images (--data-dir, Debian package or download)"
    mirrors = ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",)
    md5 = {
        "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
    }
    system_dirs = (Path("/usr/share/datasets/fashion-mnist"),)
    class_names = (
        "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
        "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
    )
