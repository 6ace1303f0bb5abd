"""Aggregate result files into tables: mean ± std over seeds, significance, paper numbers.

``compare`` reads only result files (:mod:`qbench.results`); it never runs a method.

Grouping
    Runs are grouped by (dataset, protocol, metric convention, row label, bits); each group
    shows mean ± sample standard deviation (ddof = 1) over its seeds and n, the number of
    seeds. The *metric convention* is the run's metric card without its distance entries
    (relevance rule, K, AP normaliser, zero-hit and tie policies, ...): runs with different
    conventions go to separate tables and are never averaged together. The *row label* is
    the method name plus the parameters that differ from the method's declared defaults
    (``dqn[loss=ip]``); training-budget parameters (``epochs``, ``encoder``, ``weights``)
    appear in the label only when they differ between runs of the same method on the same
    dataset and protocol, since a grid sets them per dataset for every method.

Significance
    For each (dataset, protocol, convention, bits) the best row is the one with the
    highest mean per-query AP among the quantized rows (family ``float``, the unquantized
    upper bound, is tested but never chosen as the best). Every other row is compared with
    it by a **two-sided Wilcoxon signed-rank test** (``scipy.stats.wilcoxon``, zero
    differences dropped) on the per-query AP differences: queries are paired by index
    within a seed (both runs must have the same split checksum) and the pairs of all
    shared seeds are concatenated. A row with p >= 0.05 is *tied with the best*; the best
    row and its ties are marked (bold in Markdown and LaTeX, ``*`` in text). Marks are
    drawn on ``map_all`` tables only: ``per_query_ap`` is the AP behind ``map_all``.

Outputs (``out`` given)
    ``<out>/tables/summary.{txt,md,csv,tex}`` (the chosen metric; the CSV is long/tidy, one
    row per group), ``significance.{md,csv}``, ``all_metrics.csv`` (mean/std/n of every
    numeric metric, cost and timing), ``paper_vs_qbench.md`` (the DQN slides' CIFAR-10
    MAP beside this suite's matching rows, with the protocol differences), and the figures
    of :mod:`qbench.plots` in ``<out>/plots/``.
"""

from __future__ import annotations

import json
import math
import warnings
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from qbench.errors import QbenchError, choice_error
from qbench.results import FAILURE_SUFFIX, load_result

FORMATS = ("table", "md", "csv", "latex")
FORMAT_SUFFIX = {"table": "txt", "md": "md", "csv": "csv", "latex": "tex"}
ALPHA = 0.05
# metrics whose per-query values are the recorded per_query_ap (significance marks)
AP_METRICS = ("map_all",)
# metric card entries describing additional reports, not the headline numbers' convention
CARD_REPORT_KEYS = ("curves", "hamming_radius_curves")
# parameters a grid sets per dataset for every method: labelled only when they vary
CONTEXT_PARAMS = ("epochs", "encoder", "weights")
METHOD_ORDER = ("float", "sign", "itq", "lsh", "pq", "opq", "two-stage-pq", "two-stage-opq",
                "dqn", "ssm", "gsl", "householder")
METRIC_TITLES = {
    "map_all": "MAP@all", "map_at_k": "MAP@K", "float_map_all": "MAP@all of the float embedding",
    "retention": "retention (MAP / float MAP)", "tie_aware_map_all": "tie-aware MAP@all",
    "p_at_hamming2": "precision within Hamming radius 2", "bytes_per_code": "bytes per code",
    "queries_per_s": "queries per second",
}
SECTION_KEYS = ["dataset", "protocol", "convention"]
GROUP_KEYS = ["dataset", "protocol", "convention", "label", "bits"]

# SPEC §7: the DQN slides' MAP on CIFAR-10 (AlexNet), by bits
PAPER_BITS = (12, 24, 32, 48)
PAPER_CIFAR10 = {
    "DQN": ("dqn", (0.554, 0.558, 0.564, 0.580)),
    "DQN_2+": ("two-stage-opq", (0.528, 0.534, 0.538, 0.541)),
    "DQN_ip": ("dqn[loss=ip]", (0.506, 0.513, 0.519, 0.529)),
}


