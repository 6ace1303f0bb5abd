"""Train once, quantize many: the stage-1 encoder cache."""

import fcntl
import json
import multiprocessing
import time

import numpy as np
import pytest

from qbench.core.errors import QbenchError
from qbench.run.pipeline import RunRequest, run_experiment
from qbench.train.encoder_cache import EncoderCache, clear_cache, list_entries


def _run(tmp_path, method, bits=32, **kw):
    kw.setdefault("epochs", 6)
    return run_experiment(RunRequest(method=method, bits=bits, out=tmp_path / "out",
                                     cache_dir=tmp_path / "cache", **kw))[1]


def _entries(tmp_path):
    return sorted(p.name for p in (tmp_path / "cache" / "encoders").iterdir()
                  if not p.name.startswith("."))


def test_stage1_methods_share_one_encoder_per_seed_and_equal_an_uncached_run(tmp_path):
    first = _run(tmp_path, "float")
    results = [_run(tmp_path, m, bits) for m in ("two-stage-pq", "itq") for bits in (12, 24)]
    assert first["encoder_cache"] == "miss"
    assert [r["encoder_cache"] for r in results] == ["hit"] * 4
    assert {r["encoder_key"] for r in results} == {first["encoder_key"]}
    assert len(_entries(tmp_path)) == 1
    uncached = run_experiment(RunRequest(method="two-stage-pq", bits=24, epochs=6,
                                         out=tmp_path / "plain", use_cache=False))[1]
    assert uncached["encoder_cache"] == "off"
    assert uncached["metrics"]["map_all"] == results[1]["metrics"]["map_all"]
    assert uncached["selection"]["values"] == results[1]["selection"]["values"]


def test_sign_and_householder_share_one_encoder_per_bit_length(tmp_path):
    a = _run(tmp_path, "sign", 16)
    b = _run(tmp_path, "householder", 16, method_params={"rot_epochs": 2})
    c = _run(tmp_path, "sign", 12)
    assert (a["encoder_cache"], b["encoder_cache"], c["encoder_cache"]) == ("miss", "hit", "miss")
    assert a["encoder_key"] == b["encoder_key"] != c["encoder_key"]


@pytest.mark.parametrize("method", ["dqn", "ssm", "gsl"])
def test_joint_methods_warm_start_from_the_cache_and_equal_an_uncached_run(tmp_path, method):
    cached = _run(tmp_path, method, epochs=12)
    plain = run_experiment(RunRequest(method=method, epochs=12, out=tmp_path / "plain",
                                      use_cache=False))[1]
    warm = cached["method_info"]["warm_start"]
    assert warm["epoch"] == 2 and warm["cache"] == "miss"
    assert plain["method_info"]["warm_start"] is None
    assert cached["selection"]["values"] == plain["selection"]["values"]
    assert cached["metrics"]["map_all"] == plain["metrics"]["map_all"]


def test_a_corrupt_entry_is_reported_and_retrained(tmp_path, capsys):
    _run(tmp_path, "float", epochs=3)
    (key,) = _entries(tmp_path)
    weights = tmp_path / "cache" / "encoders" / key / "weights.pt"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    again = _run(tmp_path, "float", epochs=3)
    assert again["encoder_cache"] == "miss"
    assert "(weights.pt fails its checksum); retraining it" in capsys.readouterr().err
    assert _run(tmp_path, "float", epochs=3)["encoder_cache"] == "hit"


def test_another_code_version_is_a_miss(tmp_path, monkeypatch):
    first = _run(tmp_path, "float", epochs=2)
    monkeypatch.setattr("qbench.core.provenance.code_version", lambda: "another-version")
    second = _run(tmp_path, "float", epochs=2)
    assert second["encoder_cache"] == "miss" and second["encoder_key"] != first["encoder_key"]


def test_unwritable_cache_is_a_one_line_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(QbenchError, match=r"--cache-dir .*file.* is not writable"):
        EncoderCache(blocker / "cache")


def _hold_lock(root, ready, release):
    cache = EncoderCache(root)
    with cache.lock("k"):
        ready.set()
        release.wait(10)


def test_the_lock_of_a_dead_holder_is_taken_over(tmp_path):
    ctx = multiprocessing.get_context("fork")
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold_lock, args=(tmp_path, ready, release))
    holder.start()
    assert ready.wait(10)
    with open(tmp_path / "locks" / "k.lock", "a+") as fh:
        with pytest.raises(BlockingIOError):  # held by the live holder
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        holder.kill()
        holder.join(10)
        deadline = time.monotonic() + 10
        while True:  # the kernel releases the dead holder's lock
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                assert time.monotonic() < deadline, "the dead holder's lock was never released"
                time.sleep(0.05)


def test_cache_list_and_clear(tmp_path):
    _run(tmp_path, "float", epochs=2)
    rows = list_entries(tmp_path / "cache")
    assert len(rows) == 1 and "digits seed 0 D=64" in rows[0]
    assert clear_cache(tmp_path / "cache") >= 1
    assert list_entries(tmp_path / "cache") == []


def test_cached_embeddings_are_reused_across_runs(tmp_path):
    _run(tmp_path, "float", epochs=2)
    (key,) = _entries(tmp_path)
    stored = sorted((tmp_path / "cache" / "encoders" / key).glob("emb-e*.npz"))
    assert stored
    with np.load(stored[-1]) as z:
        assert z["have"].sum() > 0
    meta = json.loads((tmp_path / "cache" / "encoders" / key / "entry.json").read_text())
    assert meta["fields"]["seed"] == 0 and meta["fields"]["dim"] == 64


def test_train_stage1_fills_the_cache_that_runs_then_hit(tmp_path):
    from qbench.run.pipeline import train_stage1

    req = RunRequest(method="two-stage-pq", bits=24, epochs=3, out=tmp_path / "out",
                     cache_dir=tmp_path / "cache")
    assert train_stage1(req)["cache"] == "miss"
    assert train_stage1(req)["cache"] == "hit"
    assert _run(tmp_path, "itq", 12, epochs=3)["encoder_cache"] == "hit"
    assert train_stage1(RunRequest(method="pq", out=tmp_path / "out")) is None


def test_an_entry_folder_without_its_manifest_is_replaced(tmp_path):
    first = _run(tmp_path, "float", epochs=2)
    (key,) = _entries(tmp_path)
    (tmp_path / "cache" / "encoders" / key / "entry.json").unlink()
    again = _run(tmp_path, "float", epochs=2)
    assert again["encoder_cache"] == "miss" and again["encoder_key"] == first["encoder_key"]
    assert _run(tmp_path, "float", epochs=2)["encoder_cache"] == "hit"


def test_default_and_explicit_epochs_share_one_entry(tmp_path):
    a = _run(tmp_path, "float", epochs=None, method_params={"epochs": 0})
    b = _run(tmp_path, "float", epochs=60)
    assert a["encoder_key"] == b["encoder_key"] and b["encoder_cache"] == "hit"


def _train_in_process(req, queue):
    from qbench.run.pipeline import train_stage1

    queue.put(train_stage1(req)["cache"])


def test_concurrent_workers_train_one_key_once(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    req = RunRequest(method="float", epochs=20, out=tmp_path / "out",
                     cache_dir=tmp_path / "cache")
    workers = [ctx.Process(target=_train_in_process, args=(req, queue)) for _ in range(2)]
    for worker in workers:
        worker.start()
    statuses = sorted(queue.get(timeout=120) for _ in workers)
    for worker in workers:
        worker.join(30)
    assert statuses == ["hit", "miss"]
    assert len(_entries(tmp_path)) == 1
