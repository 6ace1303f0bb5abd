"""Reading a tuning summary back: the parameters that ``qbench tune``'s JSON gives a run
(``--params-from``, a grid's final runs), checked against the method, dataset and bits it
was tuned for."""

from __future__ import annotations

import math
import numbers
from pathlib import Path

from qbench.core.errors import QbenchError
from qbench.core.validation import is_int
from qbench.registry import METHODS
from qbench.run.results import read_json


def load_tuned_params(path: Path, method: str, dataset: str, bits: int, *,
                      protocol: str | None = None) -> tuple[dict, dict]:
    """The parameters a tuning summary (``qbench tune``'s JSON) gives a run, validated.

    A method study applies to its method, dataset and bits only; a shared (stage-1) study
    to any method of its dataset that declares those parameters. ``protocol``: also
    checked when given. Returns ``(params, tuning)``: the study's fixed parameters updated
    by its best ones (name -> parsed value), and the record a result carries,
    ``{"trials": finished trials, "best_value": ..., "study": name, "best_params": {...}}``.
    A ``best_value`` that is not a finite number, unknown parameters and out-of-range
    values raise :class:`QbenchError`.
    """
    path = Path(path)
    record = read_json(path, "--params-from")
    keys = ("scope", "method", "dataset", "bits", "fixed", "best_params", "best_value",
            "trials", "study")
    if not isinstance(record, dict) or record.get("kind") != "tuning" or \
            any(k not in record for k in keys):
        raise QbenchError(f"--params-from {path}: not a qbench tune summary (needs kind "
                          f"'tuning' and {', '.join(keys)})")
    types = {"fixed": dict, "best_params": dict, "trials": dict, "study": str}
    for key, typ in types.items():
        if not isinstance(record[key], typ):
            raise QbenchError(f"--params-from {path}: {key!r} is a "
                              f"{type(record[key]).__name__}; allowed: a {typ.__name__}")
    best = record["best_value"]  # a summary is written only once a trial completed
    if not isinstance(best, numbers.Real) or isinstance(best, bool) or not math.isfinite(best):
        raise QbenchError(f"--params-from {path}: 'best_value' is {best!r}; allowed: a finite "
                          "number (the best completed trial's validation score)")
    counts = [record["trials"].get(k, 0) for k in ("complete", "pruned")]
    if not all(is_int(c) and c >= 0 for c in counts):
        raise QbenchError(f"--params-from {path}: 'trials' counts must be integers >= 0, "
                          f"got {counts!r}")
    wanted = {"dataset": dataset, "protocol": protocol}
    if record["scope"] == "method":
        wanted.update(method=method, bits=bits)
    for key, value in wanted.items():
        if value is not None and record.get(key) != value:
            raise QbenchError(f"--params-from {path} was tuned for {key} {record.get(key)!r}, "
                              f"not {value!r}")
    given = {**record["fixed"], **record["best_params"]}
    resolved = METHODS.resolve_params(method, given)
    params = {k: resolved[k] for k in given}
    trials = record["trials"]
    tuning = {"trials": trials.get("complete", 0) + trials.get("pruned", 0),
              "best_value": record["best_value"], "study": record["study"],
              "best_params": {k: params[k] for k in record["best_params"]}}
    return params, tuning
