"""``compare --out`` on a full disk writes all tables or none (the earlier ones stay)."""

import errno
import os

import pytest
from click.testing import CliRunner

import qbench.core.atomic as atomic
from qbench.cli import cli
from qbench.report.compare import run_compare
from tests.report.test_compare import make_result, write


def _snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.fixture
def results(tmp_path):
    src = tmp_path / "results"
    src.mkdir()
    return [write(src, make_result("pq", 12, s)) for s in range(2)]


def _fail_on(monkeypatch, nth):
    """os.fsync raises ENOSPC from its ``nth`` call on (a disk that fills up)."""
    real, calls = atomic.os.fsync, []

    def fsync(fd):
        calls.append(fd)
        if len(calls) >= nth:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd)

    monkeypatch.setattr(atomic.os, "fsync", fsync)


@pytest.mark.parametrize("nth", [1, 5, 14])
def test_a_full_disk_leaves_the_earlier_tables_untouched(tmp_path, results, monkeypatch, nth):
    out = tmp_path / "out"
    run_compare(results, out=out)
    tables = out / "tables"
    before = _snapshot(tables)
    assert len(before) == 14
    more = results + [write(results[0].parent, make_result("pq", 12, 2, map_all=0.9))]
    _fail_on(monkeypatch, nth)
    result = CliRunner().invoke(cli, ["compare", *map(str, more), "--out", str(out)])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.output
    assert lines[0].startswith(f"error: cannot write {tables}")
    assert lines[0].endswith(": No space left on device")
    assert _snapshot(tables) == before  # no new table, no temp file


def test_a_full_disk_on_a_first_compare_writes_no_table(tmp_path, results, monkeypatch):
    _fail_on(monkeypatch, 14)
    result = CliRunner().invoke(cli, ["compare", *map(str, results), "--out",
                                      str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert list((tmp_path / "out" / "tables").iterdir()) == []


def test_a_failed_rename_removes_every_temp_file(tmp_path, results, monkeypatch):
    real = atomic.os.replace

    def replace(src, dst):
        if str(dst).endswith("claims.md"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(src, dst)

    monkeypatch.setattr(atomic.os, "replace", replace)
    result = CliRunner().invoke(cli, ["compare", *map(str, results), "--out",
                                      str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    tables = tmp_path / "out" / "tables"
    assert not [p for p in tables.iterdir() if p.name.startswith(".")]
