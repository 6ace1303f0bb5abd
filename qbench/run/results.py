"""The one results schema: stamp, write atomically, load and validate run records (SPEC §6).

A result is a JSON object; ``compare`` and the plots read only these files.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from qbench.core.atomic import atomic_write
from qbench.core.errors import QbenchError

SCHEMA_VERSION = 2
"""2: top-level ``selection``, ``split_seed``, ``tuning``, ``encoder_key``/``encoder_cache``,
``code_version``; tie-aware metrics for every distance. Results of another version are
stale (a grid reruns them)."""

FAILURE_SUFFIX = ".failed.json"
"""File-name ending of a grid's failure record (not a result; ``compare`` skips it)."""

# key -> JSON type(s) it must have
REQUIRED_KEYS: dict[str, type | tuple[type, ...]] = {
    "schema_version": int,
    "method": str,
    "family": str,
    "dataset": str,
    "protocol": str,
    "bits": int,
    "seed": int,
    "split_seed": int,
    "code_version": str,
    "params": dict,
    "splits": dict,
    "metrics": dict,
    "curves": dict,
    "timings": dict,
    "cost": dict,
    "metric_card": dict,
    "env": dict,
}


def result_filename(dataset: str, protocol: str, method: str, bits: int, seed: int,
                    split_seed: int = 0, regime: str = "full", tag: str = "") -> str:
    """The file name of one run: one result per (dataset, protocol, method, bits, seed,
    split seed, regime, identity tag); the split seed shows only when it is not the
    default 0, the regime only when it is not the default ``full``, the tag (a hash of what
    the user chose, :func:`qbench.run.identity.identity_tag`) only when there is one."""
    split = f"-split{split_seed}" if split_seed else ""
    head = f"-{regime}" if regime != "full" else ""
    tag = f"-{tag}" if tag else ""
    return f"{dataset}-{protocol}-{method}-{bits}b-seed{seed}{split}{head}{tag}.json"


def to_jsonable(obj: Any) -> Any:
    """Convert numpy scalars/arrays (recursively) to plain JSON values; NaN -> None."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return to_jsonable(obj.item())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_json_atomic(path: Path, data: dict) -> Path:
    """Write ``data`` as JSON to ``path`` via a temp file in the same folder and a rename.

    A crash or a full disk leaves either the old file or none, never a half-written one.
    """
    text = json.dumps(to_jsonable(data), indent=1, allow_nan=False) + "\n"
    with atomic_write(path) as fh:
        fh.write(text.encode())
    return Path(path)


def validate_result(data: Any, source: str = "result") -> dict:
    """Raise :class:`QbenchError` naming ``source`` and the problem unless ``data`` fits."""
    if not isinstance(data, dict):
        raise QbenchError(f"{source}: not a qbench result (top level is not an object)")
    version = data.get("schema_version")
    if version != SCHEMA_VERSION:
        raise QbenchError(
            f"{source}: schema_version {version!r} is not supported; expected {SCHEMA_VERSION}"
        )
    for key, typ in REQUIRED_KEYS.items():
        if key not in data:
            raise QbenchError(f"{source}: missing key {key!r}")
        if not isinstance(data[key], typ) or (typ is int and isinstance(data[key], bool)):
            raise QbenchError(f"{source}: key {key!r} has type {type(data[key]).__name__}")
    if "map_all" not in data["metrics"]:
        raise QbenchError(f"{source}: metrics lack 'map_all'")
    return data


def new_record(fields: dict, *, kind: str | None = None, device: str | None = None) -> dict:
    """A record as qbench writes it, stamped in one place: ``schema_version`` (and ``kind``
    for records that are not run results: ``tuning``, ``evaluation``,
    ``qbench-grid-failure``), then ``fields``, then the environment of ``device``
    (:func:`qbench.core.provenance.environment`; omitted when None) and ``created`` (UTC,
    seconds)."""
    from qbench.core.provenance import environment

    record = {"schema_version": SCHEMA_VERSION, **({"kind": kind} if kind else {}), **fields}
    if device is not None:
        record["env"] = environment(device)
    record["created"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    return record


def read_json(path: Path, what: str = "") -> Any:
    """Parse a JSON file; a missing or malformed file raises :class:`QbenchError` naming it."""
    where = f"{what} {path}".strip()
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise QbenchError(f"{where}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise QbenchError(f"{where}: not valid JSON ({exc})") from None
    except RecursionError:
        raise QbenchError(f"{where}: nested too deeply to be a qbench file") from None


def load_result(path: Path) -> dict:
    """Read and validate one result file; errors name the file."""
    return validate_result(read_json(path), str(path))


