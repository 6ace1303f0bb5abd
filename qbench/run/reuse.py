"""Loaded inputs kept between the runs of one process: the dataset and the frozen
backbone's features, loaded and verified once instead of once per run.

A tuning trial or a grid cell starts by loading its dataset through the cache (for the
CIFAR-10 JPEG copy: a stat of 60,000 files for the cache key, then a sha256 of 184 MB) and,
in the head regime, the backbone's cached features; on 2 cores that took 2.0 s of a
3.1 s head trial. The trials of a study and the cells a grid worker runs all read the same
files, so an :class:`InputMemo` keeps what the last runs loaded, keyed by everything that
determines it (dataset, its parameters, data folder and cache root; for the features also
the protocol, split seed and training seed, the backbone's parameters and the device: what
the backbone's cache key holds). What a run computes from them is unchanged: the same
arrays, the same splits and pool (these are rebuilt, and the split files written, by every
run).

Scope, chosen so that nothing outlives the files it was read from in practice: one memo per
tuning study (:func:`qbench.grid.tune.pipeline_objective`), and one per grid worker
process (:func:`enable_process_memo`, called by the local backend's worker pool
initializer, ``--jobs`` 2 or more; a grid's pool lives as long as the grid). A source file
changed *during* a study or a grid, or a cache entry corrupted or cleared under it, is
therefore noticed by the next study or grid, not by the next run. Nothing is reused with
``--no-cache`` (every run trains its backbone anew, as that flag says), by a plain
``qbench run``, by ``--jobs 1`` cells, or on the Ray backend.
"""

from __future__ import annotations

import collections
import json
import threading
from collections.abc import Callable
from typing import Any

MEMO_SIZE = 16
"""Entries kept: the datasets plus the features of a grid's training seeds (the reference
grid: one dataset and 6 seeds per grid; cells are interleaved over seeds, so a worker
meets them in turn). With the cache on, entries are memory-mapped cache files."""


class InputMemo:
    """A small least-recently-used map from a key (any JSON-able value) to what
    ``build()`` returned for it; safe to share between threads."""

    def __init__(self, size: int = MEMO_SIZE):
        self.size = size
        self._entries: collections.OrderedDict[str, Any] = collections.OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0

    @staticmethod
    def _key(key: Any) -> str:
        return json.dumps(key, sort_keys=True, default=str)

    def get(self, key: Any, build: Callable[[], Any]) -> tuple[Any, bool]:
        """(the value for ``key``, whether it was reused); a miss calls ``build()`` (outside
        the lock, so another thread's different key is not held up) and keeps the value."""
        text = self._key(key)
        with self._lock:
            if text in self._entries:
                self._entries.move_to_end(text)
                self.hits += 1
                return self._entries[text], True
        value = build()
        with self._lock:
            self._entries[text] = value
            self._entries.move_to_end(text)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)
        return value, False


_PROCESS_MEMO: InputMemo | None = None


def enable_process_memo(size: int = MEMO_SIZE) -> InputMemo:
    """Give this process one memo for all its runs (a grid worker; see the module docstring)."""
    global _PROCESS_MEMO
    _PROCESS_MEMO = InputMemo(size)
    return _PROCESS_MEMO


def process_memo() -> InputMemo | None:
    """This process's memo, or None when it has none (the default)."""
    return _PROCESS_MEMO
