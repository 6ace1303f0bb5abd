"""Results as comparable rows: row labels, conventions and the headline MAP (files are
loaded and checked by :mod:`qbench.report.load`).

The bottom layer of ``qbench compare``: :mod:`qbench.report.stats`, :mod:`qbench.report.tables`,
:mod:`qbench.report.claims`, :mod:`qbench.report.paper` and :mod:`qbench.report.plots` build on
it; it imports none of them.

Row label
    The method name plus the parameters that differ from the method's declared defaults
    (``dqn[loss=ip]``: the *variant*). Training-budget parameters (``epochs``, ``encoder``,
    ``weights``, ``augment``, ``select_from``) appear only when they differ between runs of
    the same method on the same dataset and protocol, since a grid sets them per dataset
    for every method.
    A tuned run (top-level ``tuning`` not null) gets the suffix ``(tuned)``: tuned and
    untuned runs of one method are never averaged. Its tuned parameters (those with a
    declared search space, ``Param.tune``, and ``tuning.best_params`` when recorded) stay
    out of its variant: ``dqn[loss=ip] (tuned)`` is the tuned ``dqn[loss=ip]`` whatever
    values its study chose. When runs of one method were selected by different criteria
    (``selection.criterion``: cosine, ADC, tie-aware Hamming), the label names it too:
    ``dqn (selected by cosine)``.

Convention
    The metric card without its distance entries (relevance rule, K, AP normaliser,
    zero-hit and tie policies, ...) plus the selection rule (``selection.rule``: best or
    last; "not recorded" for results without the key) and the training regime (``regime``:
    full, or head on a frozen backbone; full for results without it). Runs of different
    conventions go
    to separate tables and are never averaged or tested against each other. A run with
    ``selection: null`` selected nothing (lsh, raw pq): it is the same under every rule and
    joins the table of each rule present beside it (:func:`assign_conventions`).

Headline MAP
    ``metrics.tie_aware_map_all`` where a result reports it (index order within equal
    distances is luck), else ``metrics.map_all``; tabulated as the metric ``headline_map``.
    Index-order ``map_all`` stays available for comparison with papers.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd

HEADLINE = "headline_map"
"""Name of the derived metric: tie-aware MAP@all where reported, else MAP@all."""
TIE_AWARE_MAP = "tie_aware_map_all"
NOT_RECORDED = "not recorded"
NOTHING_SELECTED = "none (nothing selected)"
TUNED_SUFFIX = " (tuned)"
# metric card entries describing additional reports, not the headline numbers' convention
CARD_REPORT_KEYS = ("curves", "hamming_radius_curves")
# parameters a grid sets per dataset for every method: labelled only when they vary
CONTEXT_PARAMS = ("epochs", "encoder", "weights", "augment", "select_from")
# the representation a selection criterion scores, as named in ``selection.criterion``
REPRESENTATIONS = ("tie-aware Hamming", "ADC", "SDC", "cosine")
METHOD_ORDER = ("float", "sign", "itq", "lsh", "pq", "opq", "two-stage-pq", "two-stage-opq",
                "two-stage-rq", "two-stage-lsq", "dqn", "ssm", "gsl", "householder")


@dataclass
class Run:
    """One loaded result file with what compare derives from it.

    variant: method plus non-default parameters (``dqn[loss=ip]``); label: the row label,
    the variant plus the tuned / selection suffixes; rule: the selection rule of the table
    the run is placed in; convention: :func:`convention_key` under that rule.
    """

    path: Path
    result: dict
    label: str = ""
    variant: str = ""
    rule: str = ""
    convention: str = ""


# -- loading -------------------------------------------------------------------------------

def is_number(value) -> bool:
    """A finite int or float (not a bool)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# -- what a run is -------------------------------------------------------------------------

def selection_rule(result: dict) -> str:
    """``selection.rule`` (best, last); "not recorded" when the result lacks the key or the
    rule; :data:`NOTHING_SELECTED` for ``selection: null``."""
    if "selection" in result and result["selection"] is None:
        return NOTHING_SELECTED
    rule = (result.get("selection") or {}).get("rule")
    return str(rule) if rule is not None else NOT_RECORDED