@dataclass
class Run:
    """One loaded result file with what compare derives from it."""

    path: Path
    result: dict
    label: str = ""
    convention: str = ""


@dataclass
class Aggregate:
    """Everything the tables and plots are made from.

    runs: one row per run (group keys, seed, method, family, path, one column per metric).
    summary: long table, one row per (group, metric): mean, std (ddof=1), n, seeds.
    curves: (dataset, protocol, convention, label, bits) -> {"pr": (recall, precision),
        "top_r": (r, precision)}, each the mean curve over the group's seeds.
    metrics: names of the numeric metrics present in at least one run.
    conventions: convention key -> metric card without its distance entries.
    """

    runs: pd.DataFrame
    summary: pd.DataFrame
    curves: dict = field(default_factory=dict)
    metrics: list[str] = field(default_factory=list)
    conventions: dict[str, dict] = field(default_factory=dict)


# -- loading -------------------------------------------------------------------------------

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


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def load_runs(paths: Iterable[Path]) -> tuple[list[Run], list[str]]:
    """Load and validate result files; grid failure records are skipped with a note.

    Returns (runs, notes). A bad file raises :class:`QbenchError` naming it.
    """
    runs: list[Run] = []
    notes: list[str] = []
    for path in expand_paths(paths):
        if path.name.endswith(FAILURE_SUFFIX):
            notes.append(f"skipped {path}: a grid failure record, not a result")
            continue
        result = load_result(path)
        if not _is_number(result["metrics"].get("map_all")):
            raise QbenchError(f"{path}: metrics.map_all is not a number")
        ap = result.get("per_query_ap")
        if ap is not None and not isinstance(ap, list):
            raise QbenchError(f"{path}: per_query_ap is not a list")
        runs.append(Run(path, result))
    return runs, notes


# -- labels and conventions ----------------------------------------------------------------

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


def _modal_params(results: list[dict]) -> dict:
    counts: dict[str, Counter] = {}
    for r in results:
        for key, value in r["params"].items():
            counts.setdefault(key, Counter())[json.dumps(value, sort_keys=True)] += 1
    return {k: json.loads(c.most_common(1)[0][0]) for k, c in counts.items()}


def _format_param(value) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def assign_labels(runs: list[Run], defaults: dict[str, dict] | None = None) -> None:
    """Set each run's row label: method name plus its non-default parameters.

    ``defaults``: method -> declared defaults; methods missing there use the most common
    value of each parameter among their runs.
    """
    if defaults is None:
        defaults = method_defaults(sorted({r.result["method"] for r in runs}))
    by_method: dict[str, list[dict]] = {}
    varying: dict[tuple, set[str]] = {}
    for run in runs:
        res = run.result
        by_method.setdefault(res["method"], []).append(res)
        varying.setdefault((res["dataset"], res["protocol"], res["method"]), set())
    seen: dict[tuple, dict[str, str]] = {}
    for run in runs:
        res = run.result
        key = (res["dataset"], res["protocol"], res["method"])
        for p, v in res["params"].items():
            text = json.dumps(v, sort_keys=True)
            first = seen.setdefault(key, {}).setdefault(p, text)
            if first != text:
                varying[key].add(p)
    fallback = {m: _modal_params(rs) for m, rs in by_method.items() if m not in defaults}
    for run in runs:
        res = run.result
        method = res["method"]
        reference = defaults.get(method) or fallback.get(method, {})
        vary = varying[(res["dataset"], res["protocol"], method)]
        parts = []
        for p in sorted(res["params"]):
            if p not in reference or res["params"][p] == reference[p]:
                continue
            if p in CONTEXT_PARAMS and p not in vary:
                continue
            parts.append(f"{p}={_format_param(res['params'][p])}")
        run.label = f"{method}[{','.join(parts)}]" if parts else method


def convention_card(card: dict) -> dict:
    """The metric card entries that define the headline numbers: what makes them comparable.

    Left out: the distance (each family ranks by its own), descriptions of additional
    reports (``curves``, ``hamming_radius_curves``), and the clause of ``tie_policy`` after
    ";" (binary codes add "tie-aware expectation reported" while their headline MAP breaks
    ties by database index like every other run).
    """
    conv = {}
    for key, value in card.items():
        if "distance" in key.lower() or key in CARD_REPORT_KEYS:
            continue
        if key == "tie_policy" and isinstance(value, str):
            value = value.split(";", 1)[0].strip()
        conv[key] = value
    return conv


