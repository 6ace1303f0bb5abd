"""Figures made from aggregated results (:class:`qbench.report.stats.Aggregate`), never from runs.

For each (dataset, protocol, convention) up to seven figures, each as PNG and PDF, named
``<dataset>-<protocol>[-c<i>]-<figure>.{png,pdf}`` (``-c<i>`` only when one dataset and
protocol hold results of several conventions). MAP is the headline MAP (tie-aware MAP@all
where reported, else index-order MAP@all); error bars are 95% t confidence intervals over
seeds (none for a single seed).

- ``map_vs_bits``: MAP against bits;
- ``pr``: precision–recall curves, one panel per bits value, mean curve over seeds;
- ``pr11``: 11-point interpolated precision, one panel per bits value, mean over seeds;
- ``top_r``: precision@top-R curves, one panel per bits value, mean over seeds;
- ``retention_vs_bits``: MAP / MAP of the method's own float embedding, against bits;
- ``map_vs_bytes``: MAP against bytes per code (log scale);
- ``map_vs_qps``: MAP against queries per second (log scale).

A figure whose data no run recorded (e.g. ``pr11`` from older results) is not drawn; curves
of different lengths are averaged on a common grid (:mod:`qbench.report.stats`).

Every method keeps one colour and marker in all figures (:func:`method_style`); a variant
(``dqn[loss=ip]``) takes its method's colour and marker with its own dashed line style.
Rendering uses matplotlib's Agg backend through :class:`matplotlib.figure.Figure`, without
pyplot's global state.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

from matplotlib.figure import Figure  # noqa: E402 -- the backend is chosen first

from qbench.report.rows import HEADLINE, base_method, label_order  # noqa: E402
from qbench.report.stats import Aggregate  # noqa: E402

# method -> (colour, marker), fixed across every figure
METHOD_STYLES: dict[str, tuple[str, str]] = {
    "float": ("#000000", "*"),
    "sign": ("#7f7f7f", "v"),
    "itq": ("#bcbd22", "^"),
    "lsh": ("#8c564b", "<"),
    "pq": ("#9ecae1", "s"),
    "opq": ("#1f77b4", "D"),
    "two-stage-pq": ("#fdae6b", "p"),
    "two-stage-opq": ("#ff7f0e", "P"),
    "dqn": ("#d62728", "o"),
    "ssm": ("#2ca02c", "h"),
    "gsl": ("#9467bd", "X"),
    "householder": ("#17becf", ">"),
}
FALLBACK_COLOURS = ("#e377c2", "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173",
                    "#3182bd", "#31a354", "#756bb1", "#e6550d", "#636363", "#a55194")
FALLBACK_MARKERS = ("o", "s", "^", "v", "D", "p", "h", "X", "P", "<", ">", "*")
VARIANT_LINESTYLES = ("--", "-.", ":", (0, (5, 1, 1, 1)))
FORMATS = ("png", "pdf")
MAP_AXIS = "MAP@all (tie-aware where reported)"


def method_style(label: str) -> dict:
    """Colour, marker and line style of a row label, the same in every figure.

    Known methods have fixed entries in :data:`METHOD_STYLES`; others get a colour and
    marker from a CRC-32 of the name (stable across runs and machines).
    """
    base = base_method(label)
    if base in METHOD_STYLES:
        colour, marker = METHOD_STYLES[base]
    else:
        h = zlib.crc32(base.encode())
        colour = FALLBACK_COLOURS[h % len(FALLBACK_COLOURS)]
        marker = FALLBACK_MARKERS[(h >> 8) % len(FALLBACK_MARKERS)]
    linestyle = "-"
    if label != base:
        linestyle = VARIANT_LINESTYLES[zlib.crc32(label.encode()) % len(VARIANT_LINESTYLES)]
    return {"color": colour, "marker": marker, "linestyle": linestyle}


def _save(fig: Figure, folder: Path, stem: str) -> list[Path]:
    """Save as PNG and PDF."""
    paths = []
    for ext in FORMATS:
        path = folder / f"{stem}.{ext}"
        fig.savefig(path, dpi=120 if ext == "png" else None)
        paths.append(path)
    return paths


def _legend(fig: Figure, axes) -> None:
    """One legend for the figure, right of the axes, each label once."""
    handles: dict = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    if handles:
        fig.legend(list(handles.values()), list(handles), loc="outside right center",
                   fontsize="small", frameon=False)


def _metric_vs(part, y_metric: str, x_metric: str | None, title: str, ylabel: str,
               xlabel: str, logx: bool = False) -> Figure | None:
    """Lines of ``y_metric`` against bits (x_metric None) or against another metric."""
    ys = part[part["metric"] == y_metric]
    if ys.empty:
        return None
    fig = Figure(figsize=(7.4, 4.2), layout="constrained")
    ax = fig.add_subplot()
    drawn = False
    for label in sorted(ys["label"].unique(), key=label_order):
        rows = ys[ys["label"] == label].set_index("bits").sort_index()
        if x_metric is None:
            x = rows.index.to_numpy(dtype=float)
        else:
            xs = part[(part["metric"] == x_metric) & (part["label"] == label)]
            xs = xs.set_index("bits")["mean"]
            rows = rows[rows.index.isin(xs.index)]
            if rows.empty:
                continue
            x = xs.loc[rows.index].to_numpy(dtype=float)
            order = x.argsort(kind="stable")
            rows, x = rows.iloc[order], x[order]
        mean = rows["mean"].to_numpy(dtype=float)
        err = [(mean - rows["ci_low"]).fillna(0.0).to_numpy(dtype=float),
               (rows["ci_high"] - mean).fillna(0.0).to_numpy(dtype=float)]
        ax.errorbar(x, mean, yerr=err, label=label, capsize=3,
                    markersize=6, linewidth=1.4, **method_style(label))
        drawn = True
    if not drawn:
        return None
    if x_metric is None:
        ax.set_xticks(sorted(ys["bits"].unique()))
    if logx:
        ax.set_xscale("log")
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    _legend(fig, [ax])
    return fig


def _curve_panels(agg: Aggregate, key: tuple, labels: list[str], bits: list[int], curve: str,
                  title: str, xlabel: str) -> Figure | None:
    """One panel per bits value with the mean ``curve`` of every label."""
    have = [b for b in bits if any(curve in agg.curves.get(key + (lab, b), {})
                                   for lab in labels)]
    if not have:
        return None
    fig = Figure(figsize=(3.4 * len(have) + 1.6, 3.8), layout="constrained")
    axes = fig.subplots(1, len(have), squeeze=False, sharey=True)[0]
    for ax, b in zip(axes, have):
        for label in labels:
            entry = agg.curves.get(key + (label, b), {})
            if curve not in entry:
                continue
            x, y = entry[curve]
            style = method_style(label)
            ax.plot(x, y, label=label, color=style["color"], linestyle=style["linestyle"],
                    marker=style["marker"], markevery=max(1, len(x) // 8), markersize=4,
                    linewidth=1.2)
        ax.set_title(f"{b} bits")
        ax.set_xlabel(xlabel)
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel("precision")
    fig.suptitle(title)
    _legend(fig, axes)
    return fig


def write_plots(agg: Aggregate, folder: Path) -> list[Path]:
    """Draw every figure of every (dataset, protocol, convention) into ``folder``.

    Returns the written paths (PNG and PDF of each figure). Figures without data (e.g. no
    run recorded queries/s) are not written.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    summary = agg.summary
    for (dataset, protocol), dp in summary.groupby(["dataset", "protocol"], sort=True):
        conventions = sorted(dp["convention"].unique())
        for i, conv in enumerate(conventions, start=1):
            part = dp[dp["convention"] == conv]
            stem = f"{dataset}-{protocol}" + (f"-c{i}" if len(conventions) > 1 else "")
            where = f"{dataset} / {protocol}" + (f" (convention {i})"
                                                 if len(conventions) > 1 else "")
            labels = sorted(part["label"].unique(), key=label_order)
            bits = sorted(int(b) for b in part["bits"].unique())
            key = (dataset, protocol, conv)
            figures = {
                "map_vs_bits": _metric_vs(part, HEADLINE, None, f"MAP — {where}", MAP_AXIS,
                                          "bits"),
                "pr": _curve_panels(agg, key, labels, bits, "pr",
                                    f"precision–recall — {where}", "recall"),
                "pr11": _curve_panels(agg, key, labels, bits, "pr11",
                                      f"11-point interpolated precision — {where}",
                                      "recall"),
                "top_r": _curve_panels(agg, key, labels, bits, "top_r",
                                       f"precision@top-R — {where}", "R (items retrieved)"),
                "retention_vs_bits": _metric_vs(part, "retention", None,
                                                f"retention — {where}",
                                                "MAP / float MAP", "bits"),
                "map_vs_bytes": _metric_vs(part, HEADLINE, "bytes_per_code",
                                           f"MAP vs code size — {where}", MAP_AXIS,
                                           "bytes per code", logx=True),
                "map_vs_qps": _metric_vs(part, HEADLINE, "queries_per_s",
                                         f"MAP vs speed — {where}", MAP_AXIS,
                                         "queries per second", logx=True),
            }
            for name, fig in figures.items():
                if fig is not None:
                    written += _save(fig, folder, f"{stem}-{name}")
    return written

