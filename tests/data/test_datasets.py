"""Dataset loaders on tiny files written here in the official formats (no network)."""

from __future__ import annotations

import gzip
import io
import os
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest

from qbench.core.errors import QbenchError
from qbench.data import arraycache
from qbench.data.arraycache import ArrayCache, arrays_checksum
from qbench.data.download import download, md5sum, verify_md5
from qbench.datasets import cifar10, idx
from qbench.registry import DATASETS

IDX_STEMS = idx.FILES


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    """Downloads go to a fresh cache; the Debian fashion-mnist folder is not looked at."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("QBENCH_CACHE", str(cache))
    monkeypatch.setattr(DATASETS.get("fashion-mnist"), "system_dirs", ())
    return cache


def make_plugin(name: str, data_dir: Path | None = None, **overrides):
    return DATASETS.get(name)(DATASETS.resolve_params(name, overrides), data_dir)


# --------------------------------------------------------------------------- download


def test_download_copies_file_url_and_checks_md5(tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(3000))
    dest = tmp_path / "out" / "copy.bin"
    assert download(src.as_uri(), dest, md5sum(src), progress=False) == dest
    assert dest.read_bytes() == src.read_bytes()
    verify_md5(dest, md5sum(src).upper())


def test_download_md5_mismatch_raises_and_leaves_no_file(tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(b"not the expected content")
    dest = tmp_path / "out" / "file.gz"
    with pytest.raises(QbenchError) as err:
        download(src.as_uri(), dest, "0" * 32, progress=False)
    msg = str(err.value)
    assert str(dest) in msg and "0" * 32 in msg and md5sum(src) in msg
    assert "\n" not in msg
    assert list(dest.parent.iterdir()) == []


def test_download_of_missing_url_raises_and_leaves_no_file(tmp_path):
    dest = tmp_path / "out" / "file.gz"
    with pytest.raises(QbenchError, match="cannot download"):
        download((tmp_path / "absent").as_uri(), dest, None, progress=False)
    assert list(dest.parent.iterdir()) == []


def test_verify_md5_names_file_and_both_digests(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"abc")
    with pytest.raises(QbenchError) as err:
        verify_md5(path, "f" * 32)
    assert str(path) in str(err.value) and md5sum(path) in str(err.value)


# --------------------------------------------------------------------------- IDX


def idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_idx_set(folder: Path, n_train: int, n_test: int, gz: bool = True, seed: int = 0):
    """The four MNIST-style files; returns (images, labels) of train followed by test."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    images = rng.integers(0, 256, (n_train + n_test, 28, 28), dtype=np.uint8)
    labels = np.arange(n_train + n_test, dtype=np.uint8) % 10
    arrays = (images[:n_train], labels[:n_train], images[n_train:], labels[n_train:])
    for stem, array in zip(IDX_STEMS, arrays):
        data = idx_bytes(array)
        if gz:
            (folder / f"{stem}.gz").write_bytes(gzip.compress(data))
        else:
            (folder / stem).write_bytes(data)
    return images, labels


def test_read_idx_reads_gzip_and_plain_files(tmp_path):
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    (tmp_path / "a").write_bytes(idx_bytes(array))
    (tmp_path / "a.gz").write_bytes(gzip.compress(idx_bytes(array)))
    for name in ("a", "a.gz"):
        out = idx.read_idx(tmp_path / name)
        assert out.dtype == np.uint8 and np.array_equal(out, array)


@pytest.mark.parametrize(
    ("corrupt", "expected"),
    [
        (lambda b: b[:-5], "truncated"),
        (lambda b: b + b"\x00", "expected"),
        (lambda b: b"\x12\x34" + b[2:], "magic"),
        (lambda b: b[:2] + b"\x0d" + b[3:], "0x08"),
        (lambda b: b[:6], "truncated IDX header"),
        (lambda b: b"", "empty"),
    ],
)
def test_read_idx_rejects_corrupt_file_naming_it(tmp_path, corrupt, expected):
    path = tmp_path / "bad-idx3-ubyte"
    path.write_bytes(corrupt(idx_bytes(np.zeros((4, 28, 28), np.uint8))))
    with pytest.raises(QbenchError, match=expected) as err:
        idx.read_idx(path)
    assert str(path) in str(err.value)