def convention_key(card: dict) -> str:
    """Canonical one-line text of a metric convention."""
    conv = convention_card(card)
    return "; ".join(f"{k}={json.dumps(conv[k], sort_keys=True)}" for k in sorted(conv))


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


def label_order(label: str) -> tuple:
    """Sort key of row labels: known methods in a fixed order, variants after their base."""
    base = label.split("[", 1)[0]
    rank = METHOD_ORDER.index(base) if base in METHOD_ORDER else len(METHOD_ORDER)
    return (rank, base, label != base, label)


# -- aggregation ---------------------------------------------------------------------------

def metric_value(result: dict, name: str) -> float | None:
    """A numeric metric by name, looked up in metrics, then cost, then timings."""
    for section in ("metrics", "cost", "timings"):
        value = result.get(section, {}).get(name)
        if _is_number(value):
            return float(value)
    return None


def available_metrics(runs: list[Run]) -> list[str]:
    """Names of the numeric metrics, costs and timings present in at least one run."""
    names: set[str] = set()
    for run in runs:
        for section in ("metrics", "cost", "timings"):
            names.update(k for k, v in run.result.get(section, {}).items() if _is_number(v))
    return sorted(names)


def _mean_curve(curves: list[tuple[np.ndarray, np.ndarray]], grid_points: int = 101):
    """Mean of curves y(x); curves on different x are interpolated onto a common grid."""
    curves = [(x, y) for x, y in curves if len(x) and len(x) == len(y)]
    if not curves:
        return None
    x0 = curves[0][0]
    if all(len(x) == len(x0) and np.allclose(x, x0) for x, _ in curves):
        return x0, np.mean([y for _, y in curves], axis=0)
    lo = max(float(np.min(x)) for x, _ in curves)
    hi = min(float(np.max(x)) for x, _ in curves)
    if hi <= lo:
        return None
    grid = np.linspace(lo, hi, grid_points)
    ys = []
    for x, y in curves:
        order = np.argsort(x, kind="stable")
        ys.append(np.interp(grid, x[order], y[order]))
    return grid, np.mean(ys, axis=0)


def _curve(result: dict, name: str, x_key: str) -> tuple[np.ndarray, np.ndarray] | None:
    c = result.get("curves", {}).get(name)
    if not isinstance(c, dict) or x_key not in c or "precision" not in c:
        return None
    try:
        x = np.asarray(c[x_key], dtype=float)
        y = np.asarray(c["precision"], dtype=float)
    except (TypeError, ValueError):
        return None
    keep = np.isfinite(x) & np.isfinite(y) if x.shape == y.shape else None
    return (x[keep], y[keep]) if keep is not None else None


def aggregate(runs: list[Run]) -> Aggregate:
    """Group runs (labels and conventions must be set) and compute mean, std and n.

    Raises :class:`QbenchError` when two files are runs of the same group and seed.
    """
    metrics = available_metrics(runs)
    rows = []
    owners: dict[tuple, Path] = {}
    conventions: dict[str, dict] = {}
    for run in runs:
        res = run.result
        key = (res["dataset"], res["protocol"], run.convention, run.label, res["bits"],
               res["seed"])
        if key in owners:
            raise QbenchError(
                f"{owners[key]} and {run.path} are both runs of {run.label} on "
                f"{res['dataset']}/{res['protocol']} at {res['bits']} bits, seed {res['seed']}; "
                "pass only one of them"
            )
        owners[key] = run.path
        conventions.setdefault(run.convention, convention_card(res["metric_card"]))
        row = dict(zip(GROUP_KEYS, key[:-1]), seed=res["seed"], method=res["method"],
                   family=res["family"], path=str(run.path))
        row.update({m: metric_value(res, m) for m in metrics})
        rows.append(row)
    table = pd.DataFrame(rows)
    long = table.melt(id_vars=GROUP_KEYS + ["seed", "method", "family"], value_vars=metrics,
                      var_name="metric", value_name="value").dropna(subset=["value"])
    long["value"] = pd.to_numeric(long["value"])
    grouped = long.groupby(GROUP_KEYS + ["method", "family", "metric"], sort=False)
    summary = grouped["value"].agg(["mean", "std", "count"]).rename(columns={"count": "n"})
    summary["seeds"] = grouped["seed"].agg(lambda s: ",".join(str(v) for v in sorted(s)))
    summary = summary.reset_index()
    summary["n"] = summary["n"].astype(int)

    curves: dict[tuple, dict] = {}
    by_group: dict[tuple, list[dict]] = {}
    for run in runs:
        res = run.result
        by_group.setdefault((res["dataset"], res["protocol"], run.convention, run.label,
                             res["bits"]), []).append(res)
    for key, results in by_group.items():
        entry = {}
        for name, x_key in (("pr", "recall"), ("top_r", "r")):
            parts = [c for c in (_curve(r, name, x_key) for r in results) if c is not None]
            mean = _mean_curve(parts) if parts else None
            if mean is not None:
                entry[name] = mean
        curves[key] = entry
    return Aggregate(table, summary, curves, metrics, conventions)


