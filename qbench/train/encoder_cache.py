"""Train once, quantize many: the content-addressed stage-1 encoder cache (SPEC §7).

Every method that starts with "train the encoder with the similarity loss only" (float,
two-stage-pq/opq, itq, sign, householder) asks :func:`stage1_encoder` for its encoder, and
the joint methods (dqn, ssm, gsl) warm-start from the same training's state at their
warm-up epoch. An entry is keyed by a hash of everything that determines the training: the
dataset's checksum and parameters, protocol and split checksum, seed, every engine
parameter, D, tanh and the code version (:func:`qbench.core.provenance.code_version`). It holds the
candidate weights (every epoch model selection may choose), the warm-up snapshot and the
training summary; embeddings of items under a candidate are added as they are computed, so
no split is embedded twice with the same weights across runs either.

Layout: ``<root>/encoders/<key>/`` with ``entry.json`` (key fields, summary, sha256 of
every file) and ``weights.pt``; ``emb-e<epoch>.npz`` + ``.sha256`` per candidate. Entries are
written to a temporary folder and renamed; a per-key ``fcntl`` lock makes concurrent
workers train a key once (the kernel releases the lock of a process that dies, so a dead
holder's lock is simply taken over). A checksum mismatch is reported in one line and the
entry retrained, never used. A temporary folder is named
``.tmp-<key>-<host>-<pid>-*`` after its writer (a file being written inside an entry
``.tmp-<host>-<pid>-*``); opening the cache deletes those whose writer is a dead process of
this host, or untouched for a day. A file matching its checksum that cannot be loaded is
corrupt too. A directory in place of a lock file is removed. ``qbench cache clear``
removes only entries whose locks it can take at once, and keeps the (empty) lock files.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from qbench.core.errors import QbenchError, one_line
from qbench.data.arraycache import ArrayCache, is_stale, writer_tag
from qbench.data.context import RunContext
from qbench.train.encoders import resolve_encoder
from qbench.train.params import STAGE1_KEYS, training_epochs, warmup_epochs
from qbench.train.snapshot import Snapshot
from qbench.train.trained_encoder import TrainedEncoder
from qbench.train.trainer import Trainer

CACHE_ENV = "QBENCH_CACHE"
ENTRY_VERSION = 1
TMP_PREFIX = ".tmp-"


def default_cache_dir(out: Path) -> Path:
    """``$QBENCH_CACHE`` when set, else ``<out>/cache``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env) if env else Path(out) / "cache"


def cache_root(cache_dir: Path | None, out: Path, use_cache: bool = True) -> Path | None:
    """The cache a run or grid uses: ``cache_dir`` (``--cache-dir``), else
    :func:`default_cache_dir` of ``out``; None with ``--no-cache``."""
    if not use_cache:
        return None
    return Path(cache_dir) if cache_dir else default_cache_dir(Path(out))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def stage1_engine(params: dict) -> dict:
    """The engine parameters that determine a stage-1 training, as a method resolved them:
    the one definition behind the cache key (:func:`encoder_fields`) and a grid's grouping
    of cells by encoder (:func:`qbench.grid.worker.stage1_group`)."""
    return {k: params[k] for k in STAGE1_KEYS}


def encoder_fields(ctx: RunContext, params: dict, dim: int, tanh: bool) -> dict:
    """Everything that determines a stage-1 training, JSON-ready (the key's preimage)."""
    from qbench.core.provenance import code_version

    return {
        "entry_version": ENTRY_VERSION,
        "dataset": ctx.dataset.name,
        "data_checksum": ctx.dataset.checksum,
        "protocol": ctx.splits.protocol,
        "split_checksum": ctx.splits.checksum,
        "seed": ctx.seed,
        "engine": {**stage1_engine(params),
                   "encoder": resolve_encoder(params["encoder"], ctx.dataset.modality,
                                              ctx.device),
                   "epochs": training_epochs(params, ctx.dataset.modality)},
        "dim": dim,
        "tanh": tanh,
        "device_type": torch.device(ctx.device).type,
        "code_version": code_version(),
    }


def encoder_key(fields: dict) -> str:
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:24]


def _tmp_prefix(key: str) -> str:
    """The name prefix of this process's temporary folder for entry ``key``."""
    return f"{TMP_PREFIX}{key}-{writer_tag()}-"


