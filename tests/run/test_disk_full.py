"""A full disk while writing a result: one QbenchError line, no temp file, old file kept."""

import errno
import os

import pytest
from click.testing import CliRunner

from qbench.cli import cli
from qbench.core import atomic
from qbench.core.atomic import atomic_write
from qbench.core.errors import QbenchError
from qbench.run.results import write_json_atomic


def _enospc(*_args, **_kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _full_disk_mkstemp(monkeypatch):
    """Temp files whose writes hit /dev/full: a real ENOSPC from the handle's write."""
    if not os.path.exists("/dev/full"):
        pytest.skip("needs /dev/full")
    real = atomic.tempfile.mkstemp

    def mkstemp(**kwargs):
        fd, tmp = real(**kwargs)
        os.close(fd)
        return os.open("/dev/full", os.O_WRONLY), tmp

    monkeypatch.setattr(atomic.tempfile, "mkstemp", mkstemp)


def test_fsync_enospc_is_one_line_and_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "r.json"
    path.write_text("old\n")
    monkeypatch.setattr(atomic.os, "fsync", _enospc)
    with pytest.raises(QbenchError) as info:
        write_json_atomic(path, {"a": 1})
    assert str(info.value) == f"cannot write {path}: No space left on device"
    assert path.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


@pytest.mark.parametrize("size", [10, 1 << 20])  # buffered (fails at flush) and direct
def test_write_enospc_inside_the_block_is_one_line(tmp_path, monkeypatch, size):
    path = tmp_path / "r.json"
    path.write_text("old\n")
    _full_disk_mkstemp(monkeypatch)
    with pytest.raises(QbenchError, match=r"^cannot write .*r\.json: No space left on device$"):
        write_json_atomic(path, {"a": "x" * size})
    assert path.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_the_callers_own_oserror_propagates_unchanged(tmp_path):
    path = tmp_path / "r.json"
    err = FileNotFoundError(errno.ENOENT, "not the write", "elsewhere")
    with pytest.raises(FileNotFoundError) as info:
        with atomic_write(path) as fh:
            fh.write(b"partial")
            raise err
    assert info.value is err
    assert list(tmp_path.iterdir()) == []


def test_the_callers_error_wins_over_a_failing_final_flush(tmp_path, monkeypatch):
    _full_disk_mkstemp(monkeypatch)
    with pytest.raises(KeyError):
        with atomic_write(tmp_path / "r.json") as fh:
            fh.write(b"buffered")
            raise KeyError("caller")
    assert list(tmp_path.iterdir()) == []


def run_on_a_full_disk(out) -> str:
    """``qbench run --no-cache`` into ``out`` on a full disk: exit 2, one line (returned)
    saying what could not be written, no traceback."""
    result = CliRunner().invoke(cli, ["run", "--method", "float", "--dataset", "digits",
                                      "--bits", "32", "--quiet", "--no-cache",
                                      "--out", str(out)])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot write "), result.output
    assert "No space left on device" in lines[0] and "Traceback" not in result.output
    return lines[0]


def test_run_no_cache_on_a_full_disk_exits_2_with_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(atomic.os, "fsync", _enospc)
    out = tmp_path / "out"
    assert run_on_a_full_disk(out).endswith(": No space left on device")
    assert not out.exists() or not [p for p in out.rglob("*") if p.is_file()]


def test_a_split_file_on_a_full_disk_is_one_line(tmp_path, monkeypatch):
    """np.savez seeks back over what it wrote (zipfile headers): the seek's flush hits the
    full disk, and that is a failed write too, not a traceback."""
    import numpy as np

    from qbench.data.protocols import Splits

    _full_disk_mkstemp(monkeypatch)
    idx = np.arange(10)
    splits = Splits("standard", 0, *(idx for _ in range(4)))
    path = tmp_path / "s.npz"
    with pytest.raises(QbenchError, match=r"^cannot write .*s\.npz: No space left on device$"):
        splits.save(path)
    assert list(tmp_path.iterdir()) == []
