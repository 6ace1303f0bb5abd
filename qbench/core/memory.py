"""Host-memory behaviour of inference: no page-fault churn on the CPU.

By default glibc serves every allocation above a (dynamic) threshold with a fresh ``mmap``
and returns it on free, and trims freed heap memory back to the system. A forward pass
allocates and frees activation tensors of tens of MB per batch, so every batch faults all
of its pages in again: on 2 cores a third to half of the CPU time of encoding went to the
kernel (Fashion-MNIST, 6-layer CNN, batch 1024: 7.2 M minor faults and 13 s of system
time per 20,000 images).

Two changes remove it:

- :func:`keep_freed_memory` fixes glibc's mmap threshold at its maximum (32 MiB on 64-bit)
  and raises the trim threshold, so activations come from, and go back to, the heap;
- :func:`inference_batch` sizes CPU inference batches so that the largest activation of
  the model stays well below that threshold.

Nothing changes where the C library is not glibc, or where the user set glibc's own
allocator variables (``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``,
``GLIBC_TUNABLES``): those win. ``make bench-grid`` measures before and after, each in a
fresh process.
"""

from __future__ import annotations

import ctypes
import os
import platform

import torch

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's maximum on 64-bit systems
TRIM_THRESHOLD = 256 * 1024 * 1024
ACTIVATION_BUDGET = MMAP_THRESHOLD // 2
"""Bytes the largest activation of one CPU inference batch may take."""

_applied: bool | None = None


def keep_freed_memory() -> bool:
    """Keep freed memory in the process instead of returning it per batch (glibc only).

    Idempotent; returns whether the thresholds are in effect (False off glibc).
    """
    global _applied
    if _applied is None:
        _applied = False
        if is_glibc() and not any(name in os.environ for name in USER_SETTINGS):
            try:
                mallopt = ctypes.CDLL(None).mallopt  # the process's own C library
            except (OSError, AttributeError):
                return False
            mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
            mallopt.restype = ctypes.c_int
            _applied = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
                mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return _applied


USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")
"""Environment variables through which a user tunes glibc's allocator: set, they win."""


def is_glibc() -> bool:
    """Whether this process runs on glibc (not musl, macOS or Windows)."""
    return platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


def largest_activation_bytes(model: torch.nn.Module, sample: torch.Tensor) -> int:
    """Bytes of the largest tensor any submodule outputs for ``sample`` (one batch)."""
    largest = sample.numel() * sample.element_size()

    def hook(_module, _inputs, output):
        nonlocal largest
        if isinstance(output, torch.Tensor):
            largest = max(largest, output.numel() * output.element_size())

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    try:
        with torch.inference_mode():
            model(sample)
    finally:
        for h in handles:
            h.remove()
    return largest


def inference_batch(model: torch.nn.Module, item: torch.Tensor, device: torch.device,
                    *, gpu_batch: int = 1024, lo: int = 16, hi: int = 4096) -> int:
    """Inference batch size for ``model`` on ``device``; ``item`` is a batch of one input.

    On a GPU: ``gpu_batch`` (the caller halves it on out-of-memory). On the CPU: as many
    items as keep the largest activation under :data:`ACTIVATION_BUDGET`, within [lo, hi].
    """
    if device.type != "cpu":
        return gpu_batch
    per_item = max(1, largest_activation_bytes(model, item) // max(1, len(item)))
    return int(min(hi, max(lo, ACTIVATION_BUDGET // per_item)))
