"""Downloading dataset files with a progress bar and an md5 check, and the download cache.

A download is written to a temporary file beside its destination and renamed into place
only once its md5 matches, so the destination either holds a verified file or nothing.
"""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from pathlib import Path

from qbench.core.atomic import atomic_write
from qbench.core.errors import QbenchError

CHUNK_BYTES = 1 << 20
TIMEOUT_S = 60


def cache_dir(name: str) -> Path:
    """The folder where dataset ``name`` is downloaded.

    ``$QBENCH_CACHE/<name>`` when that variable is set, else
    ``$XDG_CACHE_HOME/qbench/<name>``, else ``~/.cache/qbench/<name>``.
    """
    root = os.environ.get("QBENCH_CACHE")
    if root:
        return Path(root).expanduser() / name
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "qbench" / name


def md5sum(path: Path) -> str:
    """Hex md5 digest of the file at ``path``."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(CHUNK_BYTES), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_md5(path: Path, md5: str) -> None:
    """Raise :class:`QbenchError` naming ``path`` unless its md5 is ``md5``."""
    actual = md5sum(path)
    if actual != md5.lower():
        raise QbenchError(
            f"{path}: md5 is {actual}, expected {md5.lower()} (corrupt or wrong file)"
        )


def download(url: str, dest: Path, md5: str | None, *, progress: bool = True) -> Path:
    """Download ``url`` to ``dest`` and return ``dest``.

    The data goes to a temporary file in ``dest``'s folder, is checked against ``md5``
    (skipped when None) and then renamed to ``dest``. A failed transfer or an md5 mismatch
    raises :class:`QbenchError` and leaves no file behind. ``progress`` shows a tqdm bar.
    """
    from tqdm import tqdm

    dest = Path(dest)
    with atomic_write(dest) as out:
        digest = hashlib.md5(usedforsecurity=False)
        try:
            with urllib.request.urlopen(url, timeout=TIMEOUT_S) as resp:
                length = resp.headers.get("Content-Length")
                total = int(length) if length and length.isdigit() else None
                with tqdm(
                    total=total, unit="B", unit_scale=True, unit_divisor=1024,
                    desc=dest.name, disable=not progress, leave=False,
                ) as bar:
                    for block in iter(lambda: resp.read(CHUNK_BYTES), b""):
                        out.write(block)
                        digest.update(block)
                        bar.update(len(block))
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", None) or exc
            raise QbenchError(f"cannot download {url} to {dest}: {reason}") from None
        actual = digest.hexdigest()
        if md5 is not None and actual != md5.lower():
            raise QbenchError(
                f"{dest}: md5 of the download from {url} is {actual}, expected {md5.lower()}; "
                "the file was removed"
            )
    return dest
