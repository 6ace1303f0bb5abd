"""Model selection: the pool, one criterion per representation, best/last, and records."""

import numpy as np
import pytest

from qbench.core.codes import BinaryCodes, FloatCodes, PQCodes
from qbench.core.errors import QbenchError
from qbench.data.pool import selection_pool
from qbench.data.protocols import Splits
from qbench.run.identity import identity_tag
from qbench.run.pipeline import RunRequest, run_experiment
from qbench.train.selection import criterion, score_candidate, select


def _splits(n=200, classes=4):
    y = np.arange(n) % classes
    idx = np.arange(n)
    query, train, val = idx[:20], idx[20:80], idx[80:100]
    database = idx[20:]
    return Splits("t", 0, query, train, val, database), y


def test_pool_holds_no_train_query_or_validation_item():
    splits, y = _splits()
    pool = selection_pool(splits, y, cap=0)
    assert not np.intersect1d(pool.pool, splits.train).size
    assert not np.intersect1d(pool.pool, splits.query).size
    assert not np.intersect1d(pool.pool, splits.val).size
    np.testing.assert_array_equal(pool.pool, np.arange(100, 200))
    assert pool.summary()["pool_overlaps_train"] is False
    assert pool.summary()["n_pool"] == 100 and pool.summary()["n_val_queries"] == 20


def test_capped_pool_is_a_seeded_per_class_sample():
    splits, y = _splits()
    a = selection_pool(splits, y, cap=40, seed=3)
    b = selection_pool(splits, y, cap=40, seed=3)
    np.testing.assert_array_equal(a.pool, b.pool)
    assert len(a.pool) == 40 and np.bincount(y[a.pool]).tolist() == [10, 10, 10, 10]
    assert not np.array_equal(a.pool, selection_pool(splits, y, cap=40, seed=4).pool)


def test_pool_without_a_positive_for_a_validation_query_is_an_error():
    splits, y = _splits()
    y = y.copy()
    y[splits.val[0]] = 9  # a class that exists nowhere in the pool
    with pytest.raises(QbenchError, match="no relevant item for 1 of 20 validation queries"):
        selection_pool(splits, y, cap=0)


def test_criterion_names_representation_and_metric():
    q = np.zeros((2, 4), dtype=np.float32)
    assert "cosine" in criterion(FloatCodes(q, q, metric="cosine"))
    assert "ADC" in criterion(PQCodes(q, np.zeros((2, 2), dtype=np.int64),
                                      np.zeros((2, 4, 2), dtype=np.float32)))
    bits = np.zeros((2, 8), dtype=np.uint8)
    assert "tie-aware Hamming" in criterion(BinaryCodes(bits, bits))


class FakeEncoder:
    """Candidates whose embeddings make validation MAP follow ``quality`` per epoch."""

    def __init__(self, y, quality):
        self.y, self.quality = y, quality
        self.candidates = sorted(quality)

    def embeddings(self, epoch, idx):
        rng = np.random.default_rng(epoch)
        onehot = np.eye(4)[self.y[idx]]
        return (self.quality[epoch] * onehot + rng.normal(size=onehot.shape)).astype(np.float32)


def _cosine(train, val, pool):
    return FloatCodes(val, pool, metric="cosine"), "fitted"


def test_select_reuses_the_scores_of_candidates_scored_during_training():
    splits, y = _splits()
    pool = selection_pool(splits, y, cap=0)
    encoder = FakeEncoder(y, {1: 0.5, 3: 8.0, 5: 1.0})
    plain = select(encoder, splits.train, pool, y, _cosine, "best")
    embedded = []
    original = encoder.embeddings
    encoder.embeddings = lambda epoch, idx: embedded.append(epoch) or original(epoch, idx)
    early = {e: score_candidate([original(e, i) for i in (splits.train, pool.val, pool.pool)],
                                _cosine, y[pool.val], y[pool.pool]) for e in (1, 3)}
    reused = select(encoder, splits.train, pool, y, _cosine, "best", scored=early)
    assert set(embedded) == {5}  # only the candidate not scored during training
    assert reused.selection.to_dict() == plain.selection.to_dict()
    everything = {**early, 5: score_candidate(
        [original(5, i) for i in (splits.train, pool.val, pool.pool)], _cosine,
        y[pool.val], y[pool.pool])}
    embedded.clear()
    assert select(encoder, splits.train, pool, y, _cosine, "last",
                  scored=everything).epoch == 5 and not embedded


def test_best_picks_the_highest_validation_map_and_last_the_last_epoch():
    splits, y = _splits()
    pool = selection_pool(splits, y, cap=0)
    encoder = FakeEncoder(y, {1: 0.5, 3: 8.0, 5: 1.0})
    best = select(encoder, splits.train, pool, y, _cosine, "best")
    rec = best.selection.to_dict()
    assert rec["epochs"] == [1, 3, 5] and best.epoch == 3 and rec["chosen_epoch"] == 3
    assert rec["values"][1] == max(rec["values"]) == rec["chosen_value"]
    assert len(set(rec["values"])) == 3 and best.fitted == "fitted"
    last = select(encoder, splits.train, pool, y, _cosine, "last")
    assert last.epoch == 5 and last.selection.epochs == [5]
    with pytest.raises(QbenchError, match="unknown --select 'median'; allowed: best, last"):
        select(encoder, splits.train, pool, y, _cosine, "median")


def _opq_represent(train, val, pool):
    from qbench.quant import OPQ

    q = OPQ(2, 3, iters=5, seed=0).fit(train)
    return PQCodes(q.transform(val), q.encode(pool), q.codebooks), (q, q.rotation.copy())


