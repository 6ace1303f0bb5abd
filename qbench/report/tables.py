"""Tables from aggregated results: summary tables, significance and claims, as text,
Markdown, LaTeX and CSV (the paper comparison is :mod:`qbench.report.paper`).

Reads :class:`qbench.report.stats.Aggregate`, :class:`qbench.report.stats.Significance`
and the claims frame of :func:`qbench.report.claims.evaluate_claims`; computes no statistic itself.

Summary tables
    One table per (dataset, protocol, convention): rows are row labels, columns bits,
    cells ``mean ± std [ci_low, ci_high]`` over seeds (95% t interval; ``(n=k)`` when a
    cell has another number of seeds than most). On the headline MAP table the reference
    row of each column (the best quantized row, or ``--baseline``) and the rows tied with
    it are marked: bold in Markdown and LaTeX, ``*`` in text. Formats: aligned text,
    Markdown, LaTeX and a tidy CSV (one row per group, significance columns included).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from qbench.report.claims import Claim
from qbench.report.rows import HEADLINE, format_param, label_order, sort_rows
from qbench.report.stats import ALPHA, SECTION_KEYS, Aggregate, Significance

FORMATS = ("table", "md", "csv", "latex")
FORMAT_SUFFIX = {"table": "txt", "md": "md", "csv": "csv", "latex": "tex"}
METRIC_TITLES = {
    HEADLINE: "MAP@all (tie-aware where reported, else index order)",
    "map_all": "MAP@all (ties in database-index order)", "map_at_k": "MAP@K",
    "float_map_all": "MAP@all of the float embedding",
    "retention": "retention (MAP / float MAP)", "tie_aware_map_all": "tie-aware MAP@all",
    "p_at_hamming2": "precision within Hamming radius 2", "bytes_per_code": "bytes per code",
    "queries_per_s": "queries per second",
}
TEST_TEXT = ("two-sided paired t-test (scipy.stats.ttest_rel) on seed-level MAP, runs paired "
             "by training seed on the same split, Holm-corrected across the table")


@dataclass
class Section:
    """One table: rows are labels, columns are bits; cells are (text, marked).

    title: the heading, then lines above the table (convention, what marks mean); footer:
    notes below it.
    """

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


def format_cell(mean: float, std: float, n: int, common_n: int, ci: tuple[float, float]
                | None = None) -> str:
    """'mean ± std [low, high]' (CI when given and n > 1), '(n=k)' when k != common_n."""
    text = format_number(mean)
    if n > 1 and std == std:
        text += f" ± {format_number(std, ref=mean)}"
        if ci is not None and ci[0] == ci[0]:
            text += f" [{format_number(ci[0], ref=mean)}, {format_number(ci[1], ref=mean)}]"
    if n != common_n:
        text += f" (n={n})"
    return text


def convention_text(card: dict) -> str:
    """The convention (metric card without distance, selection rule) as 'key value, ...'."""
    return ", ".join(f"{k.replace('_', ' ')} {format_param(v)}"
                     for k, v in sorted(card.items())) or "(empty)"


def _marks_text(sig: Significance) -> str:
    if sig.baseline is None:
        what = ("the best quantized row of each column (highest mean; float is never the "
                "best)")
    else:
        what = f"the baseline {sig.baseline}"
    return (f"marked (bold; * in text): {what} and the rows tied with it: {TEST_TEXT}, "
            f"tied when p_holm >= {ALPHA}")


def _is_true(value) -> bool:
    """True for a True ``tied`` entry; False for False and for an untested (None/NaN) one."""
    return isinstance(value, (bool, np.bool_)) and bool(value)


def _untested(tests: pd.DataFrame) -> list[str]:
    return [f"{r.label} at {r.bits} bits" for r in tests.itertuples(index=False)
            if not _is_true(r.tied) and r.p_value != r.p_value]


def build_sections(agg: Aggregate, sig: Significance, metric: str) -> list[Section]:
    """One section per (dataset, protocol, convention) holding ``metric``."""
    data = agg.summary[agg.summary["metric"] == metric]
    marks = metric == HEADLINE
    conv_ids: dict[tuple, list[str]] = {}
    sections = []
    for (dataset, protocol, conv), part in data.groupby(SECTION_KEYS, sort=True):
        conv_ids.setdefault((dataset, protocol), []).append(conv)
        tests = sig.table[(sig.table["dataset"] == dataset) & (sig.table["protocol"] == protocol)
                          & (sig.table["convention"] == conv)]
        tied = {(r.bits, r.label): _is_true(r.tied) for r in tests.itertuples(index=False)}
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
                text = format_cell(r["mean"], r["std"], int(r["n"]), common_n,
                                   (r["ci_low"], r["ci_high"]))
                cells.append((text, marks and tied.get((b, label), False)))
            rows.append((label, cells))
        n_conv = len(data[(data["dataset"] == dataset) & (data["protocol"] == protocol)]
                     ["convention"].unique())
        title = [f"{dataset} / {protocol}: {METRIC_TITLES.get(metric, metric)}, mean ± std "
                 f"[95% CI, t with n-1 dof] over training seeds (n = {common_n} per cell "
                 "unless marked)",
                 "convention" + (f" {len(conv_ids[(dataset, protocol)])} of {n_conv}"
                                 if n_conv > 1 else "")
                 + f": {convention_text(agg.conventions[conv])}"]
        footer = []
        if marks:
            title.append(_marks_text(sig))
            untested = _untested(tests)
            if untested:
                footer.append("no significance test (needs >= 2 seeds paired with the "
                              "reference): " + ", ".join(untested))
            runs = agg.runs[(agg.runs["dataset"] == dataset)
                            & (agg.runs["protocol"] == protocol) & (agg.runs["convention"] == conv)]
            index_order = sorted(runs.loc[runs["headline_source"] == "index order", "label"]
                                 .unique(), key=label_order)
            if index_order:
                footer.append("no tie-aware MAP recorded, index-order MAP@all shown: "
                              + ", ".join(index_order))
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
                                + [line(r) for r in body] + s.footer))
    return "\n\n".join(blocks)


def render_markdown(sections: list[Section]) -> str:
    """GitHub Markdown tables; marked cells in bold."""
    blocks = []
    for s in sections:
        lines = [f"**{s.title[0]}**", ""]
        for line in s.title[1:]:
            lines += [line[0].upper() + line[1:], ""]
        lines.append("| " + " | ".join(s.columns) + " |")
        lines.append("|" + "|".join([":---"] + ["---:"] * (len(s.columns) - 1)) + "|")
        for label, cells in s.rows:
            texts = [f"**{t}**" if m else t for t, m in cells]
            lines.append("| " + " | ".join([label.replace("|", r"\|")] + texts) + " |")
        for note in s.footer:
            lines += ["", note[0].upper() + note[1:] + "."]
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
                body = (t.replace("±", r"\pm").replace("(n=", r"\ (n=")
                        .replace(" [", r"\ [").replace(", ", r",\,"))
                texts.append(f"$\\mathbf{{{body}}}$" if m else f"${body}$")
            lines.append(" & ".join([_latex_escape(label)] + texts) + r" \\")
        lines += [r"\hline", r"\end{tabular}"] + [f"% {f}" for f in s.footer]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"


def summary_frame(agg: Aggregate, sig: Significance, metric: str) -> pd.DataFrame:
    """The tidy table of one metric: one row per group; significance columns on the headline.

    Columns: dataset, protocol, method (row label), variant, base_method, family, tuned,
    bits, metric, mean, std, n, ci_low, ci_high, seeds, best (or baseline), diff,
    diff_ci_low, diff_ci_high, p_value, p_holm, tied, convention.
    """
    ref = sig.reference_name
    data = agg.summary[agg.summary["metric"] == metric].copy()
    data = data.rename(columns={"method": "base_method"})
    tests = ["reference", "diff", "diff_ci_low", "diff_ci_high", "p_value", "p_holm", "tied"]
    if metric == HEADLINE and len(sig.table):
        keep = sig.table.rename(columns={"ci_low": "diff_ci_low", "ci_high": "diff_ci_high"})
        data = data.merge(keep[["dataset", "protocol", "convention", "bits", "label"] + tests],
                          on=["dataset", "protocol", "convention", "bits", "label"], how="left")
    else:
        data = data.assign(**{c: None for c in tests})
    data = sort_rows(data, SECTION_KEYS + ["label", "bits"])
    cols = (["dataset", "protocol", "label", "variant", "base_method", "family", "tuned", "bits",
             "metric", "mean", "std", "n", "ci_low", "ci_high", "seeds"] + tests
            + ["convention"])
    return (data[cols].rename(columns={"label": "method", "reference": ref})
            .reset_index(drop=True))


def render(agg: Aggregate, sig: Significance, metric: str, fmt: str) -> str:
    """The summary table of ``metric`` in format ``fmt``."""
    if fmt == "csv":
        return summary_frame(agg, sig, metric).to_csv(index=False)
    sections = build_sections(agg, sig, metric)
    if fmt == "md":
        return render_markdown(sections)
    if fmt == "latex":
        return render_latex(sections)
    return render_text(sections) + "\n"


def _num(value: float, fmt: str) -> str:
    return "" if value is None or value != value else format(value, fmt)


def significance_csv(sig: Significance) -> str:
    """One row per compared row (the reference itself included, marked tied, untested)."""
    return sig.table.rename(columns={"reference": sig.reference_name}).to_csv(index=False)


def significance_markdown(sig: Significance, conventions: dict[str, dict]) -> str:
    """The significance table in Markdown, one block per (dataset, protocol, convention).

    conventions: :attr:`qbench.report.stats.Aggregate.conventions`, for each block's header.
    """
    if sig.baseline is None:
        against = ("the best row of each column: the quantized row with the highest mean "
                   "headline MAP (`float` is tested but never the best)")
    else:
        against = f"the baseline `{sig.baseline}`"
    lines = [f"# Paired significance against the {sig.reference_name} row",
             "",
             f"Every row against {against}. Test: {TEST_TEXT}. Headline MAP: tie-aware "
             "MAP@all where the result reports it, else MAP@all. diff = row − reference, mean "
             "over paired seeds, with its 95% t confidence interval (n − 1 dof). tied: p_holm "
             f">= {ALPHA}. Fewer than 2 paired seeds: no test. No per-query test and no "
             "bootstrap: the seed is the unit of replication.", ""]
    table = sig.table
    if table.empty:
        return "\n".join(lines + ["No rows to compare."]) + "\n"
    for (dataset, protocol, conv), part in table.groupby(SECTION_KEYS, sort=True):
        lines += [f"## {dataset} / {protocol}", "",
                  f"convention: {convention_text(conventions[conv])}", "",
                  f"| bits | method | mean | n | {sig.reference_name} | diff | 95% CI | p | "
                  "p (Holm) | paired seeds | tied |",
                  "|---:|:---|---:|---:|:---|---:|:---|---:|---:|:---|:---|"]
        for r in part.itertuples(index=False):
            ci = (f"[{r.ci_low:+.4f}, {r.ci_high:+.4f}]" if r.ci_low == r.ci_low else "")
            tied = ("reference" if r.label == r.reference else "yes" if _is_true(r.tied)
                    else "untested" if r.p_value != r.p_value else "no")
            lines.append(f"| {r.bits} | {r.label} | {r.mean:.4f} | {r.n} | {r.reference} | "
                         f"{_num(r.diff, '+.4f')} | {ci} | {_num(r.p_value, '.3g')} | "
                         f"{_num(r.p_holm, '.3g')} | {r.seeds_paired} | {tied} |")
        lines.append("")
    return "\n".join(lines)


def claims_markdown(frame: pd.DataFrame, claims: tuple[Claim, ...],
                    conventions: dict[str, dict]) -> str:
    """The claims table (:func:`qbench.report.claims.evaluate_claims`) in Markdown.

    conventions: :attr:`qbench.report.stats.Aggregate.conventions`, for each block's header.
    """
    lines = ["# Claims of the seed papers, checked", "",
             "diff = a − b of the headline MAP (tie-aware MAP@all where reported), mean over "
             "seeds paired by training seed; 95% t confidence interval from the paired "
             "differences (n − 1 dof). holds: the interval lies entirely on the claimed side "
             "of 0; does not hold: entirely on the other side; undecided: otherwise, or fewer "
             "than 2 paired seeds. compared: both with default parameters, both tuned, or one "
             "tuned where the other has no tuned runs. two-stage-pq retention: MAP / float MAP "
             "of the two-stage baseline at that bit length, mean over seeds (how much room "
             "there was to win).", ""]
    for claim in claims:
        lines.append(f"- {claim.text}: {claim.source}")
    lines.append("")
    if frame.empty:
        return "\n".join(lines + ["No claim has runs of both its sides."]) + "\n"
    for (dataset, protocol, conv), part in frame.groupby(SECTION_KEYS, sort=True):
        lines += [f"## {dataset} / {protocol}", "",
                  f"convention: {convention_text(conventions[conv])}", "",
                  "| claim | bits | compared | n | mean a | mean b | diff | 95% CI | verdict | "
                  "two-stage-pq retention |",
                  "|:---|---:|:---|---:|---:|---:|---:|:---|:---|---:|"]
        for r in part.itertuples(index=False):
            ci = f"[{r.ci_low:+.4f}, {r.ci_high:+.4f}]" if r.ci_low == r.ci_low else ""
            lines.append(f"| {r.claim} | {r.bits} | {r.compared} | {r.n_seeds} | "
                         f"{_num(r.mean_a, '.4f')} | {_num(r.mean_b, '.4f')} | "
                         f"{_num(r.diff, '+.4f')} | {ci} | {r.verdict} | "
                         f"{_num(r.baseline_retention, '.3f')} |")
        lines.append("")
    missing = [c.text for c in claims if c.text not in set(frame["claim"])]
    if missing:
        lines += ["Not evaluated (no cell holds runs of both sides): " + "; ".join(missing)
                  + ".", ""]
    return "\n".join(lines)