# -- significance --------------------------------------------------------------------------

def wilcoxon_p(differences: np.ndarray) -> float:
    """Two-sided Wilcoxon signed-rank p-value of paired differences (zeros dropped)."""
    from scipy.stats import wilcoxon

    d = np.asarray(differences, dtype=float)
    d = d[np.isfinite(d)]
    if not np.any(d != 0):
        return 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(wilcoxon(d, zero_method="wilcox", alternative="two-sided").pvalue)


def _per_query(res: dict) -> np.ndarray | None:
    ap = res.get("per_query_ap")
    if not ap:
        return None
    return np.array([np.nan if v is None else v for v in ap], dtype=float)


def significance(runs: list[Run], alpha: float = ALPHA) -> pd.DataFrame:
    """Each row against the best of its (dataset, protocol, convention, bits) cell.

    Columns: dataset, protocol, convention, bits, label, family, mean_ap (mean per-query
    AP over the row's seeds), best, diff (mean paired difference row - best), p_value,
    n_pairs, seeds_paired, tied (p >= alpha, or the best itself). Rows without
    per-query AP are left out; rows sharing no seed with the best have no p-value.
    """
    cells: dict[tuple, dict[str, dict]] = {}
    families: dict[str, str] = {}
    for run in runs:
        res = run.result
        ap = _per_query(res)
        if ap is None:
            continue
        cell = (res["dataset"], res["protocol"], run.convention, res["bits"])
        checksum = res["splits"].get("checksum")
        cells.setdefault(cell, {}).setdefault(run.label, {})[res["seed"]] = (checksum, ap)
        families[run.label] = res["family"]
    rows = []
    for cell, by_label in cells.items():
        means = {lab: float(np.nanmean(np.concatenate([ap for _, ap in s.values()])))
                 for lab, s in by_label.items()}
        candidates = [lab for lab in means if families[lab] != "float"] or list(means)
        best = max(sorted(candidates, key=label_order), key=lambda lab: means[lab])
        for lab, seeds in by_label.items():
            diffs, paired = [], []
            for seed, (checksum, ap) in sorted(seeds.items()):
                other = by_label[best].get(seed)
                if other is None or other[0] != checksum or len(other[1]) != len(ap):
                    continue
                diffs.append(ap - other[1])
                paired.append(seed)
            if lab == best:
                p, diff, n_pairs = 1.0, 0.0, sum(len(ap) for _, ap in seeds.values())
            elif diffs:
                d = np.concatenate(diffs)
                p, diff, n_pairs = wilcoxon_p(d), float(np.nanmean(d)), int(len(d))
            else:
                p, diff, n_pairs = None, None, 0
            rows.append({
                "dataset": cell[0], "protocol": cell[1], "convention": cell[2], "bits": cell[3],
                "label": lab, "family": families[lab], "mean_ap": means[lab], "best": best,
                "diff": diff, "p_value": p, "n_pairs": n_pairs,
                "seeds_paired": ",".join(map(str, paired)) if lab != best
                else ",".join(map(str, sorted(seeds))),
                "tied": lab == best or (p is not None and p >= alpha),
            })
    columns = ["dataset", "protocol", "convention", "bits", "label", "family", "mean_ap", "best",
               "diff", "p_value", "n_pairs", "seeds_paired", "tied"]
    df = pd.DataFrame(rows, columns=columns)
    return sort_rows(df, ["dataset", "protocol", "convention", "bits"])


