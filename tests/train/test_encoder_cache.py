"""Train once, quantize many: the stage-1 encoder cache."""

import errno
import fcntl
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
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
    removed, kept = clear_cache(tmp_path / "cache")
    assert removed >= 1 and kept == 0
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


def test_a_directory_in_place_of_a_lock_is_removed(tmp_path, capsys):
    cache = EncoderCache(tmp_path)
    (tmp_path / "locks" / "k.lock" / "junk").mkdir(parents=True)
    with cache.lock("k"):
        pass
    assert (tmp_path / "locks" / "k.lock").is_file()
    assert "is a directory, not a lock file; removing it" in capsys.readouterr().err


def test_a_run_goes_on_past_a_directory_in_place_of_its_lock(tmp_path):
    first = _run(tmp_path, "float", epochs=2)
    lock = tmp_path / "cache" / "locks" / f"{first['encoder_key']}.lock"
    lock.unlink()
    lock.mkdir()
    assert _run(tmp_path, "float", epochs=2)["encoder_cache"] == "hit"


def test_an_unremovable_directory_lock_is_a_one_line_error(tmp_path, monkeypatch):
    cache = EncoderCache(tmp_path)
    (tmp_path / "locks" / "k.lock").mkdir()

    def refuse(path, *args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr("qbench.train.encoder_cache.shutil.rmtree", refuse)
    with pytest.raises(QbenchError, match=r"lock .*k\.lock cannot be opened: Permission "
                                          r"denied; allowed: ") as info:
        with cache.lock("k"):
            pass
    assert "\n" not in str(info.value)


def _fake_entry(root, key):
    folder = root / "encoders" / key
    folder.mkdir(parents=True)
    (folder / "entry.json").write_text("{}")


def test_clear_keeps_an_entry_whose_lock_is_held_and_every_lock_file(tmp_path):
    cache = EncoderCache(tmp_path)
    _fake_entry(tmp_path, "busy")
    _fake_entry(tmp_path, "idle")
    with cache.lock("busy"):
        assert clear_cache(tmp_path) == (1, 1)
        assert (tmp_path / "locks" / "busy.lock").is_file()
    assert (tmp_path / "encoders" / "busy" / "entry.json").is_file()
    assert not (tmp_path / "encoders" / "idle").exists()
    assert (tmp_path / "locks" / "idle.lock").is_file()
    with cache.lock("busy-emb"):  # a run storing the entry's embeddings
        assert clear_cache(tmp_path) == (0, 1)
    assert clear_cache(tmp_path) == (1, 0)
    assert not (tmp_path / "encoders" / "busy").exists()
    assert (tmp_path / "locks" / "busy.lock").is_file()


def test_cache_clear_command_reports_the_entries_in_use(tmp_path):
    from click.testing import CliRunner

    from qbench.cli import cli

    cache = EncoderCache(tmp_path)
    _fake_entry(tmp_path, "busy")
    _fake_entry(tmp_path, "idle")
    with cache.lock("busy"):
        result = CliRunner().invoke(cli, ["cache", "clear", "--cache-dir", str(tmp_path)])
    assert result.exit_code == 0
    assert f"removed 1 entries from {tmp_path}; kept 1 entries in use" in result.output
    again = CliRunner().invoke(cli, ["cache", "clear", "--cache-dir", str(tmp_path)])
    assert again.exit_code == 0 and "in use" not in again.output


def _start_write_and_die(encoders, key):
    from qbench.train import encoder_cache

    path = tempfile.mkdtemp(prefix=encoder_cache._tmp_prefix(key), dir=encoders)
    with open(os.path.join(path, "entry.json"), "w") as fh:
        fh.write("{}")
    os._exit(0)  # killed mid-write: the folder stays


def _dead_pid():
    return subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()


def test_opening_the_cache_removes_temporaries_of_dead_writers_only(tmp_path):
    from qbench.data.arraycache import _host

    EncoderCache(tmp_path)
    encoders = tmp_path / "encoders"
    writer = multiprocessing.get_context("fork").Process(target=_start_write_and_die,
                                                         args=(encoders, "a" * 24))
    writer.start()
    writer.join(30)
    (orphan,) = encoders.iterdir()
    assert orphan.name.startswith(f".tmp-{'a' * 24}-")
    live = encoders / f".tmp-{'b' * 24}-{_host()}-{os.getpid()}-x2"
    elsewhere = encoders / f".tmp-{'c' * 24}-another_host-{_dead_pid()}-x3"
    stranger = encoders / f".tmp-{'d' * 24}-{_host()}-{_dead_pid()}-x4"
    _fake_entry(tmp_path, live.name)
    _fake_entry(tmp_path, elsewhere.name)
    _fake_entry(tmp_path, stranger.name)
    assert list_entries(tmp_path) == []  # temporaries are not entries
    EncoderCache(tmp_path)
    assert not orphan.exists() and not stranger.exists()
    assert live.exists() and elsewhere.exists()


def test_a_full_disk_while_storing_an_entry_is_a_one_line_error(tmp_path, monkeypatch):
    from pathlib import Path

    def full(obj, path, *args, **kwargs):
        Path(path).write_bytes(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc:595] . unexpected pos 64\n"
                           "PytorchStreamWriter failed writing file data/0: file write failed")

    monkeypatch.setattr("qbench.train.encoder_cache.torch.save", full)
    with pytest.raises(QbenchError, match=r"encoder cache .*cache: cannot store entry \w+: "
                                          r"the disk is full or not writable "
                                          r"\(RuntimeError: \[enforce fail") as info:
        _run(tmp_path, "float", epochs=2)
    assert "\n" not in str(info.value)
    assert list((tmp_path / "cache" / "encoders").iterdir()) == []