def test_read_idx_rejects_truncated_gzip(tmp_path):
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(idx_bytes(np.ones((50, 28, 28), np.uint8)))[:-30])
    with pytest.raises(QbenchError, match="gzip") as err:
        idx.read_idx(path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize(("name", "gz"), [("mnist", True), ("fashion-mnist", False)])
def test_idx_dataset_concatenates_train_and_test(tmp_path, monkeypatch, name, gz):
    monkeypatch.setattr(idx, "EXPECTED_TOTAL", 50)
    images, labels = write_idx_set(tmp_path / "d", 40, 10, gz=gz)
    ds = make_plugin(name, tmp_path / "d").load()
    assert ds.X.shape == (50, 1, 28, 28) and ds.X.dtype == np.uint8
    assert np.array_equal(ds.X[:, 0], images)
    assert ds.y.dtype == np.int64 and np.array_equal(ds.y, labels)
    assert ds.modality == "image" and ds.source == str(tmp_path / "d")
    assert len(ds.class_names) == 10


def test_idx_dataset_rejects_wrong_total(tmp_path):
    write_idx_set(tmp_path / "d", 40, 10)
    with pytest.raises(QbenchError, match="expected 70000"):
        make_plugin("mnist", tmp_path / "d").load()


def test_idx_dataset_rejects_label_count_mismatch(tmp_path, monkeypatch):
    monkeypatch.setattr(idx, "EXPECTED_TOTAL", 50)
    write_idx_set(tmp_path / "d", 40, 10)
    path = tmp_path / "d" / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(gzip.compress(idx_bytes(np.zeros(9, np.uint8))))
    with pytest.raises(QbenchError, match="t10k-labels") as err:
        make_plugin("mnist", tmp_path / "d").load()
    assert "(10,)" in str(err.value)


def test_idx_dataset_missing_files_names_dir_files_and_flag(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(QbenchError) as err:
        make_plugin("fashion-mnist", tmp_path / "empty").load()
    msg = str(err.value)
    assert str(tmp_path / "empty") in msg and "train-images-idx3-ubyte" in msg
    assert "--data-dir" in msg and "\n" not in msg


def serve_idx_mirror(tmp_path, monkeypatch, plugin_name: str, n_train=40, n_test=10):
    """Gzipped IDX files in a folder served as a file:// mirror with their md5s."""
    images, labels = write_idx_set(tmp_path / "mirror", n_train, n_test)
    cls = DATASETS.get(plugin_name)
    md5 = {f"{s}.gz": md5sum(tmp_path / "mirror" / f"{s}.gz") for s in IDX_STEMS}
    monkeypatch.setattr(cls, "md5", md5)
    monkeypatch.setattr(idx, "EXPECTED_TOTAL", n_train + n_test)
    return cls, (tmp_path / "mirror").as_uri() + "/", images


def test_mnist_downloads_into_cache_trying_mirrors_in_order(tmp_path, monkeypatch, isolated_cache):
    cls, mirror, images = serve_idx_mirror(tmp_path, monkeypatch, "mnist")
    monkeypatch.setattr(cls, "mirrors", ((tmp_path / "nowhere").as_uri() + "/", mirror))
    ds = make_plugin("mnist").load()
    assert np.array_equal(ds.X[:, 0], images)
    assert ds.source == str(isolated_cache / "mnist")
    assert sorted(p.name for p in (isolated_cache / "mnist").iterdir()) == sorted(
        f"{s}.gz" for s in IDX_STEMS
    )


def test_mnist_download_with_bad_md5_raises_and_keeps_nothing(
    tmp_path, monkeypatch, isolated_cache
):
    cls, mirror, _ = serve_idx_mirror(tmp_path, monkeypatch, "mnist")
    monkeypatch.setattr(cls, "mirrors", (mirror,))
    monkeypatch.setitem(cls.md5, "train-images-idx3-ubyte.gz", "1" * 32)
    with pytest.raises(QbenchError) as err:
        make_plugin("mnist").load()
    assert "1" * 32 in str(err.value) and "--data-dir" in str(err.value)
    assert not (isolated_cache / "mnist" / "train-images-idx3-ubyte.gz").exists()


def test_fashion_mnist_uses_system_folder_before_download(tmp_path, monkeypatch):
    monkeypatch.setattr(idx, "EXPECTED_TOTAL", 50)
    write_idx_set(tmp_path / "debian", 40, 10)
    cls = DATASETS.get("fashion-mnist")
    monkeypatch.setattr(cls, "system_dirs", (tmp_path / "debian",))
    monkeypatch.setattr(cls, "mirrors", ((tmp_path / "nowhere").as_uri() + "/",))
    assert make_plugin("fashion-mnist").load().source == str(tmp_path / "debian")


def test_idx_protocol_is_1000_5000_rest():
    spec = make_plugin("mnist").protocol(None)
    assert (spec.n_query, spec.n_train, spec.n_val, spec.map_k) == (1000, 5000, 1000, None)
    assert spec.db_includes_train


# --------------------------------------------------------------------------- CIFAR-10


class Py2Pickler(pickle._Pickler):
    """Pickles like Python 2 did for the original CIFAR batches.

    str and bytes become Python 2 byte strings (BINSTRING), and numpy's ``_reconstruct`` is
    written under its numpy 1.x module name ``numpy.core.multiarray``.
    """

    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_string(self, obj):
        data = obj.encode("latin-1") if isinstance(obj, str) else obj
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[str] = save_py2_string
    dispatch[bytes] = save_py2_string

    def save_global(self, obj, name=None):
        if getattr(obj, "__name__", None) == "_reconstruct":
            self.write(pickle.GLOBAL + b"numpy.core.multiarray\n_reconstruct\n")
            self.memoize(obj)
        else:
            super().save_global(obj, name)


def py2_pickle(obj) -> bytes:
    buf = io.BytesIO()
    Py2Pickler(buf, protocol=2).dump(obj)
    return buf.getvalue()


def cifar_batches(n_per_batch: int, seed: int = 0):
    """Six (images (n, 3072) uint8, labels list) batches: data_batch_1..5, test_batch."""
    rng = np.random.default_rng(seed)
    out = []
    for b in range(6):
        images = rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8)
        labels = [int(v) for v in (np.arange(n_per_batch) + b) % 10]
        out.append((images, labels))
    return out


def add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def py_members(batches, replace: dict[str, bytes] | None = None) -> dict[str, bytes]:
    names = cifar10.PY_BATCHES
    members = {
        name: py2_pickle({
            b"batch_label": b"training batch %d of 5" % (i + 1) if i < 5 else b"testing batch 1",
            b"labels": labels,
            b"data": images,
            b"filenames": [b"img_%05d.png" % j for j in range(len(labels))],
        })
        for i, (name, (images, labels)) in enumerate(zip(names, batches))
    }
    members["batches.meta"] = py2_pickle({
        b"num_cases_per_batch": len(batches[0][1]),
        b"label_names": [n.encode() for n in cifar10.CLASS_NAMES],
        b"num_vis": 3072,
    })
    members.update(replace or {})
    return members


def bin_members(batches) -> dict[str, bytes]:
    members = {
        name: np.concatenate(
            [np.asarray(labels, np.uint8)[:, None], images], axis=1
        ).tobytes()
        for name, (images, labels) in zip(cifar10.BIN_BATCHES, batches)
    }
    members["batches.meta.txt"] = ("\n".join(cifar10.CLASS_NAMES) + "\n\n").encode()
    return members


def write_archive(path: Path, folder: str, members: dict[str, bytes]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            add_member(tar, f"{folder}/{name}", data)
    return path


def write_folder(folder: Path, members: dict[str, bytes]) -> Path:
    folder.mkdir(parents=True)
    for name, data in members.items():
        (folder / name).write_bytes(data)
    return folder


@pytest.fixture
def tiny_cifar(monkeypatch):
    """Six batches of 20 images; the loaders expect 120 items and trust archives' md5s."""
    monkeypatch.setattr(cifar10, "EXPECTED_TOTAL", 120)
    return cifar_batches(20)


def trust_archive(monkeypatch, path: Path) -> Path:
    monkeypatch.setitem(cifar10.ARCHIVE_MD5, path.name, md5sum(path))
    return path


def expected_cifar(batches):
    images = np.concatenate([b[0] for b in batches]).reshape(-1, 3, 32, 32)
    labels = np.concatenate([np.asarray(b[1], np.int64) for b in batches])
    return images, labels


def assert_cifar(ds, batches):
    images, labels = expected_cifar(batches)
    assert ds.X.shape == (120, 3, 32, 32) and ds.X.dtype == np.uint8
    assert np.array_equal(ds.X, images)
    assert ds.y.dtype == np.int64 and np.array_equal(ds.y, labels)
    assert ds.class_names == list(cifar10.CLASS_NAMES) and ds.modality == "image"


def test_cifar_python_archive_loads_with_restricted_unpickler(tmp_path, monkeypatch, tiny_cifar):
    path = write_archive(tmp_path / cifar10.PY_ARCHIVE, cifar10.PY_FOLDER, py_members(tiny_cifar))
    trust_archive(monkeypatch, path)
    ds = make_plugin("cifar10", tmp_path).load()
    assert_cifar(ds, tiny_cifar)
    assert ds.source == str(path)


def test_cifar_binary_archive_loads_the_same_images(tmp_path, monkeypatch, tiny_cifar):
    members = bin_members(tiny_cifar)
    path = write_archive(tmp_path / cifar10.BIN_ARCHIVE, cifar10.BIN_FOLDER, members)
    trust_archive(monkeypatch, path)
    assert_cifar(make_plugin("cifar10", tmp_path).load(), tiny_cifar)


@pytest.mark.parametrize("kind", ["py", "bin"])
def test_cifar_extracted_folders_load(tmp_path, tiny_cifar, kind):
    if kind == "py":
        folder = write_folder(tmp_path / cifar10.PY_FOLDER, py_members(tiny_cifar))
    else:
        folder = write_folder(tmp_path / cifar10.BIN_FOLDER, bin_members(tiny_cifar))
    ds = make_plugin("cifar10", tmp_path).load()
    assert_cifar(ds, tiny_cifar)
    assert ds.source == str(folder)
    assert make_plugin("cifar10", folder).load().source == str(folder)


def test_cifar_archive_with_wrong_md5_is_rejected_pointing_to_extracted_folder(
    tmp_path, tiny_cifar
):
    path = write_archive(tmp_path / cifar10.PY_ARCHIVE, cifar10.PY_FOLDER, py_members(tiny_cifar))
    with pytest.raises(QbenchError, match=cifar10.ARCHIVE_MD5[cifar10.PY_ARCHIVE]) as err:
        make_plugin("cifar10", tmp_path).load()
    msg = str(err.value)
    assert str(path) in msg and "\n" not in msg
    assert f"extracted {cifar10.PY_FOLDER}/ with --data-dir" in msg


class RunsShell:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class RunsEval:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return eval, (f"open({str(self.marker)!r}, 'w').close()",)


@pytest.mark.parametrize("payload", [RunsShell, RunsEval])
def test_cifar_unpickler_refuses_code_running_pickle(tmp_path, monkeypatch, tiny_cifar, payload):
    marker = tmp_path / "pwned"
    evil = pickle.dumps({b"data": payload(marker), b"labels": []}, protocol=2)
    members = py_members(tiny_cifar, {"data_batch_3": evil})
    path = write_archive(tmp_path / cifar10.PY_ARCHIVE, cifar10.PY_FOLDER, members)
    trust_archive(monkeypatch, path)
    with pytest.raises(QbenchError, match="refusing") as err:
        make_plugin("cifar10", tmp_path).load()
    assert "data_batch_3" in str(err.value) and str(path) in str(err.value)
    assert not marker.exists()


def test_cifar_unpickler_refuses_py3_bytes_reduce():
    # Python 3 pickles bytes at protocol 2 through _codecs.encode: not a genuine batch.
    with pytest.raises(QbenchError, match="refusing .*_codecs.encode"):
        cifar10.load_batch_pickle(pickle.dumps({b"data": b"x"}, protocol=2), "batch")


def test_cifar_truncated_archive_names_file(tmp_path, monkeypatch, tiny_cifar):
    path = write_archive(tmp_path / cifar10.PY_ARCHIVE, cifar10.PY_FOLDER, py_members(tiny_cifar))
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    trust_archive(monkeypatch, path)
    with pytest.raises(QbenchError, match="truncated") as err:
        make_plugin("cifar10", tmp_path).load()
    assert str(path) in str(err.value)


def test_cifar_truncated_pickle_batch_names_member(tmp_path, tiny_cifar):
    members = py_members(tiny_cifar)
    members["test_batch"] = members["test_batch"][:-100]
    write_folder(tmp_path / cifar10.PY_FOLDER, members)
    with pytest.raises(QbenchError, match="test_batch.*truncated"):
        make_plugin("cifar10", tmp_path).load()


def test_cifar_binary_batch_of_wrong_size_is_rejected(tmp_path, tiny_cifar):
    members = bin_members(tiny_cifar)
    members["data_batch_2.bin"] = members["data_batch_2.bin"][:-1]
    write_folder(tmp_path / cifar10.BIN_FOLDER, members)
    with pytest.raises(QbenchError, match="data_batch_2.bin.*multiple of 3073"):
        make_plugin("cifar10", tmp_path).load()


def test_cifar_pickle_batch_with_label_count_mismatch_is_rejected(tmp_path, tiny_cifar):
    tiny_cifar[0] = (tiny_cifar[0][0], tiny_cifar[0][1][:-1])
    write_folder(tmp_path / cifar10.PY_FOLDER, py_members(tiny_cifar))
    with pytest.raises(QbenchError, match="data_batch_1: 20 images but 19 labels"):
        make_plugin("cifar10", tmp_path).load()


def test_cifar_wrong_total_is_rejected(tmp_path, monkeypatch, tiny_cifar):
    monkeypatch.setattr(cifar10, "EXPECTED_TOTAL", 60_000)
    write_folder(tmp_path / cifar10.BIN_FOLDER, bin_members(tiny_cifar))
    with pytest.raises(QbenchError, match="120 images .* expected 60000"):
        make_plugin("cifar10", tmp_path).load()


def test_cifar_missing_data_names_dir_and_archives(tmp_path):
    with pytest.raises(QbenchError) as err:
        make_plugin("cifar10", tmp_path).load()
    assert str(tmp_path) in str(err.value) and cifar10.PY_ARCHIVE in str(err.value)


def test_cifar_downloads_python_archive_into_cache(
    tmp_path, monkeypatch, tiny_cifar, isolated_cache
):
    src = write_archive(tmp_path / "srv" / "c.tgz", cifar10.PY_FOLDER, py_members(tiny_cifar))
    monkeypatch.setattr(cifar10, "URL", src.as_uri())
    monkeypatch.setitem(cifar10.ARCHIVE_MD5, cifar10.PY_ARCHIVE, md5sum(src))
    ds = make_plugin("cifar10").load()
    assert_cifar(ds, tiny_cifar)
    assert ds.source == str(isolated_cache / "cifar10" / cifar10.PY_ARCHIVE)


def test_cifar_protocols_standard_and_excl_train():
    plugin = make_plugin("cifar10")
    standard, excl = plugin.protocol("standard"), plugin.protocol("excl-train")
    assert (standard.n_query, standard.n_train, standard.n_val) == (1000, 5000, 1000)
    assert standard.db_includes_train and not excl.db_includes_train
    assert (excl.n_query, excl.n_train) == (1000, 5000)
    assert standard.map_k is None and excl.map_k is None


# --------------------------------------------------------------------------- features


def test_features_loads_npz_relative_to_data_dir(tmp_path):
    X = np.random.default_rng(0).standard_normal((30, 5))
    y = np.arange(30) % 3
    np.savez(tmp_path / "f.npz", X=X, y=y)
    ds = make_plugin("features", tmp_path, path="f.npz").load()
    assert ds.X.dtype == np.float32 and np.allclose(ds.X, X)
    assert ds.y.dtype == np.int64 and np.array_equal(ds.y, y)
    assert ds.modality == "vector" and ds.source == str(tmp_path / "f.npz")


def test_features_multi_hot_labels_and_protocol_from_params(tmp_path):
    y = np.eye(4, dtype=np.int32)[np.arange(12) % 4]
    y[0, 1] = 1
    np.savez(tmp_path / "m.npz", X=np.ones((12, 3), np.float32), y=y)
    plugin = make_plugin(
        "features", path=str(tmp_path / "m.npz"), n_query=2, n_train=4, n_val=1, map_k=5,
        db_includes_train="false",
    )
    ds = plugin.load()
    assert ds.multilabel and ds.y.dtype == np.uint8 and np.array_equal(ds.y, y)
    spec = plugin.protocol(None)
    assert (spec.n_query, spec.n_train, spec.n_val, spec.map_k) == (2, 4, 1, 5)
    assert not spec.db_includes_train
    assert make_plugin("features", path="x").protocol(None).map_k is None


@pytest.mark.parametrize(
    ("arrays", "expected"),
    [
        ({"X": np.ones((4, 2))}, "no key 'y'"),
        ({"X": np.ones(4), "y": np.zeros(4, int)}, r"key 'X': shape \(4,\)"),
        ({"X": np.ones((4, 2)), "y": np.zeros(3, int)}, "key 'y': 3 labels for 4 items"),
        ({"X": np.ones((4, 2)), "y": np.zeros((4, 2, 2), int)}, r"key 'y': shape \(4, 2, 2\)"),
        ({"X": np.array([[1.0, np.nan]] * 4), "y": np.zeros(4, int)}, "key 'X'.*NaN"),
        ({"X": np.ones((4, 2)), "y": np.array([0.5, 1, 1, 1])}, "non-integer"),
        ({"X": np.ones((4, 2)), "y": np.array([[0, 2]] * 4)}, "0 or 1"),
        ({"X": np.ones((4, 2)), "y": np.array([0, -1, 1, 1])}, "class id -1"),
        ({"X": np.array([["a", "b"]] * 4), "y": np.zeros(4, int)}, "dtype <U1"),
    ],
)
def test_features_rejects_bad_arrays_naming_file_and_key(tmp_path, arrays, expected):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(QbenchError, match=expected) as err:
        make_plugin("features", path=str(path)).load()
    assert str(path) in str(err.value)


def test_features_rejects_pickled_object_arrays(tmp_path):
    path = tmp_path / "obj.npz"
    np.savez(path, X=np.array([object()] * 4), y=np.zeros(4, int))
    with pytest.raises(QbenchError, match="key 'X'"):
        make_plugin("features", path=str(path)).load()


def test_features_needs_path_and_existing_file(tmp_path):
    with pytest.raises(QbenchError, match="-D path="):
        make_plugin("features").load()
    with pytest.raises(QbenchError, match="missing.npz: file not found"):
        make_plugin("features", tmp_path, path="missing.npz").load()
    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(QbenchError, match="junk.npz: not a readable"):
        make_plugin("features", path=str(tmp_path / "junk.npz")).load()


# --------------------------------------------------------------------------- NUS-WIDE


def nus_labels(n: int, n_concepts: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rates = np.linspace(0.02, 0.6, n_concepts)[rng.permutation(n_concepts)]
    return (rng.random((n, n_concepts)) < rates).astype(np.uint8)


def test_nus_wide_loads_npy_pair_with_21_concepts(tmp_path):
    y = nus_labels(200, 21)
    y[5] = 0
    X = np.random.default_rng(1).standard_normal((200, 8)).astype(np.float32)
    np.save(tmp_path / "features.npy", X)
    np.save(tmp_path / "labels.npy", y)
    ds = make_plugin("nus-wide", tmp_path).load()
    keep = y.any(axis=1)
    assert len(ds) == keep.sum() == 199
    assert np.array_equal(ds.X, X[keep]) and np.array_equal(ds.y, y[keep])
    assert ds.multilabel and ds.modality == "vector"


def test_nus_wide_selects_21_most_frequent_of_81_concepts(tmp_path):
    y = nus_labels(300, 81)
    X = np.arange(300 * 4, dtype=np.float32).reshape(300, 4)
    np.savez(tmp_path / "nus_wide.npz", X=X, y=y)
    ds = make_plugin("nus-wide", tmp_path).load()
    top = np.sort(np.argsort(-y.sum(0), kind="stable")[:21])
    keep = y[:, top].any(axis=1)
    assert ds.y.shape == (keep.sum(), 21) and np.array_equal(ds.y, y[keep][:, top])
    assert np.array_equal(ds.X, X[keep])
    assert ds.source == str(tmp_path / "nus_wide.npz")
    all81 = make_plugin("nus-wide", tmp_path, concepts=81).load()
    assert all81.y.shape[1] == 81


def test_nus_wide_accepts_uint8_images(tmp_path):
    y = nus_labels(30, 21)
    y[:, 0] = 1
    X = np.zeros((30, 3, 8, 8), np.uint8)
    np.savez(tmp_path / "nus_wide.npz", X=X, y=y)
    ds = make_plugin("nus-wide", tmp_path).load()
    assert ds.modality == "image" and ds.X.shape == (30, 3, 8, 8)


def test_nus_wide_errors_name_files_and_expectation(tmp_path):
    with pytest.raises(QbenchError, match="--data-dir"):
        make_plugin("nus-wide").load()
    with pytest.raises(QbenchError, match="features.npy \\+ labels.npy") as err:
        make_plugin("nus-wide", tmp_path).load()
    assert str(tmp_path) in str(err.value)
    np.savez(tmp_path / "nus_wide.npz", X=np.ones((10, 2)), y=np.ones((10, 5), np.uint8))
    with pytest.raises(QbenchError, match=r"shape \(10, 5\), expected \(n, 21\)"):
        make_plugin("nus-wide", tmp_path).load()
    np.savez(tmp_path / "nus_wide.npz", X=np.ones((10, 2)), y=np.ones((10, 21), np.uint8))
    with pytest.raises(QbenchError, match="concepts=81"):
        make_plugin("nus-wide", tmp_path, concepts=81).load()


def test_nus_wide_protocol_is_2100_10500_map_at_5000():
    spec = make_plugin("nus-wide").protocol(None)
    assert (spec.n_query, spec.n_train, spec.n_val, spec.map_k) == (2100, 10500, 2100, 5000)
    assert spec.db_includes_train


def test_all_dataset_plugins_are_registered():
    names = set(DATASETS.names())
    assert {"mnist", "fashion-mnist", "cifar10", "features", "nus-wide"} <= names
    for name in names:
        assert DATASETS.get(name).description


# --------------------------------------------------------------------------- dataset cache


def cache_entries(cache_root: Path, name: str) -> list[Path]:
    folder = cache_root / "datasets" / name
    return sorted(folder.iterdir()) if folder.is_dir() else []


@pytest.fixture
def cached_cifar(tmp_path, monkeypatch, tiny_cifar):
    """A trusted tiny python archive in tmp_path/data, and a counter of its md5 checks."""
    path = write_archive(
        tmp_path / "data" / cifar10.PY_ARCHIVE, cifar10.PY_FOLDER, py_members(tiny_cifar)
    )
    trust_archive(monkeypatch, path)
    calls = {"md5": 0}

    def counting_verify(*args):
        calls["md5"] += 1
        return verify_md5(*args)

    monkeypatch.setattr(cifar10, "verify_md5", counting_verify)
    return path, calls


def test_second_cached_load_neither_reads_nor_verifies_the_source(
    tmp_path, monkeypatch, tiny_cifar, cached_cifar
):
    path, calls = cached_cifar
    first = make_plugin("cifar10", path.parent).load_cached(tmp_path / "cache-root")
    assert calls["md5"] == 1 and len(cache_entries(tmp_path / "cache-root", "cifar10")) == 1

    def no_reading(*args):
        raise AssertionError("the source was read on a cache hit")

    monkeypatch.setattr(cifar10, "_read_archive", no_reading)
    second = make_plugin("cifar10", path.parent).load_cached(tmp_path / "cache-root")
    assert calls["md5"] == 1
    assert_cifar(second, tiny_cifar)
    assert not second.X.flags.writeable
    assert second.source == first.source == str(path)
    images, labels = expected_cifar(tiny_cifar)
    assert second.checksum == first.checksum == arrays_checksum({"X": images, "y": labels})


def test_changed_cifar_archive_is_verified_again_and_refused(tmp_path, cached_cifar):
    path, calls = cached_cifar
    make_plugin("cifar10", path.parent).load_cached(tmp_path / "cache-root")
    with open(path, "ab") as fh:
        fh.write(b"appended garbage")
    with pytest.raises(QbenchError, match="md5"):
        make_plugin("cifar10", path.parent).load_cached(tmp_path / "cache-root")
    assert calls["md5"] == 2


def test_changed_idx_file_is_a_miss_that_replaces_the_old_entry(tmp_path, monkeypatch):
    monkeypatch.setattr(idx, "EXPECTED_TOTAL", 50)
    write_idx_set(tmp_path / "d", 40, 10, seed=0)
    old = make_plugin("mnist", tmp_path / "d").load_cached(tmp_path / "cache-root")
    images, _ = write_idx_set(tmp_path / "d", 40, 10, seed=1)
    new = make_plugin("mnist", tmp_path / "d").load_cached(tmp_path / "cache-root")
    assert np.array_equal(new.X[:, 0], images)
    assert new.checksum != old.checksum
    assert len(cache_entries(tmp_path / "cache-root", "mnist")) == 1


def flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda entry: flip_last_byte(entry / "X.npy"), "checksum"),
        (lambda entry: (entry / "y.npy").write_bytes(b"\x93NUMPY"), "y.npy"),
        (lambda entry: (entry / "manifest.json").write_text("{"), "manifest.json"),
        (lambda entry: (entry / "X.npy").unlink(), "missing"),
    ],
)
def test_corrupt_cache_entry_is_reported_in_one_line_and_rebuilt(
    tmp_path, monkeypatch, capsys, damage, reason
):
    monkeypatch.setattr(idx, "EXPECTED_TOTAL", 50)
    images, labels = write_idx_set(tmp_path / "d", 40, 10)
    root = tmp_path / "cache-root"
    first = make_plugin("mnist", tmp_path / "d").load_cached(root)
    [entry] = cache_entries(root, "mnist")
    damage(entry)
    ds = make_plugin("mnist", tmp_path / "d").load_cached(root)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(entry) in err and "corrupt" in err and reason in err
    assert np.array_equal(ds.X[:, 0], images) and np.array_equal(ds.y, labels)
    assert ds.checksum == first.checksum
    hit = make_plugin("mnist", tmp_path / "d").load_cached(root)
    assert capsys.readouterr().err == ""
    assert not hit.X.flags.writeable and hit.checksum == first.checksum