# -- rendering -----------------------------------------------------------------------------

@dataclass
class Section:
    """One table: rows are labels, columns are bits; cells are (text, marked)."""

    title: list[str]
    columns: list[str]
    rows: list[tuple[str, list[tuple[str, bool]]]]
    footer: list[str] = field(default_factory=list)


def format_number(value: float, ref: float | None = None) -> str:
    """Three decimals for values below 10, fewer for large ones (qps, bytes, seconds)."""
    scale = abs(ref if ref is not None else value)
    if scale >= 1000:
        return f"{value:.0f}"
    if scale >= 10:
        return f"{value:.1f}"
    return f"{value:.3f}"


def format_cell(mean: float, std: float, n: int, common_n: int) -> str:
    """'mean ± std', with '(n=k)' when k differs from the table's usual number of seeds."""
    text = format_number(mean)
    if n > 1 and std == std:
        text += f" ± {format_number(std, ref=mean)}"
    if n != common_n:
        text += f" (n={n})"
    return text


def convention_text(card: dict) -> str:
    """The metric card (distance aside) as 'key value, ...'."""
    return ", ".join(f"{k} {_format_param(v)}" for k, v in sorted(card.items())) or "(empty)"


def build_sections(agg: Aggregate, sig: pd.DataFrame, metric: str) -> list[Section]:
    """One section per (dataset, protocol, convention) holding ``metric``."""
    data = agg.summary[agg.summary["metric"] == metric]
    marks = metric in AP_METRICS and len(sig) > 0
    tied = {}
    if marks:
        for rec in sig.itertuples(index=False):
            tied[(rec.dataset, rec.protocol, rec.convention, rec.bits, rec.label)] = bool(rec.tied)
    conv_ids = {}
    sections = []
    for (dataset, protocol, conv), part in data.groupby(SECTION_KEYS, sort=True):
        conv_ids.setdefault((dataset, protocol), []).append(conv)
        bits = sorted(int(b) for b in part["bits"].unique())
        common_n = Counter(part["n"]).most_common(1)[0][0]
        rows = []
        for label in sorted(part["label"].unique(), key=label_order):
            cells = []
            for b in bits:
                hit = part[(part["label"] == label) & (part["bits"] == b)]
                if hit.empty:
                    cells.append(("–", False))
                    continue
                r = hit.iloc[0]
                mark = tied.get((dataset, protocol, conv, b, label), False)
                cells.append((format_cell(r["mean"], r["std"], int(r["n"]), common_n), mark))
            rows.append((label, cells))
        n_conv = len(data[(data["dataset"] == dataset) & (data["protocol"] == protocol)]
                     ["convention"].unique())
        title = [f"{dataset} / {protocol}: {METRIC_TITLES.get(metric, metric)}, mean ± std over "
                 f"seeds (n = {common_n} per cell unless marked)",
                 "metric card" + (f" (convention {len(conv_ids[(dataset, protocol)])} of "
                                  f"{n_conv})" if n_conv > 1 else "")
                 + f": {convention_text(agg.conventions[conv])}"]
        footer = []
        if marks:
            footer.append("marked: the best quantized row of each column and rows not "
                          f"significantly worse (paired Wilcoxon signed-rank on per-query AP, "
                          f"p >= {ALPHA})")
        sections.append(Section(title, ["method"] + [f"{b} bits" for b in bits], rows, footer))
    return sections


_LATEX_SPECIALS = {ord("\\"): r"\textbackslash{}", ord("&"): r"\&", ord("%"): r"\%",
                   ord("#"): r"\#", ord("_"): r"\_", ord("$"): r"\$", ord("{"): r"\{",
                   ord("}"): r"\}"}


def _latex_escape(text: str) -> str:
    return text.translate(_LATEX_SPECIALS)


