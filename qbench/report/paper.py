"""The paper comparison: the DQN slides' published CIFAR-10 MAP beside this suite's matching
rows (:func:`paper_markdown`, ``paper_vs_qbench.md`` of ``qbench compare``), with the
protocol differences spelled out.

Reads :class:`qbench.report.stats.Aggregate` and the runs of :mod:`qbench.report.rows`;
formats cells as :mod:`qbench.report.tables` does.
"""

from __future__ import annotations

from qbench.report.rows import Run
from qbench.report.stats import SECTION_KEYS, Aggregate
from qbench.report.tables import convention_text, format_cell

# SPEC §8: the DQN slides' MAP on CIFAR-10 (AlexNet), by bits
PAPER_BITS = (12, 24, 32, 48)
PAPER_CIFAR10 = {
    "DQN": ("dqn", (0.554, 0.558, 0.564, 0.580)),
    "DQN_2+": ("two-stage-opq", (0.528, 0.534, 0.538, 0.541)),
    "DQN_ip": ("dqn[loss=ip]", (0.506, 0.513, 0.519, 0.529)),
}


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
    """The DQN slides' CIFAR-10 MAP beside this suite's matching rows, per dataset/protocol.

    qbench's side is index-order MAP@all, the number the papers' code computes.
    """
    lines = ["# DQN slides (CIFAR-10) vs qbench", "",
             "Published MAP from the DQN slides (SPEC §8) beside qbench's index-order MAP@all "
             "(mean ± std over seeds) for the matching methods: DQN = `dqn`, DQN_2+ = "
             "`two-stage-opq`, DQN_ip = `dqn[loss=ip]`.", ""]
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
                  f"MAP@all with convention {convention_text(agg.conventions[conv])}.",
                  ""]
    if data.empty:
        lines.append("No qbench results with map_all.")
    return "\n".join(lines)