def test_cache_off_loads_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(idx, "EXPECTED_TOTAL", 50)
    images, _ = write_idx_set(tmp_path / "d", 40, 10)
    ds = make_plugin("mnist", tmp_path / "d").load_cached(None)
    assert np.array_equal(ds.X[:, 0], images) and ds.X.flags.writeable
    assert [p.name for p in tmp_path.iterdir()] == ["d"]


def test_unwritable_cache_folder_fails_in_one_line_before_decoding(tmp_path, monkeypatch):
    monkeypatch.setattr(idx, "EXPECTED_TOTAL", 50)
    write_idx_set(tmp_path / "d", 40, 10)
    root = tmp_path / "not-a-folder"
    root.write_text("")

    def no_decoding(path):
        raise AssertionError("decoded before the cache folder was checked")

    monkeypatch.setattr(idx, "read_idx", no_decoding)
    with pytest.raises(QbenchError) as err:
        make_plugin("mnist", tmp_path / "d").load_cached(root)
    msg = str(err.value)
    assert str(root / "datasets" / "mnist") in msg and "not writable" in msg and "\n" not in msg


def test_source_changed_while_decoding_is_not_cached(tmp_path, monkeypatch):
    monkeypatch.setattr(idx, "EXPECTED_TOTAL", 50)
    write_idx_set(tmp_path / "d", 40, 10)
    decode = idx.read_idx

    def decode_then_touch(path):
        os.utime(path, ns=(0, 0))
        return decode(path)

    monkeypatch.setattr(idx, "read_idx", decode_then_touch)
    make_plugin("mnist", tmp_path / "d").load_cached(tmp_path / "cache-root")
    assert cache_entries(tmp_path / "cache-root", "mnist") == []


