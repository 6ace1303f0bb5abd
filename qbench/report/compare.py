"""``qbench compare``: load result files, then write tables, claims and plots.

``compare`` reads only result files (:mod:`qbench.run.results`); it never runs a method. It
orchestrates modules that import one way::

    rows (load, label, conventions) <- stats (mean, std, CI, paired t, Holm)
        <- claims, tables (<- paper), plots

Outputs (``out`` given)
    ``<out>/tables/``: ``summary.{txt,md,csv,tex}`` (the chosen metric, default the
    headline MAP; the CSV is long/tidy, one row per group), ``summary-map_all.*`` (the
    index-order MAP@all, for comparison with papers; when another metric is chosen),
    ``significance.{md,csv}``, ``claims.{md,csv}``, ``all_metrics.csv`` (mean, std, n and
    CI of every numeric metric, cost and timing), ``paper_vs_qbench.md`` (the DQN slides'
    CIFAR-10 MAP beside this suite's matching rows, with the protocol differences);
    ``<out>/plots/``: the figures of :mod:`qbench.report.plots`.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from qbench.core.atomic import write_all_atomic
from qbench.core.errors import QbenchError, choice_error
from qbench.report.claims import CLAIMS, evaluate_claims
from qbench.report.load import load_runs
from qbench.report.paper import paper_markdown
from qbench.report.rows import HEADLINE, Run, assign_conventions, assign_labels
from qbench.report.stats import Aggregate, Significance, aggregate, significance
from qbench.report.tables import (
    FORMAT_SUFFIX,
    FORMATS,
    claims_markdown,
    render,
    significance_csv,
    significance_markdown,
)

PAPER_METRIC = "map_all"


def _comment(lines: list[str], fmt: str) -> str:
    prefix = {"csv": "# ", "latex": "% "}.get(fmt, "")
    return "".join(f"{prefix}{line}\n" for line in lines)


def prepare(paths: Iterable[Path], baseline: str | None = None
            ) -> tuple[list[Run], Aggregate, Significance, list[str]]:
    """Load, label, aggregate and test: (runs, aggregate, significance, notes).

    baseline: row label every row is tested against (default: the best row of each cell).
    """
    runs, notes = load_runs(paths)
    if not runs:
        raise QbenchError("no result files to compare" + (f" ({'; '.join(notes)})"
                                                          if notes else ""))
    assign_labels(runs)
    runs = assign_conventions(runs)
    agg = aggregate(runs)
    return runs, agg, significance(agg, baseline), notes


def write_outputs(out: Path, runs: list[Run], agg: Aggregate, sig: Significance,
                  metric: str) -> list[Path]:
    """Write tables to ``<out>/tables`` and figures to ``<out>/plots``; return the paths.

    The tables are written all or none (:func:`qbench.core.atomic.write_all_atomic`).
    """
    from qbench.report.plots import write_plots

    tables = Path(out) / "tables"
    try:
        tables.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise QbenchError(f"--out {out}: cannot create {tables}: {exc.strerror or exc}") from None
    files = {f"summary.{FORMAT_SUFFIX[f]}": render(agg, sig, metric, f) for f in FORMATS}
    if metric != PAPER_METRIC:
        files.update({f"summary-{PAPER_METRIC}.{FORMAT_SUFFIX[f]}":
                      render(agg, sig, PAPER_METRIC, f) for f in FORMATS})
    claims = evaluate_claims(agg)
    files["significance.md"] = significance_markdown(sig, agg.conventions)
    files["significance.csv"] = significance_csv(sig)
    files["claims.md"] = claims_markdown(claims, CLAIMS, agg.conventions)
    files["claims.csv"] = claims.to_csv(index=False)
    files["all_metrics.csv"] = agg.summary.to_csv(index=False)
    files["paper_vs_qbench.md"] = paper_markdown(runs, agg)
    # all tables or none: a full disk leaves the earlier tables as they were
    written = write_all_atomic({tables / name: text.encode() for name, text in files.items()})
    written += write_plots(agg, Path(out) / "plots")
    return written


def run_compare(paths: list[Path], *, fmt: str = "table", out: Path | None = None,
                metric: str = HEADLINE, baseline: str | None = None) -> str:
    """Compare result files; return the summary table of ``metric`` in ``fmt``.

    fmt: "table" (aligned text), "md", "csv" (tidy, one row per group) or "latex".
    out: when given, also write tables (all formats), claims and plots under it.
    baseline: row label to test every row against instead of each column's best row.
    Notes (skipped failure records, files written) precede the table as comment lines.
    """
    if fmt not in FORMATS:
        raise choice_error("format", fmt, FORMATS)
    runs, agg, sig, notes = prepare(paths, baseline)
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
