"""Statistics over seeds: mean, std and t confidence intervals, paired t-tests, Holm.

The seed (training randomness) is the unit of replication: every number here is computed
from seed-level values (one MAP per run); queries of different seeds are never pooled.

Groups
    Runs are grouped by (dataset, protocol, convention, row label, bits) (see
    :mod:`qbench.report.rows`); each group has the mean, the sample standard deviation (ddof = 1),
    n (its number of seeds) and a 95% confidence interval of the mean,
    mean ± t(0.975, n − 1) · std / √n (none for n = 1).

Paired comparisons (:func:`significance`)
    In each (dataset, protocol, convention, bits) cell every row is compared with a
    reference row: the best quantized row (highest mean headline MAP; ``float``, the
    unquantized upper bound, is compared but never chosen), or a row named with
    ``baseline``. Runs are paired by training seed (both runs of a pair must have the same
    split checksum); the test is a two-sided paired t-test on the seed-level headline MAP
    (``scipy.stats.ttest_rel``) with a t-based 95% CI of the mean difference (row −
    reference). The p-values of one table (dataset, protocol, convention: every bits
    column) are Holm-corrected together; a row is *tied* with the reference when
    ``p_holm`` >= 0.05. Fewer than 2 paired seeds: no test (p-value and ``tied`` empty).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from qbench.core.errors import QbenchError, choice_error
from qbench.report.rows import (
    HEADLINE,
    Run,
    available_metrics,
    convention_card,
    headline_value,
    is_tuned,
    label_order,
    metric_value,
    sort_rows,
)

ALPHA = 0.05
CONFIDENCE = 0.95
EXACT_TOLERANCE = 1e-12
"""MAP differences this close are equal (rounding of values in [0, 1])."""
SECTION_KEYS = ["dataset", "protocol", "convention"]
GROUP_KEYS = ["dataset", "protocol", "convention", "label", "bits"]
CELL_KEYS = ["dataset", "protocol", "convention", "bits"]
# curve name -> its x key in a result's ``curves``
CURVES = {"pr": "recall", "pr11": "recall", "top_r": "r"}


@dataclass
class Aggregate:
    """Seed-level data and per-group statistics; what tables, claims and plots read.

    runs: one row per run (group keys, seed, method, variant, tuned, family, path, split
        checksum, headline_source, one column per metric).
    summary: long table, one row per (group, metric): mean, std (ddof=1), n, ci_low,
        ci_high (95% t interval of the mean; NaN for n = 1), seeds.
    curves: (dataset, protocol, convention, label, bits) -> {curve name: (x, mean y)}, the
        mean curve over the group's seeds for each of :data:`CURVES` some run recorded.
    metrics: names of the numeric metrics present in at least one run.
    conventions: convention key -> :func:`qbench.report.rows.convention_card`.
    """

    runs: pd.DataFrame
    summary: pd.DataFrame
    curves: dict = field(default_factory=dict)
    metrics: list[str] = field(default_factory=list)
    conventions: dict[str, dict] = field(default_factory=dict)


@dataclass
class PairedTest:
    """A paired comparison over seeds: mean difference a − b, its 95% t CI, p, n pairs."""

    diff: float
    ci_low: float
    ci_high: float
    p_value: float
    n: int


@dataclass
class Significance:
    """Result of :func:`significance`: the table and the baseline label (None: best row).

    table columns: dataset, protocol, convention, bits, label, family, tuned, mean (headline
    MAP over the row's seeds), n (the row's seeds), reference, diff, ci_low, ci_high
    (95% CI of diff), p_value, p_holm, n_seeds (paired seeds), seeds_paired, tied.
    """

    table: pd.DataFrame
    baseline: str | None = None

    @property
    def reference_name(self) -> str:
        """The reference column's name in outputs: "best", or "baseline" with a baseline."""
        return "best" if self.baseline is None else "baseline"


# -- intervals and tests -------------------------------------------------------------------

def t_quantile(n: int, confidence: float = CONFIDENCE) -> float:
    """Two-sided t quantile with n − 1 degrees of freedom (NaN for n < 2)."""
    from scipy.stats import t

    return float(t.ppf(0.5 + confidence / 2, n - 1)) if n >= 2 else math.nan