def render_text(sections: list[Section]) -> str:
    """Aligned plain text; marked cells end in ' *'."""
    blocks = []
    for s in sections:
        body = [[label] + [t + (" *" if m else "  ") for t, m in cells] for label, cells in s.rows]
        widths = [max(len(r[i]) for r in [s.columns] + body) for i in range(len(s.columns))]

        def line(cells: list[str], widths: list[int] = widths) -> str:
            return "  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                             for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

        rule = "  ".join("-" * w for w in widths)
        header = [s.columns[0]] + [c + "  " for c in s.columns[1:]]
        blocks.append("\n".join(s.title + [line(header), rule]
                                + [line(r) for r in body] + [f"* {f}" for f in s.footer]))
    return "\n\n".join(blocks)


def render_markdown(sections: list[Section]) -> str:
    """GitHub Markdown tables; marked cells in bold."""
    blocks = []
    for s in sections:
        lines = [f"**{s.title[0]}**", "", s.title[1], ""]
        lines.append("| " + " | ".join(s.columns) + " |")
        lines.append("|" + "|".join([":---"] + ["---:"] * (len(s.columns) - 1)) + "|")
        for label, cells in s.rows:
            texts = [f"**{t}**" if m else t for t, m in cells]
            lines.append("| " + " | ".join([label.replace("|", r"\|")] + texts) + " |")
        lines += [""] + [f"Bold: {f}." for f in s.footer]
        blocks.append("\n".join(lines).rstrip())
    return "\n\n".join(blocks) + "\n"


def render_latex(sections: list[Section]) -> str:
    """LaTeX tabulars (no packages needed); marked cells in bold math."""
    blocks = []
    for s in sections:
        lines = [f"% {t}" for t in s.title]
        lines.append(r"\begin{tabular}{l" + "r" * (len(s.columns) - 1) + "}")
        lines.append(r"\hline")
        lines.append(" & ".join(_latex_escape(c) for c in s.columns) + r" \\")
        lines.append(r"\hline")
        for label, cells in s.rows:
            texts = []
            for t, m in cells:
                if t == "–":
                    texts.append("--")
                    continue
                body = t.replace("±", r"\pm").replace("(n=", r"\ (n=")
                texts.append(f"$\\mathbf{{{body}}}$" if m else f"${body}$")
            lines.append(" & ".join([_latex_escape(label)] + texts) + r" \\")
        lines += [r"\hline", r"\end{tabular}"] + [f"% bold: {f}" for f in s.footer]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"


def summary_frame(agg: Aggregate, sig: pd.DataFrame, metric: str) -> pd.DataFrame:
    """The tidy table of one metric: one row per group, with the significance columns."""
    data = agg.summary[agg.summary["metric"] == metric].copy()
    data = data.rename(columns={"method": "base_method"})
    if len(sig):
        keep = sig[["dataset", "protocol", "convention", "bits", "label", "best", "p_value",
                    "tied"]].rename(columns={"p_value": "p_vs_best", "tied": "tied_with_best"})
        data = data.merge(keep, on=["dataset", "protocol", "convention", "bits", "label"],
                          how="left")
    else:
        data = data.assign(best=None, p_vs_best=None, tied_with_best=None)
    if metric not in AP_METRICS:
        data = data.assign(best=None, p_vs_best=None, tied_with_best=None)
    data = sort_rows(data, SECTION_KEYS + ["label", "bits"])
    cols = ["dataset", "protocol", "label", "base_method", "family", "bits", "metric", "mean",
            "std", "n", "seeds", "best", "p_vs_best", "tied_with_best", "convention"]
    return data[cols].rename(columns={"label": "method"}).reset_index(drop=True)


def render(agg: Aggregate, sig: pd.DataFrame, metric: str, fmt: str) -> str:
    """The summary table of ``metric`` in format ``fmt``."""
    if fmt == "csv":
        return summary_frame(agg, sig, metric).to_csv(index=False)
    sections = build_sections(agg, sig, metric)
    if fmt == "md":
        return render_markdown(sections)
    if fmt == "latex":
        return render_latex(sections)
    return render_text(sections) + "\n"


