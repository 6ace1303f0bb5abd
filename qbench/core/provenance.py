"""Where a result came from: the code version (a hash of qbench's own sources), the git
commit and dirty flag of the checkout, and the environment every record carries.

A result or cached encoder made by other code is stale: :func:`code_version` hashes every
``.py`` file of ``qbench``, ``qbench.methods`` and ``qbench.datasets``, subpackages
included (but not the report code, which only reads results), without importing the
plugin packages.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import platform
import subprocess
from pathlib import Path

READ_ONLY_PACKAGES = ("qbench/report",)
"""Folders of qbench left out of :func:`code_version`: they read finished results (tables,
claims, plots, the HTML report) and never make one, so changing them leaves every result
and cached encoder current."""


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """sha256 (16 hex digits) of qbench's own installed sources that make results, methods
    and datasets included (not :data:`READ_ONLY_PACKAGES`): a result or cached encoder made
    by other code is stale."""
    # find_spec locates a package without running its __init__ (the method face)
    return source_hash({package: Path(importlib.util.find_spec(package)
                                       .submodule_search_locations[0])
                        for package in ("qbench", "qbench.methods", "qbench.datasets")},
                       exclude=READ_ONLY_PACKAGES)


def source_hash(roots: dict[str, Path], exclude: tuple[str, ...] = ()) -> str:
    """sha256 (16 hex digits) of every ``.py`` file under each package's folder, named by
    package and relative path. A package folder nested in another (``qbench/methods`` in an
    installed wheel; ``methods/`` beside ``qbench/`` in a checkout) is hashed once, as its
    own package, so both layouts of the same sources give the same hash. ``exclude``:
    folders left out, relative to the folder holding the ``qbench`` package (e.g.
    ``qbench/report``)."""
    folders = {Path(root).resolve() for root in roots.values()}
    top = roots.get("qbench") or next(iter(roots.values()), None)
    skipped = [Path(top).resolve().parent / e for e in exclude] if top is not None else []
    h = hashlib.sha256()
    for package, root in roots.items():
        root = Path(root).resolve()
        nested = [f for f in folders if f != root and f.is_relative_to(root)]
        for path in sorted(root.rglob("*.py")):
            if any(path.is_relative_to(f) for f in nested + skipped):
                continue
            h.update(f"{package}/{path.relative_to(root).as_posix()}".encode())
            h.update(path.read_bytes())
    return h.hexdigest()[:16]


def git_dirty(cwd: Path | None = None) -> bool | None:
    """Whether the qbench checkout has uncommitted changes (None outside a git work tree)."""
    try:
        out = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd or Path(__file__).resolve().parent, capture_output=True, text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return bool(out.stdout.strip()) if out.returncode == 0 else None


def git_commit(cwd: Path | None = None) -> str | None:
    """The current git commit of the qbench checkout, or None outside a git work tree."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd or Path(__file__).resolve().parent,
            capture_output=True, text=True, timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def environment(device: str) -> dict:
    """Package versions, device and git commit, recorded in every result."""
    from importlib.metadata import PackageNotFoundError, version

    packages = {}
    for name in ("qbench", "torch", "numpy", "faiss-cpu", "scikit-learn", "pandas"):
        try:
            packages[name] = version(name)
        except PackageNotFoundError:
            packages[name] = None
    info = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "device": device,
        "packages": packages,
        "git_commit": git_commit(),
        "git_dirty": git_dirty(),
        "code_version": code_version(),
    }
    if device.startswith("cuda"):
        import torch

        info["gpu"] = torch.cuda.get_device_name(0)
    return info