def t_interval(values, confidence: float = CONFIDENCE) -> tuple[float, float, float]:
    """(mean, low, high): t confidence interval of the mean of seed-level values."""
    x = np.asarray(values, dtype=float)
    mean = float(x.mean()) if len(x) else math.nan
    if len(x) < 2:
        return mean, math.nan, math.nan
    half = t_quantile(len(x), confidence) * float(x.std(ddof=1)) / math.sqrt(len(x))
    return mean, mean - half, mean + half


def paired_t_test(a, b, confidence: float = CONFIDENCE) -> PairedTest:
    """Two-sided paired t-test of a against b (aligned seed-level values).

    Identical inputs give p = 1; a constant non-zero difference gives p = 0 (constant:
    spread within :data:`EXACT_TOLERANCE`, float rounding of equal MAP steps). With fewer
    than 2 pairs only the difference is returned (CI and p NaN).
    """
    from scipy.stats import ttest_rel

    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    mean, low, high = t_interval(a - b, confidence)
    if len(a) < 2:
        return PairedTest(mean, low, high, math.nan, len(a))
    d = a - b
    if np.ptp(d) <= EXACT_TOLERANCE:  # a constant difference: t is 0/0 or ±inf
        p = 1.0 if abs(mean) <= EXACT_TOLERANCE else 0.0
    else:
        p = float(ttest_rel(a, b).pvalue)
    return PairedTest(mean, low, high, p, len(a))


def holm(p_values) -> np.ndarray:
    """Holm step-down adjusted p-values; NaN entries stay NaN and do not count in m."""
    p = np.asarray(p_values, dtype=float)
    out = np.full(p.shape, np.nan)
    valid = np.flatnonzero(~np.isnan(p))
    order = valid[np.argsort(p[valid], kind="stable")]
    m = len(order)
    running = 0.0
    for i, idx in enumerate(order):
        running = max(running, min(1.0, (m - i) * p[idx]))
        out[idx] = running
    return out


def paired_values(a: pd.DataFrame, b: pd.DataFrame, column: str = HEADLINE
                  ) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Aligned ``column`` values of two rows' runs over the seeds both have.

    ``a`` and ``b``: rows of :attr:`Aggregate.runs`. A seed pairs only when both runs have
    the same split checksum (the same queries and database). Returns (a, b, seeds).
    """
    left = a.set_index("seed")
    right = b.set_index("seed")
    seeds = [int(s) for s in sorted(set(left.index) & set(right.index))
             if left.at[s, "checksum"] == right.at[s, "checksum"]
             and pd.notna(left.at[s, column]) and pd.notna(right.at[s, column])]
    return (left.loc[seeds, column].to_numpy(dtype=float),
            right.loc[seeds, column].to_numpy(dtype=float), seeds)


# -- aggregation ---------------------------------------------------------------------------

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
    if x.ndim != 1 or x.shape != y.shape:
        return None
    keep = np.isfinite(x) & np.isfinite(y)
    return x[keep], y[keep]


def aggregate(runs: list[Run]) -> Aggregate:
    """Group runs (labels and conventions set) and compute mean, std, n and 95% CIs.

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
        conventions.setdefault(run.convention, convention_card(res, run.rule or None))
        row = dict(zip(GROUP_KEYS, key[:-1]), seed=res["seed"], method=res["method"],
                   variant=run.variant, tuned=is_tuned(res), family=res["family"],
                   path=str(run.path), checksum=res["splits"].get("checksum"),
                   headline_source=headline_value(res)[1])
        row.update({m: metric_value(res, m) for m in metrics})
        rows.append(row)
    table = pd.DataFrame(rows)
    ids = GROUP_KEYS + ["method", "variant", "tuned", "family"]
    long = table.melt(id_vars=ids + ["seed"], value_vars=metrics, var_name="metric",
                      value_name="value").dropna(subset=["value"])
    long["value"] = pd.to_numeric(long["value"])
    grouped = long.groupby(ids + ["metric"], sort=False)
    summary = grouped["value"].agg(["mean", "std", "count"]).rename(columns={"count": "n"})
    summary["seeds"] = grouped["seed"].agg(lambda s: ",".join(str(v) for v in sorted(s)))
    summary = summary.reset_index()
    summary["n"] = summary["n"].astype(int)
    half = summary["n"].map(t_quantile) * summary["std"] / np.sqrt(summary["n"])
    summary.insert(summary.columns.get_loc("n") + 1, "ci_low", summary["mean"] - half)
    summary.insert(summary.columns.get_loc("ci_low") + 1, "ci_high", summary["mean"] + half)

    by_group: dict[tuple, list[dict]] = {}
    for run in runs:
        res = run.result
        by_group.setdefault((res["dataset"], res["protocol"], run.convention, run.label,
                             res["bits"]), []).append(res)
    curves: dict[tuple, dict] = {}
    for key, results in by_group.items():
        entry = {}
        for name, x_key in CURVES.items():
            parts = [c for c in (_curve(r, name, x_key) for r in results) if c is not None]
            mean = _mean_curve(parts) if parts else None
            if mean is not None:
                entry[name] = mean
        curves[key] = entry
    return Aggregate(table, summary, curves, metrics, conventions)