def significance_markdown(sig: pd.DataFrame) -> str:
    """The significance table in Markdown, one block per (dataset, protocol, convention)."""
    lines = ["# Paired significance against the best row",
             "",
             "Two-sided Wilcoxon signed-rank test (scipy.stats.wilcoxon, zero differences "
             "dropped) on per-query AP differences; queries paired by index within a seed "
             "(same split checksum), pairs of all shared seeds concatenated. The best row is "
             "the quantized row with the highest mean per-query AP; `float` is tested but "
             f"never the best. tied: p >= {ALPHA}.", ""]
    if sig.empty:
        return "\n".join(lines + ["No result file holds per-query AP."]) + "\n"
    for (dataset, protocol, conv), part in sig.groupby(SECTION_KEYS, sort=True):
        lines += [f"## {dataset} / {protocol}", "", f"convention: {conv}", "",
                  "| bits | method | mean AP | best | diff vs best | p | pairs | seeds | tied |",
                  "|---:|:---|---:|:---|---:|---:|---:|:---|:---|"]
        for r in part.itertuples(index=False):
            diff = "" if r.diff is None or r.diff != r.diff else f"{r.diff:+.4f}"
            p = "" if r.p_value is None or r.p_value != r.p_value else f"{r.p_value:.3g}"
            lines.append(f"| {r.bits} | {r.label} | {r.mean_ap:.4f} | {r.best} | {diff} | {p} "
                         f"| {r.n_pairs} | {r.seeds_paired} | {'yes' if r.tied else 'no'} |")
        lines.append("")
    return "\n".join(lines)


# -- paper comparison ----------------------------------------------------------------------

def _values(results: list[dict], path: tuple[str, ...]) -> list:
    out = []
    for r in results:
        v = r
        for key in path:
            v = v.get(key) if isinstance(v, dict) else None
        if v is not None and v not in out:
            out.append(v)
    return out


def paper_markdown(runs: list[Run], agg: Aggregate) -> str:
    """The DQN slides' CIFAR-10 MAP beside this suite's matching rows, per dataset/protocol."""
    lines = ["# DQN slides (CIFAR-10) vs qbench", "",
             "Published MAP from the DQN slides (SPEC §7) beside qbench's MAP@all (mean ± std "
             "over seeds) for the matching methods: DQN = `dqn`, DQN_2+ = `two-stage-opq`, "
             "DQN_ip = `dqn[loss=ip]`.", ""]
    data = agg.summary[agg.summary["metric"] == "map_all"]
    wanted = {label for label, _ in PAPER_CIFAR10.values()}
    for (dataset, protocol, conv), part in data.groupby(SECTION_KEYS, sort=True):
        matching = [r.result for r in runs if r.convention == conv and r.label in wanted
                    and r.result["dataset"] == dataset and r.result["protocol"] == protocol]
        lines += [f"## {dataset} / {protocol}", ""]
        if dataset != "cifar10":
            lines += [f"**Warning: these qbench results are on `{dataset}`, not CIFAR-10: the "
                      "numbers are not comparable with the published ones.**", ""]
        lines += ["| row | " + " | ".join(f"{b} bits" for b in PAPER_BITS) + " |",
                  "|:---|" + "---:|" * len(PAPER_BITS)]
        for name, (label, published) in PAPER_CIFAR10.items():
            lines.append(f"| {name} (slides, CIFAR-10) | "
                         + " | ".join(f"{v:.3f}" for v in published) + " |")
            cells = []
            for b in PAPER_BITS:
                hit = part[(part["label"] == label) & (part["bits"] == b)]
                cells.append("–" if hit.empty else format_cell(
                    hit.iloc[0]["mean"], hit.iloc[0]["std"], int(hit.iloc[0]["n"]), -1))
            lines.append(f"| qbench `{label}` ({dataset}) | " + " | ".join(cells) + " |")
        encoders = _values(matching, ("method_info", "training", "encoder"))
        weights = _values(matching, ("params", "weights"))
        epochs = _values(matching, ("method_info", "training", "epochs"))
        n_db = _values(matching, ("splits", "n_database"))
        n_q = _values(matching, ("splits", "n_query"))
        n_tr = _values(matching, ("splits", "n_train"))

        def listed(values: list, unknown: str = "not recorded") -> str:
            return ", ".join(f"{v:,}" if isinstance(v, int) else str(v) for v in values) \
                or unknown

        ours_backbone = (f"encoder {listed(encoders)}, weights {listed(weights)}, "
                         f"epochs {listed(epochs)}")
        if not matching:
            ours_backbone = "no matching qbench runs (dqn, two-stage-opq, dqn[loss=ip])"
        lines += ["", "Protocol differences:", "",
                  "- Backbone: slides: AlexNet pre-trained on ImageNet, fine-tuned; qbench: "
                  f"{ours_backbone}.",
                  "- Database: slides: CIFAR-10, 1,000 queries, 5,000 training images, "
                  "database of 59,000 images; qbench: "
                  f"{dataset}, {listed(n_q)} queries, {listed(n_tr)} training items, database "
                  f"of {listed(n_db)} items.",
                  "- MAP: slides: \"MAP\" as tabulated in the slides, K not stated (MAP@all over "
                  "the 59,000-image database assumed, as in the DQN paper's protocol); qbench: "
                  f"MAP@all with metric card {convention_text(agg.conventions[conv])}.",
                  ""]
    if data.empty:
        lines.append("No qbench results with map_all.")
    return "\n".join(lines)


