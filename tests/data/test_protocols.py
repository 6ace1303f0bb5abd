import numpy as np
import pytest

from qbench.core.errors import QbenchError
from qbench.data.dataset import Dataset, ProtocolSpec
from qbench.data.protocols import Splits, make_splits, materialise, validate_splits
from qbench.registry import DATASETS


def _dataset(n=600, classes=6, multilabel=False, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    if multilabel:
        hot = np.zeros((n, classes), dtype=np.uint8)
        hot[np.arange(n), y] = 1
        hot[np.arange(n), rng.integers(0, classes, n)] = 1
        y = hot
    return Dataset("toy", rng.standard_normal((n, 4)).astype(np.float32), y, "vector")


SPEC = ProtocolSpec("standard", n_query=60, n_train=120, n_val=30)


def test_splits_have_protocol_counts_and_are_disjoint():
    ds = _dataset()
    s = make_splits(ds, SPEC, seed=3)
    assert (len(s.query), len(s.train), len(s.val)) == (60, 120, 30)
    assert len(s.database) == 600 - 60
    assert not np.intersect1d(s.query, s.train).size
    assert not np.intersect1d(s.query, s.database).size
    assert np.isin(s.val, s.database).all() and not np.isin(s.val, s.train).any()
    assert np.isin(s.train, s.database).all()


def test_query_and_train_are_drawn_per_class():
    ds = _dataset()
    s = make_splits(ds, SPEC, seed=1)
    assert np.bincount(ds.y[s.query], minlength=6).tolist() == [10] * 6
    assert np.bincount(ds.y[s.train], minlength=6).tolist() == [20] * 6


def test_database_excluding_train():
    ds = _dataset()
    spec = ProtocolSpec("excl", 60, 120, 30, db_includes_train=False)
    s = make_splits(ds, spec, seed=0)
    assert len(s.database) == 600 - 60 - 120
    assert not np.intersect1d(s.train, s.database).size


def test_splits_are_deterministic_per_seed_and_differ_across_seeds():
    ds = _dataset()
    a, b, c = (make_splits(ds, SPEC, seed) for seed in (5, 5, 6))
    assert a.checksum == b.checksum
    assert a.checksum != c.checksum


def test_multilabel_protocol_covers_concepts():
    ds = _dataset(multilabel=True)
    s = make_splits(ds, SPEC, seed=0)
    assert len(s.query) == 60
    assert (ds.y[s.query].sum(0) >= 10).all()


def test_too_small_dataset_is_an_error():
    with pytest.raises(QbenchError, match="needs 210 items"):
        make_splits(_dataset(n=200), SPEC, seed=0)


def test_validator_rejects_overlap_and_wrong_counts():
    ds = _dataset()
    s = make_splits(ds, SPEC, seed=0)
    bad = Splits(s.protocol, s.seed, s.query, s.train, s.val,
                 np.sort(np.concatenate([s.database[:-1], s.query[:1]])))
    with pytest.raises(QbenchError, match="query and database"):
        validate_splits(bad, SPEC, len(ds))
    short = Splits(s.protocol, s.seed, s.query[:-1], s.train, s.val, s.database)
    with pytest.raises(QbenchError, match="query split has 59 items, expected 60"):
        validate_splits(short, SPEC, len(ds))


def test_materialise_writes_once_and_reloads_the_same_indices(tmp_path):
    ds = _dataset()
    first = materialise(ds, SPEC, 2, tmp_path)
    files = list(tmp_path.glob("*.npz"))
    assert len(files) == 1
    again = materialise(ds, SPEC, 2, tmp_path)
    assert again.checksum == first.checksum
    np.testing.assert_array_equal(again.query, first.query)


def test_tampered_protocol_file_fails_its_checksum(tmp_path):
    ds = _dataset()
    s = materialise(ds, SPEC, 2, tmp_path)
    path = next(tmp_path.glob("*.npz"))
    with np.load(path) as z:
        data = dict(z)
    data["query"] = data["query"].copy()
    data["query"][0] = s.database[0]
    np.savez(path, **data)
    with pytest.raises(QbenchError, match="checksum"):
        materialise(ds, SPEC, 2, tmp_path)


def test_digits_standard_protocol_matches_spec():
    plugin = DATASETS.get("digits")({}, None)
    ds = plugin.load()
    s = make_splits(ds, plugin.protocol("standard"), seed=0)
    assert len(ds) == 1797
    assert (len(s.query), len(s.train), len(s.database)) == (100, 500, 1697)
    assert np.bincount(ds.y[s.query]).tolist() == [10] * 10


def test_a_truncated_split_file_is_a_one_line_error(tmp_path):
    path = tmp_path / "splits.npz"
    path.write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(QbenchError, match="is unreadable or incomplete: .*delete the file"):
        Splits.load(path)
