"""The array cache's own housekeeping (entries' use by datasets: test_datasets.py)."""

import numpy as np

from qbench.data import arraycache
from qbench.data.arraycache import ArrayCache


def test_reader_of_a_missing_folder_creates_nothing(tmp_path):
    assert ArrayCache(tmp_path / "none").get("k") is None
    assert not (tmp_path / "none").exists()
    cache = ArrayCache(tmp_path / "c")
    cache.put("k", {"y": np.arange(3)}, {})
    assert cache.get("k").arrays["y"].tolist() == [0, 1, 2]


def test_a_live_writers_temporary_is_kept_however_old(tmp_path):
    """One long write into a single file leaves its folder's mtime old: the temporary of a
    live process on this host is never taken for an orphan."""
    import os
    import time

    live = tmp_path / "c" / f"{arraycache._tmp_prefix()}long"
    live.mkdir(parents=True)
    old = time.time() - 3 * arraycache.STALE_AFTER_S
    os.utime(live, (old, old))
    assert ArrayCache(tmp_path / "c").get("k") is None
    assert live.exists()