def _remove_orphans(folder: Path) -> None:
    """Delete the stale temporaries under ``folder`` (:func:`is_stale`): entry folders
    ``.tmp-<key>-<host>-<pid>-*`` and embedding or feature files ``<key>/.tmp-<host>-<pid>-*``
    left by a writer that died; those of live writers are left alone."""
    try:
        stale = [path for path in folder.glob(f"{TMP_PREFIX}*")
                 if is_stale(path, path.name[len(TMP_PREFIX):].partition("-")[2])]
        stale += [path for path in folder.glob(f"*/{TMP_PREFIX}*")
                  if not path.parent.name.startswith(TMP_PREFIX)
                  and is_stale(path, path.name[len(TMP_PREFIX):])]
    except OSError:
        return
    for path in stale:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


@contextlib.contextmanager
def _open_lock(root: Path, name: str):
    """The lock file ``<root>/locks/<name>.lock``, open for ``fcntl.flock``. A directory in
    its place is a corrupt lock (nothing can hold it) and is removed first."""
    path = Path(root) / "locks" / f"{name}.lock"
    try:
        if path.is_dir() and not path.is_symlink():
            print(f"qbench: lock {path} is a directory, not a lock file; removing it",
                  file=sys.stderr)
            shutil.rmtree(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(path, "a+")
    except OSError as exc:
        raise QbenchError(f"encoder cache lock {path} cannot be opened: "
                          f"{exc.strerror or exc}; allowed: an empty lock file or "
                          "nothing at that path") from None
    with fh:
        yield fh


class EncoderCache:
    """Stage-1 entries under ``root`` (created if missing; an unwritable root is an error)."""

    def __init__(self, root: Path):
        self.root = Path(root)
        try:
            (self.root / "encoders").mkdir(parents=True, exist_ok=True)
            (self.root / "locks").mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=self.root):
                pass
        except OSError as exc:
            raise QbenchError(f"--cache-dir {self.root} is not writable: "
                              f"{exc.strerror or exc}") from None
        _remove_orphans(self.root / "encoders")

    def entry(self, key: str) -> Path:
        return self.root / "encoders" / key

    @contextlib.contextmanager
    def lock(self, name: str):
        """An exclusive lock named ``name``, held by this process until the block ends."""
        with _open_lock(self.root, name) as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    # -- entries --------------------------------------------------------------------
    def _read(self, key: str) -> dict | None:
        """The entry's metadata when it exists and every file matches its checksum."""
        folder = self.entry(key)
        meta_path = folder / "entry.json"
        if not meta_path.is_file():
            if folder.exists():  # a folder left by an interrupted removal: no usable entry
                shutil.rmtree(folder, ignore_errors=True)
            return None
        try:
            meta = json.loads(meta_path.read_text())
            bad = [name for name, digest in meta["files"].items()
                   if _sha256(folder / name) != digest]
        except (OSError, ValueError, KeyError) as exc:
            bad = [f"entry.json ({exc})"]
        if bad:
            print(f"qbench: encoder cache entry {folder} is corrupt ({', '.join(bad)} "
                  "fails its checksum); retraining it", file=sys.stderr)
            shutil.rmtree(folder, ignore_errors=True)
            return None
        return meta

    def _write(self, key: str, fields: dict, trainer: Trainer) -> None:
        tmp = None
        try:
            tmp = Path(tempfile.mkdtemp(prefix=_tmp_prefix(key), dir=self.root / "encoders"))
            snap = trainer.snapshot
            torch.save({"candidates": trainer.candidates,
                        "snapshot": None if snap is None else vars(snap)}, tmp / "weights.pt")
            meta = {"key": key, "fields": fields, "summary": trainer.summary(),
                    "train_s": trainer.train_s,
                    "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "files": {"weights.pt": _sha256(tmp / "weights.pt")}}
            (tmp / "entry.json").write_text(json.dumps(meta, indent=1))
            shutil.rmtree(self.entry(key), ignore_errors=True)
            os.replace(tmp, self.entry(key))
        except (OSError, RuntimeError) as exc:  # torch.save raises RuntimeError on a full disk
            raise _store_error(self.root, f"entry {key}", exc) from None
        finally:
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)

    def features(self, key: str, epoch: int, compute) -> tuple[np.ndarray, str]:
        """The frozen backbone's features of entry ``key`` at ``epoch`` (the head regime,
        :mod:`qbench.train.backbone`): ``(array, "hit" | "miss")``, the array memory-mapped
        read-only from ``features-e<epoch>.npy`` after its sha256 matches the sidecar;
        ``compute() -> (n, F) float32`` on a miss or a corrupt file (reported, replaced).
        Written to a temporary file and renamed, under the entry's feature lock."""
        path = self.entry(key) / f"features-e{epoch}.npy"
        sidecar = path.with_suffix(".sha256")
        with self.lock(f"{key}-features"):
            if path.is_file() and sidecar.is_file():
                if _sha256(path) == sidecar.read_text().strip():
                    return np.load(path, mmap_mode="r"), "hit"
                print(f"qbench: cached features {path} fail their checksum; recomputing",
                      file=sys.stderr)
            values = np.ascontiguousarray(compute(), dtype=np.float32)
            fd, tmp = tempfile.mkstemp(prefix=f"{TMP_PREFIX}{writer_tag()}-", suffix=".npy",
                                       dir=path.parent)
            try:
                with os.fdopen(fd, "wb") as fh:
                    np.save(fh, values)
                digest = _sha256(Path(tmp))
                sidecar.unlink(missing_ok=True)
                os.replace(tmp, path)
                sidecar.write_text(digest)
            except OSError as exc:
                raise QbenchError(f"encoder cache {self.root}: cannot store features of "
                                  f"{key}: {exc.strerror or exc}") from None
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
        return np.load(path, mmap_mode="r"), "miss"

    def get_or_train(self, ctx: RunContext, params: dict, dim: int, tanh: bool,
                     train) -> TrainedEncoder:
        """The entry for this training, trained by ``train() -> Trainer`` on a miss."""
        fields = encoder_fields(ctx, params, dim, tanh)
        key = encoder_key(fields)
        with self.lock(key):
            meta = self._read(key)
            if meta is not None:
                try:
                    stored = torch.load(self.entry(key) / "weights.pt", weights_only=True)
                    snap = stored["snapshot"]
                    snapshot = None if snap is None else Snapshot(**snap)
                    candidates, summary = stored["candidates"], meta["summary"]
                except Exception as exc:  # matches its checksum, yet torch cannot load it
                    print(f"qbench: encoder cache entry {self.entry(key)} is corrupt "
                          f"(weights.pt cannot be loaded: {one_line(exc)[:200]}); retraining it",
                          file=sys.stderr)
                    shutil.rmtree(self.entry(key), ignore_errors=True)
                    meta = None
            if meta is None:
                trainer = train()
                self._write(key, fields, trainer)
                encoder = TrainedEncoder.from_trainer(trainer, progress=ctx.progress)
                status = "miss"
            else:
                trainer = Trainer(ctx, params, dim, tanh=tanh)
                encoder = TrainedEncoder(trainer, candidates, summary, 0.0,
                                         progress=ctx.progress)
                encoder.snapshot = snapshot
                status = "hit"
        encoder.store = _EmbeddingStore(self, key)
        encoder.cache_key, encoder.cache_status = key, status
        return encoder