@pytest.mark.parametrize("share", ["2", "3"])
@pytest.mark.parametrize("represent", [_opq_represent, _cosine], ids=["opq", "cosine"])
def test_fits_side_by_side_give_the_same_selection_whatever_the_share(monkeypatch, share,
                                                                      represent):
    """Small candidate fits run on a thread each (one per core of the process's share),
    single-threaded inside: every value, the choice and the chosen fit equal those of one
    fit after another; the last candidate scores the same under best and last."""
    import qbench.quant as Q

    splits, y = _splits()
    pool = selection_pool(splits, y, cap=0)
    encoder = FakeEncoder(y, {0: 0.3, 1: 2.0, 2: 0.8, 3: 1.5})
    monkeypatch.setenv("OMP_NUM_THREADS", share)
    assert Q.fit_workers(60 * 4, 4) == int(share) and Q.fit_workers(60 * 4, 1) == 1
    assert Q.fit_workers(Q.SMALL_PROBLEM + 1, 4) == 0
    seen = []
    parallel = select(encoder, splits.train, pool, y, represent, "best",
                      on_value=lambda e, v: seen.append(e))
    last = select(encoder, splits.train, pool, y, represent, "last")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    sequential = select(encoder, splits.train, pool, y, represent, "best")
    assert seen == [0, 1, 2, 3]  # on_value in epoch order
    assert parallel.selection.to_dict() == sequential.selection.to_dict()
    assert parallel.epoch == sequential.epoch
    assert last.selection.values == parallel.selection.values[-1:]
    if represent is _opq_represent:
        np.testing.assert_array_equal(parallel.fitted[1], sequential.fitted[1])


def test_side_by_side_threads_count_as_one_core(monkeypatch):
    from qbench.core.cores import cpu_share
    from qbench.quant import side_by_side

    monkeypatch.setenv("OMP_NUM_THREADS", "4")
    with side_by_side(2) as pool:
        inside = list(pool.map(lambda _: cpu_share(), range(4)))
    assert inside == [1, 1, 1, 1] and cpu_share() == 4


def test_an_error_in_one_side_by_side_fit_stops_the_selection(monkeypatch):
    splits, y = _splits()
    pool = selection_pool(splits, y, cap=0)
    encoder = FakeEncoder(y, {e: 1.0 for e in range(6)})
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    calls = []

    def failing(train, val, pool_emb):
        calls.append(1)
        raise ValueError("fit failed")

    with pytest.raises(ValueError, match="fit failed"):
        select(encoder, splits.train, pool, y, failing, "best")
    assert 1 <= len(calls) <= 6


@pytest.mark.parametrize("method", ["two-stage-pq", "sign", "float", "dqn"])
def test_every_trained_method_records_a_selection_that_does_not_saturate(tmp_path, method):
    _, result = run_experiment(RunRequest(method=method, bits=12 if method == "sign" else 32,
                                          epochs=10, out=tmp_path))
    sel = result["selection"]
    assert sel["rule"] == "best" and sel["pool_overlaps_train"] is False
    assert sel["n_val_queries"] == 100 and sel["n_pool"] == 1097
    assert len(set(sel["values"])) == len(sel["values"]) > 1  # varies across epochs
    assert max(sel["values"]) < 1.0
    assert sel["chosen_value"] == max(sel["values"])
    expected = {"two-stage-pq": "ADC", "dqn": "ADC", "sign": "tie-aware Hamming",
                "float": "cosine"}[method]
    assert expected in sel["criterion"]
    for key in ("train_s", "select_s", "fit_s", "encode_s", "search_s", "eval_s"):
        assert result["timings"][key] >= 0


def test_split_seed_fixes_the_split_while_the_training_seed_varies(tmp_path):
    a = run_experiment(RunRequest(method="float", epochs=2, seed=0, out=tmp_path))[1]
    b = run_experiment(RunRequest(method="float", epochs=2, seed=1, out=tmp_path))[1]
    c = run_experiment(RunRequest(method="float", epochs=2, seed=1, split_seed=1,
                                  out=tmp_path))[1]
    assert a["splits"]["checksum"] == b["splits"]["checksum"] != c["splits"]["checksum"]
    assert (a["split_seed"], c["split_seed"]) == (0, 1)
    tag = identity_tag(a["run_identity"])  # --epochs 2: the same choice in all three
    assert tag and a["run_identity"] == b["run_identity"] == c["run_identity"]
    assert sorted(p.name for p in tmp_path.glob("*.json")) == sorted([
        f"digits-standard-float-32b-seed0-{tag}.json",
        f"digits-standard-float-32b-seed1-split1-{tag}.json",
        f"digits-standard-float-32b-seed1-{tag}.json"])
    assert a["metrics"]["map_all"] != b["metrics"]["map_all"]


def test_run_selection_stops_after_selection_and_householder_scores_its_rotation(tmp_path):
    from qbench.run.pipeline import run_selection

    a = run_selection(RunRequest(method="householder", bits=12, epochs=4, out=tmp_path,
                                 method_params={"rot_epochs": 3, "rot_lr": 0.001}))
    b = run_selection(RunRequest(method="householder", bits=12, epochs=4, out=tmp_path,
                                 method_params={"rot_epochs": 3, "rot_lr": 0.9,
                                                "rot_loss": "l1"}))
    assert a["chosen_value"] == b["chosen_value"]  # stage 1 does not see the rotation
    assert a["tuning_value"] != b["tuning_value"]  # the tuned knobs do
    assert not list(tmp_path.glob("*.json"))
