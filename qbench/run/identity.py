"""Which run a result file holds (issue 25): the choices that make two runs of the same
method, data, bits and seeds different runs, so that no write ever replaces a result of
another run without a word.

A run's **identity** (``run_identity`` in its result) holds what its user chose beyond the
file name's fields (dataset, protocol, method, bits, seed, split seed, regime), where it
differs from the declared default: method parameters (``-p``, ``--epochs``, a grid cell's
parameters; values a study tuned are named by the study, ``tuned_by``, instead), dataset
and backbone parameters, the selection rule and the pool size (for methods that select).
An empty identity is the default run.

- ``qbench run`` ends a result's file name with 8 hex digits of a hash of a non-empty
  identity (:func:`identity_tag`): ``-p lam=0.1`` and ``-p lam=1.0`` write two files,
  ``-p lam=<the default>`` the plain one.
- Every write first checks the file it would replace (:func:`conflicts`): two runs are the
  same when, for every choice either of them made, the values they ran with agree. So a
  rerun after a default changed in the code is the same run (neither chose the value),
  while a result of other choices there is a one-line error, never overwritten. A result
  from before identities were recorded counts as having chosen every value it recorded
  that differs from today's default (tuned values excepted).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from qbench.core.errors import QbenchError
from qbench.data.pool import DEFAULT_POOL_SIZE
from qbench.run.results import to_jsonable

MISSING = "(not recorded)"


def _plain(value):
    return to_jsonable(value)


def _chosen(values: dict, asked, defaults: dict) -> dict:
    """The entries of ``values`` named in ``asked`` whose value is not the default."""
    return {k: values[k] for k in sorted(asked)
            if k in values and _plain(values[k]) != _plain(defaults.get(k, MISSING))}


@dataclass
class RunChoices:
    """What one run ran with, resolved (``params``, ``dataset_params`` as given,
    ``backbone``, ``select``, ``pool_size``; the latter two None for a method that selects
    nothing), the study that tuned it and the choices it made: :attr:`identity` is the
    record's ``run_identity`` (its dataset values as they identify the data, e.g. a path
    resolved). ``legacy``: rebuilt from a record made before identities were recorded."""

    params: dict
    dataset_params: dict
    backbone: dict
    select: str | None
    pool_size: int | None
    tuned_by: str | None
    identity: dict
    legacy: bool = False


def run_choices(req, method, dataset_plugin, backbone: dict | None,
                backbone_defaults: dict) -> RunChoices:
    """The choices of request ``req`` (a :class:`qbench.run.pipeline.RunRequest`) for the
    built ``method`` and ``dataset_plugin``, ``backbone`` resolved (or None)."""
    tuned = set((req.tuning or {}).get("best_params") or {})
    asked = set(req.method_params) - tuned
    if req.epochs is not None and "epochs" in method.params:
        asked.add("epochs")
    selects = getattr(method, "selects", True)
    method_defaults = {p.name: p.default for p in type(method).params}
    data_defaults = {p.name: p.default for p in type(dataset_plugin).params}
    data_values = dataset_plugin.identity_params()
    identity = {
        "params": _chosen(method.params, asked, method_defaults),
        "tuned_by": (req.tuning or {}).get("study"),
        "dataset_params": {k: data_values[k] for k in
                           _chosen(dataset_plugin.params, req.dataset_params, data_defaults)},
        "backbone": _chosen(backbone or {}, req.backbone, backbone_defaults),
        "select": req.select if selects and req.select != "best" else None,
        "pool_size": (req.pool_size if selects and req.pool_size != DEFAULT_POOL_SIZE
                      else None),
    }
    identity = {k: v for k, v in identity.items() if v not in (None, {})}
    return RunChoices(dict(method.params), dict(dataset_plugin.params), dict(backbone or {}),
                      req.select if selects else None, req.pool_size if selects else None,
                      (req.tuning or {}).get("study"), identity)


def identity_tag(identity: dict) -> str:
    """"" for the default run (empty identity), else 8 hex digits of its sha256."""
    if not identity:
        return ""
    text = json.dumps(_plain(identity), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def _obj(value) -> dict:
    return value if isinstance(value, dict) else {}


def _valid_identity(value) -> bool:
    return isinstance(value, dict) and all(
        isinstance(value.get(name, {}), dict) for name in ("params", "dataset_params", "backbone"))


def _recorded(record: dict) -> RunChoices:
    """What a result record ran with, and the choices it made (its ``run_identity``, or for
    an older record every recorded value that differs from today's default, tuned values
    excepted). Fields of the wrong type count as not recorded."""
    selection = _obj(record.get("selection"))
    tuning = _obj(record.get("tuning"))
    backbone = _obj(_obj(record.get("backbone")).get("params"))
    study = tuning.get("study") if isinstance(tuning.get("study"), str) else None
    choices = RunChoices(_obj(record.get("params")), _obj(record.get("dataset_params")),
                         backbone, selection.get("rule"), selection.get("pool_size"),
                         study, {})
    if _valid_identity(record.get("run_identity")):
        choices.identity = record["run_identity"]
        return choices
    from qbench.registry import DATASETS, METHODS
    from qbench.train.backbone import BACKBONE_PARAMS

    def defaults(registry, name) -> dict:
        if not isinstance(name, str):
            return {}
        try:
            return {p.name: p.default for p in registry.get(name).params}
        except QbenchError:
            return {}

    tuned = set(_obj(tuning.get("best_params")))
    identity = {
        "params": _chosen(choices.params, set(choices.params) - tuned,
                          defaults(METHODS, record.get("method"))),
        "tuned_by": study,
        "dataset_params": _chosen(choices.dataset_params, choices.dataset_params,
                                  defaults(DATASETS, record.get("dataset"))),
        "backbone": _chosen(backbone, backbone, {p.name: p.default for p in BACKBONE_PARAMS}),
        "select": choices.select if choices.select not in (None, "best") else None,
        "pool_size": (choices.pool_size if choices.pool_size not in (None, DEFAULT_POOL_SIZE)
                      else None),
    }
    choices.identity = {k: v for k, v in identity.items() if v not in (None, {})}
    choices.legacy = True
    return choices


def conflicts(record: dict, ours: RunChoices, *, ignore_tuned_by: bool = False) -> list[str]:
    """Why ``record`` holds another run than ``ours`` (``field: X there, Y here`` for each
    choice either side made on which the values they ran with differ); [] when the same.
    A parameter today's method or dataset no longer declares is left out (the result is
    stale, not another run). ``ignore_tuned_by``: the grid has not tuned yet (a dry run)."""
    theirs = _recorded(record)
    out = []
    for name in ("params", "dataset_params", "backbone"):
        chosen_a, chosen_b = _obj(theirs.identity.get(name)), _obj(ours.identity.get(name))
        values_a, values_b = getattr(theirs, name), getattr(ours, name)
        for key in sorted(set(chosen_a) | set(chosen_b)):
            if key not in values_b:
                continue  # not declared today
            if theirs.legacy:  # an older record: the values as given on both sides
                a, b = values_a.get(key, MISSING), values_b[key]
            else:  # the values as they identify the run (a data path resolved)
                a = chosen_a.get(key, values_a.get(key, MISSING))
                b = chosen_b.get(key, values_b[key])
            if _plain(a) != _plain(b):
                out.append(f"{name}.{key}: {_plain(a)} there, {_plain(b)} here")
    if theirs.tuned_by != ours.tuned_by and not ignore_tuned_by:
        out.append(f"tuned_by: {theirs.tuned_by} there, {ours.tuned_by} here")
    for name in ("select", "pool_size"):
        a, b = getattr(theirs, name), getattr(ours, name)
        chosen = name in theirs.identity or name in ours.identity
        if chosen and a is not None and b is not None and a != b:
            out.append(f"{name}: {a} there, {b} here")
    return out


def existing_conflicts(path: Path, ours: RunChoices) -> list[str]:
    """:func:`conflicts` with the result at ``path``; [] when there is none, or the file
    is not a readable run result (a write replaces that, as a rerun replaces its own)."""
    path = Path(path)
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        return []
    except OSError as exc:  # there but unreadable: it may be a result; never replace it
        raise QbenchError(f"{path} cannot be read ({exc.strerror or exc}), so it is not "
                          "replaced: fix its permissions, or write to another --out") from None
    except (UnicodeDecodeError, ValueError, RecursionError):
        return []
    if not isinstance(record, dict) or "schema_version" not in record or "kind" in record:
        return []
    return conflicts(record, ours)


def check_replace(path: Path, ours: RunChoices) -> None:
    """Raise :class:`QbenchError` when ``path`` holds a result of another run than ours."""
    diff = existing_conflicts(path, ours)
    if diff:
        raise QbenchError(f"{path} holds a result of another run ({'; '.join(diff)}); "
                          "it is not replaced: write to another --out, or remove it first")