def test_cheap_datasets_are_not_cached_but_have_a_checksum(tmp_path):
    root = tmp_path / "cache-root"
    digits = make_plugin("digits").load_cached(root)
    synth = make_plugin("synthetic", n_items=50).load_cached(root)
    other = make_plugin("synthetic", n_items=50, data_seed=1).load_cached(root)
    assert not root.exists()
    assert digits.checksum == arrays_checksum({"X": digits.X, "y": digits.y})
    assert synth.checksum == make_plugin("synthetic", n_items=50).load().checksum
    assert other.checksum != synth.checksum


def test_losing_writer_discards_its_copy_and_keeps_the_winners(tmp_path):
    cache = ArrayCache(tmp_path / "c")
    arrays = {"X": np.arange(12, dtype=np.float32).reshape(3, 4), "y": np.arange(3)}
    checksum = cache.put("k", arrays, {"who": "first"})
    assert cache.put("k", arrays, {"who": "second"}) == checksum
    assert [p.name for p in (tmp_path / "c").iterdir()] == ["k"]
    entry = cache.get("k")
    assert entry.meta == {"who": "first"} and entry.checksum == checksum
    assert np.array_equal(entry.arrays["X"], arrays["X"])


def _load_mnist_and_report(data_dir: Path, root: Path, results) -> None:
    results.put(make_plugin("mnist", data_dir).load_cached(root).checksum)


