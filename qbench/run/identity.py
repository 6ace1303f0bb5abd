"""Which run a result file holds (issue 25): the choices that make two runs of the same
method, data, bits and seeds different runs, so that no write ever replaces a result of
another run without a word.

A run's **identity** is what its user chose beyond the file name's fields (dataset,
protocol, method, bits, seed, split seed, regime): the method parameters asked for (``-p``,
``--epochs``, a grid cell's parameters; tuned values are named by their study instead),
the dataset and backbone parameters asked for, the selection rule and the pool size.
Defaults that change with the code are not part of it: a rerun after such a change is the
same run, made by newer code.

- ``qbench run`` names a result with a short hash of its identity when it is not the
  default one (:func:`identity_tag`), so ``-p lam=0.1`` and ``-p lam=1.0`` write two files.
- Every write first checks the file it would replace (:func:`check_replace`): a result of
  another identity there is a one-line error naming the difference, never overwritten.
  Results recorded before identities were (no ``run_identity`` field) are compared on the
  parameters they recorded.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from qbench.core.errors import QbenchError
from qbench.data.pool import DEFAULT_POOL_SIZE
from qbench.run.results import to_jsonable

FIELDS = ("params", "tuned_by", "dataset_params", "backbone", "select", "pool_size")


def default_identity() -> dict:
    """The identity of a run that chose nothing: every default."""
    return {"params": {}, "tuned_by": None, "dataset_params": {}, "backbone": {},
            "select": "best", "pool_size": DEFAULT_POOL_SIZE}


def run_identity(req, method_params: dict, dataset_params: dict,
                 backbone: dict | None) -> dict:
    """The identity of request ``req`` (a :class:`qbench.run.pipeline.RunRequest`), its
    values parsed: ``method_params``, ``dataset_params`` and ``backbone`` as resolved."""
    tuned = set((req.tuning or {}).get("best_params") or {})
    asked = set(req.method_params)
    if req.epochs is not None and "epochs" in method_params:
        asked.add("epochs")
    return {
        "params": {k: method_params[k] for k in sorted(asked - tuned) if k in method_params},
        "tuned_by": (req.tuning or {}).get("study"),
        "dataset_params": {k: dataset_params[k] for k in sorted(req.dataset_params)
                           if k in dataset_params},
        "backbone": {k: backbone[k] for k in sorted(req.backbone) if k in (backbone or {})},
        "select": req.select,
        "pool_size": req.pool_size,
    }


def identity_tag(identity: dict) -> str:
    """"" for the default identity, else 8 hex digits of its sha256 (for the file name)."""
    plain = to_jsonable(identity)
    if plain == to_jsonable(default_identity()):
        return ""
    text = json.dumps(plain, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def recorded_identity(record: dict, ours: dict, method_defaults: dict) -> dict:
    """The identity a result record holds, as comparable with ``ours``: its
    ``run_identity`` field, or for an older record one rebuilt from what it recorded (the
    parameters ``ours`` asks for, and any other parameter it ran at a value other than
    today's default that no study tuned)."""
    if isinstance(record.get("run_identity"), dict):
        return record["run_identity"]
    params = record.get("params") if isinstance(record.get("params"), dict) else {}
    tuning = record.get("tuning") if isinstance(record.get("tuning"), dict) else {}
    tuned = set(tuning.get("best_params") or {})
    chosen = {k: v for k, v in params.items()
              if k in ours["params"] or (k not in tuned and k in method_defaults
                                         and to_jsonable(v) != to_jsonable(method_defaults[k]))}
    selection = record.get("selection") if isinstance(record.get("selection"), dict) else {}
    data = record.get("dataset_params") if isinstance(record.get("dataset_params"), dict) else {}
    backbone = record.get("backbone") if isinstance(record.get("backbone"), dict) else {}
    backbone = backbone.get("params") if isinstance(backbone.get("params"), dict) else {}
    return {
        "params": chosen,
        "tuned_by": tuning.get("study"),
        "dataset_params": {k: data.get(k) for k in ours["dataset_params"]},
        "backbone": {k: backbone.get(k) for k in ours["backbone"]},
        # a method that selects nothing records neither: nothing to tell apart
        "select": selection.get("rule", ours["select"]),
        "pool_size": selection.get("pool_size", ours["pool_size"]),
    }


def differences(theirs: dict, ours: dict) -> list[str]:
    """``field: X there, Y here`` for every field (parameter by parameter) that differs."""
    out = []
    theirs, ours = to_jsonable(theirs), to_jsonable(ours)
    for name in FIELDS:
        a, b = theirs.get(name), ours.get(name)
        if isinstance(a, dict) and isinstance(b, dict):
            for key in sorted(set(a) | set(b)):
                if a.get(key, "(default)") != b.get(key, "(default)"):
                    out.append(f"{name}.{key}: {a.get(key, '(default)')} there, "
                               f"{b.get(key, '(default)')} here")
        elif a != b:
            out.append(f"{name}: {a} there, {b} here")
    return out


def check_replace(path: Path, ours: dict, method_defaults: dict) -> None:
    """Raise :class:`QbenchError` when ``path`` holds a result of another run than ``ours``.

    Nothing there, or a file that is not a readable result, is fine (a new write replaces
    the latter, as a rerun replaces a result of the same run)."""
    path = Path(path)
    if not path.is_file():
        return
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return
    if not isinstance(record, dict) or "schema_version" not in record or "kind" in record:
        return
    diff = differences(recorded_identity(record, ours, method_defaults), ours)
    if diff:
        raise QbenchError(f"{path} holds a result of another run ({'; '.join(diff)}); "
                          "it is not replaced: write to another --out, or remove it first")
