"""Loading result files for the report: expand folders into files, validate each result
at the boundary (schema, numbers, names that become file names, the metric card) and skip
grid failure records with a note. Everything after this reads checked data."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from qbench.core.errors import QbenchError
from qbench.core.validation import SAFE_NAME
from qbench.report.rows import Run, is_number
from qbench.run.results import FAILURE_SUFFIX, load_result


def expand_paths(paths: Iterable[Path]) -> list[Path]:
    """Files as given, folders replaced by their ``*.json`` files; duplicates dropped."""
    out: list[Path] = []
    seen: set[Path] = set()
    for raw in paths:
        path = Path(raw)
        items = sorted(path.glob("*.json")) if path.is_dir() else [path]
        for item in items:
            key = item.resolve()
            if key not in seen:
                seen.add(key)
                out.append(item)
    return out


NAME_KEYS = ("dataset", "protocol", "method")
"""Result strings that become parts of output file names (tables, plots)."""


CARD_KEYS = ("relevance", "k", "normaliser", "tie_policy")
"""Metric-card entries a result must state: without them its convention is unknown."""


def _bad_leaf(value, where: str) -> str | None:
    """The first place in ``value`` (nested dicts and lists) that is not a finite number or
    null, as ``where.key[i]``; None when every leaf is one."""
    if isinstance(value, dict):
        return next((bad for k, v in value.items()
                     if (bad := _bad_leaf(v, f"{where}.{k}"))), None)
    if isinstance(value, list):
        return next((bad for i, v in enumerate(value)
                     if (bad := _bad_leaf(v, f"{where}[{i}]"))), None)
    return None if value is None or is_number(value) else where


def _check_numbers(path: Path, result: dict) -> None:
    """Refuse what would reach a table or plot unchecked: a metric or curve value that is not
    a number, a parameter that is not a scalar, a metric card without its convention."""
    for key in ("metrics", "curves"):
        bad = _bad_leaf(result[key], key)
        if bad is not None:
            raise QbenchError(f"{path}: {bad} is not a number; allowed: finite numbers or null")
    for name, value in result["params"].items():
        if not (value is None or isinstance(value, (str, bool)) or is_number(value)):
            raise QbenchError(f"{path}: params.{name} is a {type(value).__name__}; allowed: a "
                              "string, number, boolean or null")
    missing = [k for k in CARD_KEYS if k not in result["metric_card"]]
    if missing:
        raise QbenchError(f"{path}: metric_card lacks {', '.join(missing)}; a result states "
                          "its metric convention (" + ", ".join(CARD_KEYS) + ")")


def load_runs(paths: Iterable[Path]) -> tuple[list[Run], list[str]]:
    """Load and validate result files; grid failure records are skipped with a note.

    Returns (runs, notes). A bad file raises :class:`QbenchError` naming it, and so does a
    name that would leave the output folder (a path separator, ``..``); two files of one
    run are refused when the runs are aggregated (:func:`qbench.report.stats.aggregate`).
    """
    runs: list[Run] = []
    notes: list[str] = []
    for path in expand_paths(paths):
        if path.name.endswith(FAILURE_SUFFIX):
            notes.append(f"skipped {path}: a grid failure record, not a result")
            continue
        result = load_result(path)
        if not is_number(result["metrics"].get("map_all")):
            raise QbenchError(f"{path}: metrics.map_all is not a number")
        for key in ("selection", "tuning"):
            if not isinstance(result.get(key), (dict, type(None))):
                raise QbenchError(f"{path}: {key} is neither an object nor null")
        _check_numbers(path, result)
        for key in NAME_KEYS:
            if not SAFE_NAME.match(result[key]):
                raise QbenchError(f"{path}: {key} {result[key]!r} is not allowed; allowed: "
                                  "letters, digits and . _ + - (not first; no path separator)")
        runs.append(Run(path, result))
    return runs, notes