def test_two_processes_decoding_at_once_leave_one_valid_entry(tmp_path, monkeypatch, capsys):
    import multiprocessing

    monkeypatch.setattr(idx, "EXPECTED_TOTAL", 50)
    write_idx_set(tmp_path / "d", 40, 10)
    root = tmp_path / "cache-root"
    ctx = multiprocessing.get_context("fork")
    both_decoding = ctx.Barrier(2, timeout=20)
    decode = idx.read_idx

    def decode_together(path):
        if path.name.startswith(IDX_STEMS[0]):
            both_decoding.wait()
        return decode(path)

    monkeypatch.setattr(idx, "read_idx", decode_together)
    results = ctx.Queue()
    workers = [ctx.Process(target=_load_mnist_and_report, args=(tmp_path / "d", root, results))
               for _ in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=30)
    assert [w.exitcode for w in workers] == [0, 0]
    checksums = {results.get(timeout=5) for _ in workers}
    assert [p.name.startswith(".tmp-") for p in cache_entries(root, "mnist")] == [False]
    monkeypatch.setattr(idx, "read_idx", decode)
    hit = make_plugin("mnist", tmp_path / "d").load_cached(root)
    assert checksums == {hit.checksum} and not hit.X.flags.writeable
    assert "corrupt" not in capsys.readouterr().err