# -- entry point ---------------------------------------------------------------------------

def _comment(lines: list[str], fmt: str) -> str:
    prefix = {"csv": "# ", "latex": "% "}.get(fmt, "")
    return "".join(f"{prefix}{line}\n" for line in lines)


def prepare(paths: Iterable[Path]) -> tuple[list[Run], Aggregate, pd.DataFrame, list[str]]:
    """Load, label, aggregate and test: (runs, aggregate, significance, notes)."""
    runs, notes = load_runs(paths)
    if not runs:
        raise QbenchError("no result files to compare" + (f" ({'; '.join(notes)})"
                                                          if notes else ""))
    assign_labels(runs)
    for run in runs:
        run.convention = convention_key(run.result["metric_card"])
    agg = aggregate(runs)
    return runs, agg, significance(runs), notes


def write_outputs(out: Path, runs: list[Run], agg: Aggregate, sig: pd.DataFrame,
                  metric: str) -> list[Path]:
    """Write tables to ``<out>/tables`` and figures to ``<out>/plots``; return the paths."""
    from qbench.plots import write_plots

    tables = Path(out) / "tables"
    try:
        tables.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise QbenchError(f"--out {out}: cannot create {tables}: {exc.strerror or exc}") from None
    written = []
    files = {f"summary.{FORMAT_SUFFIX[f]}": render(agg, sig, metric, f) for f in FORMATS}
    files["significance.md"] = significance_markdown(sig)
    files["significance.csv"] = sig.to_csv(index=False)
    files["all_metrics.csv"] = agg.summary.to_csv(index=False)
    files["paper_vs_qbench.md"] = paper_markdown(runs, agg)
    for name, text in files.items():
        path = tables / name
        path.write_text(text)
        written.append(path)
    written += write_plots(agg, Path(out) / "plots")
    return written


def run_compare(paths: list[Path], *, fmt: str = "table", out: Path | None = None,
                metric: str = "map_all") -> str:
    """Compare result files; return the summary table of ``metric`` in ``fmt``.

    fmt: "table" (aligned text), "md", "csv" (tidy, one row per group) or "latex".
    out: when given, also write tables (all formats) and plots under it.
    Notes (skipped failure records, files written) precede the table as comment lines.
    """
    if fmt not in FORMATS:
        raise choice_error("format", fmt, FORMATS)
    runs, agg, sig, notes = prepare(paths)
    if metric not in agg.metrics:
        raise QbenchError(f"unknown metric {metric!r}; available metrics: "
                          + ", ".join(agg.metrics))
    text = render(agg, sig, metric, fmt)
    if out is not None:
        written = write_outputs(Path(out), runs, agg, sig, metric)
        n_plots = sum(1 for p in written if p.parent.name == "plots")
        notes.append(f"wrote {len(written) - n_plots} tables to {Path(out) / 'tables'} and "
                     f"{n_plots} figures to {Path(out) / 'plots'}")
    return _comment(notes, fmt) + text