# -- significance --------------------------------------------------------------------------

def significance(agg: Aggregate, baseline: str | None = None,
                 alpha: float = ALPHA) -> Significance:
    """Every row against the reference row of its cell (module docstring).

    baseline: a row label (``two-stage-pq``, ``dqn (tuned)``) to test every row against,
    instead of the best row; cells without it are left out. An unknown label, or a row that
    shares fewer than 2 seeds with the baseline, raises :class:`QbenchError`.
    """
    runs = agg.runs
    if baseline is not None and baseline not in set(runs["label"]):
        raise choice_error("--baseline row", baseline, set(runs["label"]))
    rows = []
    for cell, part in runs.groupby(CELL_KEYS, sort=True):
        by_label = {lab: g for lab, g in part.groupby("label", sort=False)}
        means = {lab: float(g[HEADLINE].mean()) for lab, g in by_label.items()}
        if baseline is not None:
            if baseline not in by_label:
                continue
            reference = baseline
        else:
            candidates = [lab for lab, g in by_label.items() if g["family"].iloc[0] != "float"]
            reference = max(sorted(candidates or list(means), key=label_order),
                            key=lambda lab: means[lab])
        for lab, g in by_label.items():
            a, b, seeds = paired_values(g, by_label[reference])
            if lab == reference:
                test = PairedTest(0.0, math.nan, math.nan, math.nan, len(seeds))
            else:
                test = paired_t_test(a, b)
                if baseline is not None and test.n < 2:
                    raise QbenchError(
                        f"significance needs >= 2 seeds: {lab} and the baseline {baseline} "
                        f"share {test.n} seed(s) on {cell[0]}/{cell[1]} at {cell[3]} bits")
            rows.append({
                **dict(zip(CELL_KEYS, cell)), "label": lab, "family": g["family"].iloc[0],
                "tuned": bool(g["tuned"].iloc[0]), "mean": means[lab], "n": len(g),
                "reference": reference, "diff": test.diff, "ci_low": test.ci_low,
                "ci_high": test.ci_high, "p_value": test.p_value, "n_seeds": test.n,
                "seeds_paired": ",".join(map(str, seeds)), "is_reference": lab == reference,
            })
    columns = CELL_KEYS + ["label", "family", "tuned", "mean", "n", "reference", "diff",
                           "ci_low", "ci_high", "p_value", "p_holm", "n_seeds", "seeds_paired",
                           "tied"]
    if not rows:
        return Significance(pd.DataFrame(columns=columns), baseline)
    table = pd.DataFrame(rows)
    table["p_holm"] = np.nan
    for _, idx in table.groupby(SECTION_KEYS, sort=False).groups.items():
        table.loc[idx, "p_holm"] = holm(table.loc[idx, "p_value"].to_numpy(dtype=float))
    table["tied"] = pd.Series(
        [True if ref else (None if math.isnan(p) else bool(p >= alpha))
         for ref, p in zip(table["is_reference"], table["p_holm"])],
        index=table.index, dtype=object)
    table = sort_rows(table[columns], CELL_KEYS + ["label"])
    return Significance(table, baseline)