def _orphan_and_live(folder):
    """Temporary folders under ``folder``: one of a process of this host that has died, one
    of this (live) process. Both created."""
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    orphan = folder / f"{arraycache.TMP_PREFIX}{arraycache._host()}-{dead}-abc"
    live = folder / f"{arraycache._tmp_prefix()}xyz"
    orphan.mkdir(parents=True)
    live.mkdir()
    return orphan, live


def test_writer_removes_temporary_folders_of_dead_processes_only(tmp_path):
    folder = tmp_path / "c"
    orphan, live = _orphan_and_live(folder)
    ArrayCache(folder).put("k", {"y": np.arange(3)}, {})
    assert not orphan.exists() and live.exists()


def test_reader_removes_temporary_folders_of_dead_processes_only(tmp_path):
    import time

    folder = tmp_path / "c"
    orphan, live = _orphan_and_live(folder)
    old = folder / f"{arraycache.TMP_PREFIX}another_host-1-old"
    young = folder / f"{arraycache.TMP_PREFIX}another_host-1-new"
    for path in (old, young):
        path.mkdir()
    os.utime(old, (time.time() - 2 * 86400,) * 2)
    assert ArrayCache(folder).get("k") is None
    assert not orphan.exists() and not old.exists()
    assert live.exists() and young.exists()


