"""A real full disk (a small tmpfs, root only): one QbenchError line, nothing half-written."""

import os
import subprocess
import uuid

import pytest

from qbench.core.errors import QbenchError
from qbench.run.results import write_json_atomic
from tests.run.test_disk_full import run_on_a_full_disk


@pytest.fixture
def full_tmpfs(tmp_path, request):
    """A 200 KB tmpfs, filled but for ``request.param`` spare bytes (default none);
    unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / f"tmpfs-{uuid.uuid4().hex[:8]}"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=200k", "tmpfs", str(mnt)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"mount -t tmpfs failed: {done.stderr.strip() or done.returncode}")
    try:
        (mnt / "old.json").write_text('{"old": true}\n')
        with open(mnt / "filler", "wb", buffering=0) as fh:  # take every free block
            try:
                while True:
                    fh.write(b"\0" * 4096)
            except OSError:
                pass
            fh.truncate(max(0, fh.tell() - getattr(request, "param", 0)))  # leave the spare
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_write_json_atomic_on_a_real_full_disk(full_tmpfs):
    path = full_tmpfs / "old.json"
    with pytest.raises(QbenchError, match=rf"^cannot write {path}: No space left on device$"):
        write_json_atomic(path, {"x": list(range(20000))})
    assert path.read_text() == '{"old": true}\n'
    assert sorted(p.name for p in full_tmpfs.iterdir()) == ["filler", "old.json"]


# room for the run's split file (about 21 KB), not for its result (about 18 KB): the
# result's write fails (a disk with no room at all fails on the split file, also one
# line: tests/run/test_disk_full.py)
@pytest.mark.parametrize("full_tmpfs", [24 * 1024], indirect=True)
def test_cli_run_on_a_real_full_disk_exits_2_with_one_line(full_tmpfs):
    run_on_a_full_disk(full_tmpfs / "out")
    assert not [p for p in full_tmpfs.rglob("*") if p.name.endswith(".part")]
    assert not [p for p in full_tmpfs.rglob("*.json") if p.name != "old.json"]