class _EmbeddingStore:
    """Per-candidate embeddings of one entry: ``emb-e<epoch>.npz`` with a sha256 sidecar."""

    def __init__(self, cache: EncoderCache, key: str):
        self.cache, self.key = cache, key
        self.folder = cache.entry(key)

    def _path(self, epoch: int) -> Path:
        return self.folder / f"emb-e{epoch}.npz"

    def load_embeddings(self, epoch: int) -> tuple[np.ndarray, np.ndarray] | None:
        """(values, have) stored for ``epoch``, or None; read under the entry's lock, so a
        file and its checksum are never seen half replaced."""
        with self.cache.lock(f"{self.key}-emb"):
            return self._load(epoch)

    def _load(self, epoch: int) -> tuple[np.ndarray, np.ndarray] | None:
        path, sidecar = self._path(epoch), self._path(epoch).with_suffix(".sha256")
        if not (path.is_file() and sidecar.is_file()):
            return None
        if _sha256(path) != sidecar.read_text().strip():
            print(f"qbench: cached embeddings {path} fail their checksum; recomputing",
                  file=sys.stderr)
            path.unlink(missing_ok=True)
            return None
        try:
            with np.load(path) as z:
                return z["values"].copy(), z["have"].copy()
        except Exception as exc:  # matches its checksum, yet numpy cannot load it
            print(f"qbench: cached embeddings {path} cannot be loaded ({one_line(exc)}); "
                  "recomputing", file=sys.stderr)
            path.unlink(missing_ok=True)
            return None

    def save_embeddings(self, epoch: int, values: np.ndarray, have: np.ndarray) -> None:
        """Merge with what another run stored meanwhile, then replace atomically."""
        path = self._path(epoch)
        with self.cache.lock(f"{self.key}-emb"):
            other = self._load(epoch)
            if other is not None:
                extra = other[1] & ~have
                values[extra], have[extra] = other[0][extra], True
            tmp = None
            try:
                fd, tmp = tempfile.mkstemp(prefix=f"{TMP_PREFIX}{writer_tag()}-", suffix=".npz",
                                           dir=self.folder)
                with os.fdopen(fd, "wb") as fh:
                    np.savez(fh, values=values, have=have)
                digest = _sha256(Path(tmp))
                os.replace(tmp, path)
                path.with_suffix(".sha256").write_text(digest)
            except OSError as exc:
                raise _store_error(self.cache.root, f"embeddings of {self.key}", exc) from None
            finally:
                if tmp is not None and os.path.exists(tmp):
                    os.unlink(tmp)


