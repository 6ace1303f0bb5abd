"""Atomic file writes: a temp file in the target's folder, renamed into place at the end."""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from qbench.core.errors import QbenchError


@contextmanager
def atomic_write(path: Path) -> Iterator[BinaryIO]:
    """Yield a binary file handle whose content replaces ``path`` when the block ends.

    An exception inside the block (or a crash) leaves ``path`` as it was -- no half-written
    file -- and removes the temp file. A folder that cannot be written, or a write that
    fails (a full disk: the handle's write or flush inside the block, or the final flush,
    fsync or rename), raises :class:`QbenchError` naming the file; any other exception from
    the block propagates unchanged.
    """
    path = Path(path)
    fd, tmp = _temp_beside(path)
    fh = _Handle(io.FileIO(fd, "wb"))
    try:
        try:
            yield fh
        except OSError as exc:
            if exc is not fh.write_error:  # the caller's own error, not a failed write
                raise
            raise QbenchError(f"cannot write {path}: {exc.strerror or exc}") from None
        try:
            fh.flush()
            os.fsync(fh.fileno())
            fh.close()
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual mode
            os.replace(tmp, path)
        except OSError as exc:
            raise QbenchError(f"cannot write {path}: {exc.strerror or exc}") from None
    finally:
        if not fh.closed:
            try:
                fh.close()  # its flush may fail again on a full disk; the fd closes anyway
            except (OSError, ValueError):
                pass
        Path(tmp).unlink(missing_ok=True)


def write_all_atomic(files: dict[Path, bytes]) -> list[Path]:
    """Write every file of ``files`` (path -> content) or none of them; return the paths.

    Each content goes to a temp file in its target's folder first; only when every one is
    written (flushed and fsynced) are they renamed into place, so a full disk leaves the
    earlier files as they were. A failure raises :class:`QbenchError` naming the file and
    removes the temp files.
    """
    temps: list[tuple[str, Path]] = []
    try:
        for path, data in files.items():
            path = Path(path)
            fd, tmp = _temp_beside(path)
            temps.append((tmp, path))
            try:
                with os.fdopen(fd, "wb") as fh:
                    fh.write(data)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.chmod(tmp, 0o666 & ~_umask())
            except OSError as exc:
                raise QbenchError(f"cannot write {path}: {exc.strerror or exc}") from None
        for tmp, path in temps:
            try:
                os.replace(tmp, path)
            except OSError as exc:
                raise QbenchError(f"cannot write {path}: {exc.strerror or exc}") from None
        return [path for _, path in temps]
    finally:
        for tmp, _ in temps:
            Path(tmp).unlink(missing_ok=True)


def _temp_beside(path: Path) -> tuple[int, str]:
    """(fd, name) of a new temp file in ``path``'s folder (created where missing); a folder
    that cannot be written raises :class:`QbenchError` naming it."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    except OSError as exc:
        raise QbenchError(f"cannot write to {path.parent}: {exc.strerror or exc}") from None


class _Handle(io.BufferedWriter):
    """A buffered writer that remembers the OSError of a failed write, flush or seek, so that
    :func:`atomic_write` can tell a full disk from an error of the caller's own code."""

    write_error: OSError | None = None

    def write(self, data):
        try:
            return super().write(data)
        except OSError as exc:
            self.write_error = exc
            raise

    def flush(self):
        try:
            return super().flush()
        except OSError as exc:
            self.write_error = exc
            raise

    def seek(self, *args):  # a seek writes out the buffer first (zipfile, np.savez)
        try:
            return super().seek(*args)
        except OSError as exc:
            self.write_error = exc
            raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