def test_no_space_while_storing_an_entry_is_a_one_line_error(tmp_path, monkeypatch):
    def full(obj, path, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("qbench.train.encoder_cache.torch.save", full)
    with pytest.raises(QbenchError, match=r"cannot store entry \w+: the disk is full or not "
                                          r"writable \(No space left on device\)") as info:
        _run(tmp_path, "float", epochs=2)
    assert "\n" not in str(info.value)
    assert list((tmp_path / "cache" / "encoders").iterdir()) == []


def test_an_entry_matching_its_checksum_that_cannot_be_loaded_is_retrained(tmp_path, capsys):
    from qbench.train.encoder_cache import _sha256

    _run(tmp_path, "float", epochs=2)
    (key,) = _entries(tmp_path)
    folder = tmp_path / "cache" / "encoders" / key
    (folder / "weights.pt").write_bytes(b"not a torch file")
    meta = json.loads((folder / "entry.json").read_text())
    meta["files"]["weights.pt"] = _sha256(folder / "weights.pt")
    (folder / "entry.json").write_text(json.dumps(meta))
    assert _run(tmp_path, "float", epochs=2)["encoder_cache"] == "miss"
    err = capsys.readouterr().err
    assert err.count("weights.pt cannot be loaded") == 1 and "retraining it" in err
    assert _run(tmp_path, "float", epochs=2)["encoder_cache"] == "hit"
    assert "cannot be loaded" not in capsys.readouterr().err


def test_temporary_files_of_dead_writers_inside_an_entry_are_removed(tmp_path):
    from qbench.data.arraycache import _host

    _run(tmp_path, "float", epochs=2)
    (key,) = _entries(tmp_path)
    folder = tmp_path / "cache" / "encoders" / key
    dead = folder / f".tmp-{_host()}-{_dead_pid()}-x1.npz"
    live = folder / f".tmp-{_host()}-{os.getpid()}-x2.npz"
    old = folder / ".tmp-x3.npz"  # an untagged name: removed once a day old
    young = folder / ".tmp-x4.npz"
    for path in (dead, live, old, young):
        path.write_bytes(b"partial")
    os.utime(old, (time.time() - 2 * 86400,) * 2)
    EncoderCache(tmp_path / "cache")
    assert not dead.exists() and not old.exists()
    assert live.exists() and young.exists() and (folder / "entry.json").is_file()