def selection_representation(result: dict) -> str:
    """What the selection criterion scored: "ADC", "cosine", "tie-aware Hamming", "SDC",
    the criterion text itself when it names none of them, or "not recorded"."""
    criterion = (result.get("selection") or {}).get("criterion")
    if criterion is None:
        return NOT_RECORDED
    text = str(criterion)
    return next((r for r in REPRESENTATIONS if r.lower() in text.lower()), text)


def is_tuned(result: dict) -> bool:
    """Whether the run used tuned parameters (top-level ``tuning`` is not null)."""
    return bool(result.get("tuning"))


def headline_value(result: dict) -> tuple[float, str]:
    """(headline MAP, its source): tie-aware MAP@all where reported, else MAP@all."""
    value = result["metrics"].get(TIE_AWARE_MAP)
    if is_number(value):
        return float(value), "tie-aware"
    return float(result["metrics"]["map_all"]), "index order"


def metric_value(result: dict, name: str) -> float | None:
    """A numeric metric by name (metrics, then cost, then timings); ``headline_map`` too."""
    if name == HEADLINE:
        return headline_value(result)[0]
    for section in ("metrics", "cost", "timings"):
        value = result.get(section, {}).get(name)
        if is_number(value):
            return float(value)
    return None


def available_metrics(runs: list[Run]) -> list[str]:
    """``headline_map`` and every numeric metric, cost and timing present in a run."""
    names: set[str] = {HEADLINE}
    for run in runs:
        for section in ("metrics", "cost", "timings"):
            names.update(k for k, v in run.result.get(section, {}).items() if is_number(v))
    return sorted(names)


# -- labels --------------------------------------------------------------------------------

def method_defaults(methods: Iterable[str]) -> dict[str, dict]:
    """Declared default parameters of registered methods (empty where unavailable).

    The registry imports the method plugins; when that fails (a plugin under construction,
    a missing optional dependency) labels fall back to the runs' most common values.
    """
    try:
        from qbench.registry import METHODS

        known = set(METHODS.names())
    except Exception:  # noqa: BLE001 -- any plugin import error: fall back, see docstring
        return {}
    return {m: METHODS.resolve_params(m) for m in methods if m in known}


def tunable_params(methods: Iterable[str]) -> dict[str, set[str]]:
    """Names of the parameters of registered methods that declare a search space."""
    try:
        from qbench.registry import METHODS

        known = set(METHODS.names())
    except Exception:  # noqa: BLE001 -- as in method_defaults
        return {}
    return {m: {p.name for p in METHODS.get(m).params if getattr(p, "tune", None) is not None}
            for m in methods if m in known}


def _modal_params(results: list[dict]) -> dict:
    counts: dict[str, Counter] = {}
    for r in results:
        for key, value in r["params"].items():
            counts.setdefault(key, Counter())[json.dumps(value, sort_keys=True)] += 1
    return {k: json.loads(c.most_common(1)[0][0]) for k, c in counts.items()}


def format_param(value) -> str:
    """A parameter value as it appears in labels and table headers."""
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def _tuned_params(result: dict, tunable: set[str]) -> set[str]:
    if not is_tuned(result):
        return set()
    best = result["tuning"].get("best_params")
    return tunable | (set(best) if isinstance(best, dict) else set())


def assign_labels(runs: list[Run], defaults: dict[str, dict] | None = None,
                  tunable: dict[str, set[str]] | None = None) -> None:
    """Set each run's variant and row label (module docstring).

    ``defaults``: method -> declared defaults; methods missing there use the most common
    value of each parameter among their untuned runs (all runs when none is untuned).
    ``tunable``: method -> parameters with a search space (default: from the registry).
    """
    methods = sorted({r.result["method"] for r in runs})
    if defaults is None:
        defaults = method_defaults(methods)
    if tunable is None:
        tunable = tunable_params(methods)
    by_method: dict[str, list[dict]] = {}
    for run in runs:
        by_method.setdefault(run.result["method"], []).append(run.result)
    fallback = {m: _modal_params([r for r in rs if not is_tuned(r)] or rs)
                for m, rs in by_method.items() if m not in defaults}
    varying: dict[tuple, set[str]] = {}
    criteria: dict[tuple, set[str]] = {}
    seen: dict[tuple, dict[str, str]] = {}
    for run in runs:
        res = run.result
        key = (res["dataset"], res["protocol"], res["method"])
        varying.setdefault(key, set())
        criteria.setdefault(key, set()).add(selection_representation(res))
        for p, v in res["params"].items():
            text = json.dumps(v, sort_keys=True)
            if seen.setdefault(key, {}).setdefault(p, text) != text:
                varying[key].add(p)
    for run in runs:
        res = run.result
        method = res["method"]
        key = (res["dataset"], res["protocol"], method)
        reference = defaults.get(method) or fallback.get(method, {})
        tuned = _tuned_params(res, tunable.get(method, set()))
        parts = []
        for p in sorted(res["params"]):
            if p not in reference or res["params"][p] == reference[p] or p in tuned:
                continue
            if p in CONTEXT_PARAMS and p not in varying[key]:
                continue
            parts.append(f"{p}={format_param(res['params'][p])}")
        run.variant = f"{method}[{','.join(parts)}]" if parts else method
        notes = ["tuned"] if is_tuned(res) else []
        if len(criteria[key]) > 1:
            notes.append(f"selected by {selection_representation(res)}")
        run.label = run.variant + (f" ({'; '.join(notes)})" if notes else "")