def stage1_encoder(ctx: RunContext, params: dict, dim: int, *,
                   tanh: bool = False) -> TrainedEncoder:
    """The stage-1 encoder (similarity loss only) for this run: cached, or trained now.

    The training keeps the full state at the joint methods' default warm-up epoch
    (``encoder.snapshot``). ``encoder.cache_status`` is "hit", "miss" or "off".
    """
    def train() -> Trainer:
        trainer = Trainer(ctx, params, dim, tanh=tanh)
        return trainer.fit(snapshot_at=warmup_epochs(trainer.epochs))

    if ctx.cache is None:
        trainer = train()
        encoder = TrainedEncoder.from_trainer(trainer, progress=ctx.progress)
        encoder.cache_key, encoder.cache_status = encoder_key(
            encoder_fields(ctx, params, dim, tanh)), "off"
        return encoder
    return ctx.cache.get_or_train(ctx, params, dim, tanh, train)


def list_entries(root: Path) -> list[str]:
    """One line per encoder entry under ``root``: key, dataset, seed, D, epochs, MB."""
    rows = []
    for meta_path in sorted((Path(root) / "encoders").glob("*/entry.json")):
        if meta_path.parent.name.startswith("."):  # a temporary folder, not an entry
            continue
        try:
            meta = json.loads(meta_path.read_text())
            fields = meta["fields"]
            size = sum(f.stat().st_size for f in meta_path.parent.iterdir()) / 2**20
            rows.append(f"{meta['key']}  {fields['dataset']} seed {fields['seed']} "
                        f"D={fields['dim']} {fields['engine']['encoder']} "
                        f"{meta['summary']['epochs']} epochs  {size:.1f} MB  {meta['created']}")
        except (OSError, ValueError, KeyError) as exc:
            rows.append(f"{meta_path.parent.name}  unreadable entry ({exc})")
    return rows


def _store_error(root: Path, what: str, exc: Exception) -> QbenchError:
    """The one-line error for a cache write that failed: ``exc`` is an OSError, or the
    RuntimeError torch.save raises when its writes fail (a full disk)."""
    reason = (exc.strerror if isinstance(exc, OSError) else None) or one_line(exc)
    if not isinstance(exc, OSError) and "write" not in str(exc).lower():
        # not a failed write (e.g. something torch cannot serialise): say only what failed
        return QbenchError(f"encoder cache {root}: cannot store {what} ({reason}); turn "
                           "caching off with --no-cache to go on")
    return QbenchError(f"encoder cache {root}: cannot store {what}: the disk is full or not "
                       f"writable ({reason}); free space there, choose another --cache-dir or "
                       "turn caching off with --no-cache")


def _entry_locks(key: str) -> tuple[str, ...]:
    """The names of every lock an entry's users take (the entry, embeddings, features)."""
    return key, f"{key}-emb", f"{key}-features"


def clear_cache(root: Path) -> tuple[int, int]:
    """Remove every encoder entry and decoded dataset under ``root``: ``(removed, kept)``.

    An encoder entry is removed only under all of its locks, each taken without waiting;
    an entry whose lock a run holds is kept (counted in ``kept``). Temporary folders of
    live writers and the (empty) lock files are left in place.
    """
    removed = kept = 0
    encoders = Path(root) / "encoders"
    if encoders.is_dir():
        _remove_orphans(encoders)
        for folder in sorted(encoders.iterdir()):
            if folder.name.startswith(TMP_PREFIX):
                continue
            with contextlib.ExitStack() as stack:
                try:
                    for name in _entry_locks(folder.name):
                        fh = stack.enter_context(_open_lock(root, name))
                        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    kept += 1
                    continue
                if folder.is_dir() and not folder.is_symlink():
                    shutil.rmtree(folder)
                else:
                    folder.unlink()
                removed += 1
    datasets = Path(root) / "datasets"
    if datasets.is_dir():
        removed += sum(ArrayCache(folder).clear() for folder in sorted(datasets.iterdir())
                       if folder.is_dir())
    return removed, kept
