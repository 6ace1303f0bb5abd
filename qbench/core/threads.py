"""The training thread policy: one torch thread while a small network trains or embeds on
the CPU, restored afterwards.

Small MLP batches run faster on one thread, and stay fast when other processes compete for
the cores (measured on 2 cores: 3.6 s vs 5.0 s per digits run). Image networks and GPUs keep
the process's thread count. torch and faiss may share one OpenMP runtime
(:mod:`qbench.core.cores`), so faiss runs on one thread inside the block too.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def training_threads(modality: str, device: torch.device | str) -> Iterator[None]:
    """One torch thread for vectors on the CPU inside the block; the count it found after.

    Nested blocks change nothing (the count is already one), so the outermost restores.
    """
    threads = torch.get_num_threads()
    one = modality == "vector" and torch.device(device).type == "cpu" and threads != 1
    if one:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if one:
            torch.set_num_threads(threads)