# -- conventions ---------------------------------------------------------------------------

def convention_card(result: dict, rule: str | None = None) -> dict:
    """What makes a run's headline numbers comparable: metric card entries and selection rule
    (``rule``, default the run's own :func:`selection_rule`).

    Left out of the metric card: the distance (each family ranks by its own), descriptions
    of additional reports (``curves``, ``hamming_radius_curves``), and the clause of
    ``tie_policy`` after ";" (binary codes add "tie-aware expectation reported").
    """
    conv = {}
    for key, value in result["metric_card"].items():
        if "distance" in key.lower() or key in CARD_REPORT_KEYS:
            continue
        if key == "tie_policy" and isinstance(value, str):
            value = value.split(";", 1)[0].strip()
        conv[key] = value
    conv["selection_rule"] = selection_rule(result) if rule is None else rule
    conv["regime"] = result.get("regime", "full")
    return conv


def convention_key(result: dict, rule: str | None = None) -> str:
    """Canonical one-line text of a run's convention (:func:`convention_card`)."""
    conv = convention_card(result, rule)
    return "; ".join(f"{k}={json.dumps(conv[k], sort_keys=True)}" for k in sorted(conv))


def assign_conventions(runs: list[Run]) -> list[Run]:
    """Set each run's convention; return the runs placed in their tables.

    A run that selected nothing (:data:`NOTHING_SELECTED`) is placed once under each
    selection rule found among the runs of the same dataset, protocol and metric card
    (a copy per rule), or under its own rule when there are none.
    """
    def place(run: Run) -> tuple:
        res = run.result
        return res["dataset"], res["protocol"], convention_key(res, rule="")

    rules: dict[tuple, set[str]] = {}
    for run in runs:
        rule = selection_rule(run.result)
        if rule != NOTHING_SELECTED:
            rules.setdefault(place(run), set()).add(rule)
    placed = []
    for run in runs:
        own = selection_rule(run.result)
        targets = sorted(rules.get(place(run), ())) if own == NOTHING_SELECTED else []
        for rule in targets or [own]:
            placed.append(replace(run, rule=rule, convention=convention_key(run.result, rule)))
    return placed


# -- ordering ------------------------------------------------------------------------------

def base_method(label: str) -> str:
    """The method name of a row label: ``dqn[loss=ip] (tuned)`` -> ``dqn``."""
    return label.split("[", 1)[0].split(" (", 1)[0]


def label_order(label: str) -> tuple:
    """Sort key of row labels: known methods in a fixed order, variants after their base."""
    base = base_method(label)
    rank = METHOD_ORDER.index(base) if base in METHOD_ORDER else len(METHOD_ORDER)
    return (rank, base, label != base, label)


def sort_rows(df: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Sort by ``keys`` with the "label" key in :func:`label_order`; index reset."""
    if df.empty:
        return df.reset_index(drop=True)
    ranks = {lab: i for i, lab in enumerate(sorted(df["label"].unique(), key=label_order))}
    keys = ["_rank" if k == "label" else k for k in keys]
    if "_rank" not in keys:
        keys.append("_rank")
    ordered = df.assign(_rank=df["label"].map(ranks)).sort_values(keys, kind="stable")
    return ordered.drop(columns="_rank").reset_index(drop=True)
