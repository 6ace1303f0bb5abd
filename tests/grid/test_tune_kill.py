"""A real ``qbench tune`` process killed mid-trial (SIGKILL), then resumed (issue 22.3)."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from qbench.cli import cli
from qbench.grid import storage as studies

STUDY_ARGS = ["tune", "-m", "float", "--shared", "-d", "digits", "--bits", "16",
              "--epochs", "6", "-n", "3", "-q"]


def _states(db: Path) -> list[tuple[int, str]]:
    """(number, state) of every trial in the study's SQLite file (empty while absent)."""
    if not db.is_file():
        return []
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as con:
            return con.execute("SELECT number, state FROM trials ORDER BY number").fetchall()
    except sqlite3.Error:  # the schema is being created
        return []


def _beating(db: Path, number: int) -> bool:
    """Whether trial ``number`` has recorded a heartbeat (its worker is under way)."""
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as con:
            return bool(con.execute(
                "SELECT COUNT(*) FROM trial_heartbeats h JOIN trials t "
                "ON h.trial_id = t.trial_id WHERE t.number = ?", (number,)).fetchone()[0])
    except sqlite3.Error:
        return False


def test_a_killed_tune_process_leaves_no_running_trial_and_resumes_to_the_budget(
        tmp_path, monkeypatch):
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-c", "from qbench.cli import main; main()",
                             *STUDY_ARGS, "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 240
        db = None
        while time.time() < deadline:  # kill while trial 1 runs, after trial 0 completed
            found = list((out / "tune").glob("*.db")) if (out / "tune").is_dir() else []
            db = found[0] if found else None
            states = _states(db) if db else []
            # a trial killed before its first heartbeat is failed only once GRACE_S old
            # (test_tune.py covers that case): kill one that is beating
            if (0, "COMPLETE") in states and (1, "RUNNING") in states and _beating(db, 1):
                break
            if proc.poll() is not None:
                pytest.fail("qbench tune ended before it could be killed: "
                            + proc.stderr.read().decode()[-2000:])
            time.sleep(0.05)
        else:
            pytest.fail("no trial ran within 240 s")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert (1, "RUNNING") in _states(db)  # the killed trial, as the kill left it
    with sqlite3.connect(db) as con:
        before = con.execute("SELECT t.number, v.value FROM trials t JOIN trial_values v "
                             "ON t.trial_id = v.trial_id WHERE t.number = 0").fetchall()
    monkeypatch.setattr(studies, "HEARTBEAT_S", 1)
    monkeypatch.setattr(studies, "GRACE_S", 1)
    time.sleep(2.1)  # past the grace period (SQLite's clock has one-second resolution)
    got = CliRunner().invoke(cli, [*STUDY_ARGS, "--out", str(out)])
    assert got.exit_code == 0, got.output
    states = _states(db)
    assert not [n for n, s in states if s == "RUNNING"]  # nothing left stuck
    assert (1, "FAIL") in states  # the killed trial, failed by its stopped heartbeat
    finished = [n for n, s in states if s in ("COMPLETE", "PRUNED")]
    assert len(finished) == 3 and 0 in finished  # the budget exactly; trial 0 kept
    with sqlite3.connect(db) as con:
        after = con.execute("SELECT t.number, v.value FROM trials t JOIN trial_values v "
                            "ON t.trial_id = v.trial_id WHERE t.number = 0").fetchall()
    assert after == before  # not rerun
    summary = json.loads(next((out / "tune").glob("*.json")).read_text())
    assert summary["trials"]["complete"] + summary["trials"]["pruned"] == 3
    assert summary["trials"]["failed"] == 1