def test_clear_removes_entries_and_keeps_live_temporaries(tmp_path):
    cache = ArrayCache(tmp_path / "c")
    cache.put("k1", {"y": np.arange(3)}, {})
    cache.put("k2", {"y": np.arange(4)}, {})
    live = tmp_path / "c" / f"{arraycache._tmp_prefix()}xyz"
    live.mkdir()
    assert cache.clear() == 2
    assert [p.name for p in (tmp_path / "c").iterdir()] == [live.name]
    assert cache.get("k1") is None


def test_source_identity_resolves_links_and_relative_paths(tmp_path, monkeypatch):
    """The cache key's file identity: absolute resolved paths (one resolve per folder), a
    symbolic link named by its target, a missing file making the identity None."""
    from qbench.data.dataset import _identity

    real = tmp_path / "real"
    real.mkdir()
    (real / "a.png").write_bytes(b"a")
    (tmp_path / "linked").symlink_to(real, target_is_directory=True)
    (tmp_path / "b.png").symlink_to(real / "a.png")
    monkeypatch.chdir(tmp_path)
    got = _identity([Path("linked/a.png"), tmp_path / "b.png", Path("real/../real/a.png")])
    expected = str((real / "a.png").resolve())
    assert [row[0] for row in got] == [expected] * 3
    assert got[0][1:] == got[1][1:] == got[2][1:]
    assert _identity([Path("real/missing.png")]) is None
