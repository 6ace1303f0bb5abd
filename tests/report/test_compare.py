"""qbench compare: grouping, mean ± std, conventions, significance, formats, files, plots."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from qbench.core.errors import QbenchError
from qbench.report.compare import prepare, run_compare
from qbench.report.paper import paper_markdown
from qbench.report.rows import Run, assign_labels, convention_key
from qbench.run.results import SCHEMA_VERSION, result_filename, write_json_atomic

N_QUERY = 40
FAMILIES = {"float": "float", "sign": "binary", "itq": "binary", "lsh": "binary",
            "householder": "binary"}
CRITERIA = {"float": "cosine MAP of the float embedding", "pq": "MAP by ADC of the PQ codes",
            "binary": "tie-aware Hamming MAP of the binary codes"}


def metric_card(**changes) -> dict:
    card = {
        "relevance": "same class", "distance": "adc", "order": "ascending distance",
        "k": "all", "k_effective": 1697, "normaliser": "rk",
        "zero_hit_policy": "a query with no relevant item scores 0",
        "tie_policy": "database index", "curves": "mean over queries",
        "n_query": N_QUERY, "n_db": 1697,
    }
    card.update(changes)
    return card


def make_result(method: str = "pq", bits: int = 12, seed: int = 0, *, map_all: float = 0.5,
                per_query_ap: list[float] | None = None, dataset: str = "digits",
                protocol: str = "standard", params: dict | None = None,
                card: dict | None = None, family: str | None = None,
                checksum: str | None = None, tie_aware: float | None = None,
                rule: str | None = "best", criterion: str | None = None,
                tuning: dict | None = None, retention: float | None = None,
                split_seed: int = 0) -> dict:
    """A valid result dict with the given headline numbers (everything else plausible).

    rule None: no ``selection`` object (a result older than the field).
    """
    family = family or FAMILIES.get(method, "pq")
    rng = np.random.default_rng(seed * 1000 + bits)
    if per_query_ap is None:
        per_query_ap = list(np.full(N_QUERY, map_all))
    recall = np.linspace(0.02, 1.0, 50) + rng.uniform(0, 0.005, 50)
    bytes_per_code = 256.0 if family == "float" else bits / 8
    metrics = {"map_all": map_all, "map_at_k": map_all, "float_map_all": 0.8,
               "retention": map_all / 0.8 if retention is None else retention,
               "bytes_per_code": bytes_per_code}
    if tie_aware is not None:
        metrics.update(tie_aware_map_all=tie_aware, tie_aware_map_all_optimistic=tie_aware,
                       tie_aware_map_all_pessimistic=tie_aware)
    result = {
        "schema_version": SCHEMA_VERSION, "method": method, "family": family,
        "description": f"{method} (fabricated)", "dataset": dataset, "dataset_params": {},
        "protocol": protocol, "bits": bits, "seed": seed, "split_seed": split_seed,
        "code_version": "0123456789abcdef",
        "params": dict(params if params is not None else {}),
        "method_info": {"training": {"encoder": "mlp", "epochs": 60}},
        "splits": {"protocol": protocol, "seed": split_seed,
                   "checksum": checksum or f"splits-{dataset}-{protocol}-{split_seed}",
                   "n_query": N_QUERY, "n_train": 500, "n_val": 100, "n_database": 1697},
        "metrics": metrics,
        "curves": {
            "pr": {"rank": list(range(34, 1700, 34)), "recall": recall.tolist(),
                   "precision": (map_all * (1.2 - recall)).tolist()},
            "top_r": {"r": list(range(100, 1001, 100)),
                      "precision": list(np.linspace(map_all + 0.1, map_all, 10))},
        },
        "per_query_ap": list(per_query_ap),
        "timings": {"train_s": 1.0, "encode_s": 0.1, "search_s": 0.01, "total_s": 1.2},
        "cost": {"bytes_per_code": bytes_per_code, "database_bytes": bytes_per_code * 1697,
                 "queries_per_s": 1000.0 * bits},
        "metric_card": card if card is not None else metric_card(),
        "tuning": tuning,
        "env": {"python": "3"}, "created": "2024-01-01T00:00:00+00:00",
    }
    if rule is not None:
        result["selection"] = {
            "rule": rule, "criterion": criterion or CRITERIA.get(family, CRITERIA["pq"]),
            "n_val_queries": 100, "n_pool": 1000, "pool_overlaps_train": False,
            "epochs": [1, 2, 3], "values": [0.3, 0.4, 0.35], "chosen_epoch": 2}
    return result


def write(folder: Path, result: dict, name: str | None = None) -> Path:
    name = name or result_filename(result["dataset"], result["protocol"], result["method"],
                                   result["bits"], result["seed"])
    return write_json_atomic(folder / name, result)


MAPS = {  # method -> bits -> per-seed MAP
    "pq": {12: [0.40, 0.42, 0.44], 24: [0.50, 0.53, 0.56]},
    "dqn": {12: [0.60, 0.61, 0.65], 24: [0.70, 0.70, 0.73]},
}


@pytest.fixture()
def grid_results(tmp_path: Path) -> list[Path]:
    """pq and dqn at 12 and 24 bits, seeds 0-2, with the MAPs of MAPS."""
    folder = tmp_path / "results"
    paths = []
    for method, by_bits in MAPS.items():
        for bits, maps in by_bits.items():
            for seed, value in enumerate(maps):
                ap = np.clip(value + np.linspace(-0.2, 0.2, N_QUERY), 0, 1)
                ap += value - ap.mean()
                paths.append(write(folder, make_result(method, bits, seed, map_all=value,
                                                       per_query_ap=ap.tolist())))
    return paths


def read_csv_output(text: str) -> pd.DataFrame:
    return pd.read_csv(io.StringIO(text), comment="#")


def markdown_rows(text: str) -> list[list[str]]:
    rows = []
    for line in text.splitlines():
        if line.startswith("|") and not set(line) <= set("|:- "):
            rows.append([c.strip() for c in line.strip("|").split("|")])
    return rows


T_975_2 = 4.302652729749464  # scipy.stats.t.ppf(0.975, 2): the 95% t quantile, 2 dof


def test_groups_by_method_and_bits_with_mean_std_ci_and_n(grid_results):
    df = read_csv_output(run_compare(grid_results, fmt="csv"))
    assert len(df) == 4
    for method, by_bits in MAPS.items():
        for bits, maps in by_bits.items():
            row = df[(df["method"] == method) & (df["bits"] == bits)].iloc[0]
            mean, std = np.mean(maps), np.std(maps, ddof=1)
            assert row["mean"] == pytest.approx(mean, abs=1e-12)
            assert row["std"] == pytest.approx(std, abs=1e-12)
            half = T_975_2 * std / np.sqrt(3)
            assert row["ci_low"] == pytest.approx(mean - half, abs=1e-12)
            assert row["ci_high"] == pytest.approx(mean + half, abs=1e-12)
            assert row["n"] == 3
            assert row["seeds"] == "0,1,2"
            assert row["metric"] == "headline_map"


def test_markdown_table_has_methods_as_rows_and_bits_as_columns(grid_results):
    rows = markdown_rows(run_compare(grid_results, fmt="md"))
    assert rows[0] == ["method", "12 bits", "24 bits"]
    body = {r[0]: r[1:] for r in rows[1:]}
    assert list(body) == ["pq", "dqn"]
    mean, std = np.mean(MAPS["pq"][12]), np.std(MAPS["pq"][12], ddof=1)
    half = T_975_2 * std / np.sqrt(3)
    assert body["pq"][0] == f"{mean:.3f} ± {std:.3f} [{mean - half:.3f}, {mean + half:.3f}]"
    assert body["dqn"][0].startswith("**") and body["dqn"][0].endswith("**")


def test_latex_and_text_formats(grid_results):
    latex = run_compare(grid_results, fmt="latex")
    assert r"\begin{tabular}{lrr}" in latex and r"\end{tabular}" in latex
    assert r"$\mathbf{0.620 \pm 0.026\ [0.554,\,0.686]}$" in latex
    text = run_compare(grid_results, fmt="table")
    lines = text.splitlines()
    header = next(line for line in lines if line.startswith("method"))
    assert header.split() == ["method", "12", "bits", "24", "bits"]
    pq_line = next(line for line in lines if line.startswith("pq "))
    assert "0.420 ± 0.020 [0.370, 0.470]" in pq_line
    assert "paired t-test" in text and "Holm" in text


def test_bad_format_and_unknown_metric_are_errors(grid_results):
    with pytest.raises(QbenchError, match="format 'xlsx'.*csv, latex, md, table"):
        run_compare(grid_results, fmt="xlsx")
    with pytest.raises(QbenchError, match="unknown metric 'mapp'.*map_all.*retention"):
        run_compare(grid_results, metric="mapp")


def test_other_metric_tabulated_without_significance(grid_results):
    df = read_csv_output(run_compare(grid_results, fmt="csv", metric="retention"))
    row = df[(df["method"] == "pq") & (df["bits"] == 12)].iloc[0]
    assert row["mean"] == pytest.approx(np.mean(MAPS["pq"][12]) / 0.8)
    assert df["tied"].isna().all() and df["p_holm"].isna().all()


def test_headline_is_tie_aware_map_where_reported(tmp_path):
    paths = [write(tmp_path, make_result("sign", 12, s, map_all=0.40 + 0.01 * s,
                                         tie_aware=0.30 + 0.01 * s)) for s in range(3)]
    paths += [write(tmp_path, make_result("pq", 12, s, map_all=0.5 + 0.01 * s))
              for s in range(3)]
    headline = read_csv_output(run_compare(paths, fmt="csv")).set_index("method")["mean"]
    assert headline["sign"] == pytest.approx(0.31) and headline["pq"] == pytest.approx(0.51)
    index_order = read_csv_output(run_compare(paths, fmt="csv", metric="map_all"))
    assert index_order.set_index("method").loc["sign", "mean"] == pytest.approx(0.41)
    md = run_compare(paths, fmt="md")
    assert "No tie-aware MAP recorded, index-order MAP@all shown: pq." in md


def test_out_writes_every_table_and_plot(grid_results, tmp_path):
    out = tmp_path / "report"
    text = run_compare(grid_results, fmt="md", out=out)
    assert f"tables to {out / 'tables'}" in text
    tables = out / "tables"
    for name in ("summary.md", "summary.csv", "summary.tex", "summary.txt", "summary-map_all.md",
                 "summary-map_all.csv", "significance.md", "significance.csv", "claims.md",
                 "claims.csv", "all_metrics.csv", "paper_vs_qbench.md"):
        assert (tables / name).stat().st_size > 0, name
    assert read_csv_output((tables / "summary.csv").read_text())["n"].tolist() == [3] * 4
    assert r"\begin{tabular}" in (tables / "summary.tex").read_text()
    for figure in ("map_vs_bits", "pr", "top_r", "retention_vs_bits", "map_vs_bytes",
                   "map_vs_qps"):
        for ext in ("png", "pdf"):
            path = out / "plots" / f"digits-standard-{figure}.{ext}"
            assert path.is_file() and path.stat().st_size > 0, path
    assert (out / "plots" / "digits-standard-map_vs_bits.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "plots" / "digits-standard-pr.pdf").read_bytes()[:4] == b"%PDF"


def test_plots_survive_new_absent_and_uneven_curves(tmp_path, monkeypatch):
    from qbench.report.plots import write_plots

    monkeypatch.setattr("qbench.report.plots.FORMATS", ("png",))
    paths = []
    for seed in range(2):
        res = make_result("pq", 12, seed, map_all=0.5)
        n = 30 + 20 * seed  # a PR curve from rank 1 with a different number of points per seed
        res["curves"]["pr"] = {"rank": list(range(1, n + 1)),
                               "recall": np.linspace(0.001, 1, n).tolist(),
                               "precision": np.linspace(1, 0.3, n).tolist()}
        res["curves"]["pr11"] = {"recall": np.linspace(0, 1, 11).tolist(),
                                 "precision": np.linspace(1, 0.2, 11).tolist()}
        paths.append(write(tmp_path, res))
        bare = make_result("sign", 12, seed, map_all=0.4)
        bare["curves"] = {}
        paths.append(write(tmp_path, bare))
    _, agg, _, _ = prepare(paths)
    written = {p.name for p in write_plots(agg, tmp_path / "plots")}
    assert {"digits-standard-pr.png", "digits-standard-pr11.png",
            "digits-standard-map_vs_bits.png"} <= written
    assert "digits-standard-top_r.png" in written  # pq still has top_r


def test_paper_table_places_published_numbers_beside_ours_with_a_warning(grid_results):
    runs, agg, _, _ = prepare(grid_results)
    text = paper_markdown(runs, agg)
    assert "| DQN (slides, CIFAR-10) | 0.554 | 0.558 | 0.564 | 0.580 |" in text
    assert "| DQN_2+ (slides, CIFAR-10) | 0.528 | 0.534 | 0.538 | 0.541 |" in text
    assert "| DQN_ip (slides, CIFAR-10) | 0.506 | 0.513 | 0.519 | 0.529 |" in text
    dqn = next(line for line in text.splitlines() if line.startswith("| qbench `dqn` "))
    assert "0.620 ± 0.026" in dqn and dqn.endswith("| – | – |")
    assert "not comparable" in text and "AlexNet" in text and "encoder mlp" in text
    assert "database of 1,697 items" in text and "59,000" in text


def test_malformed_json_names_the_file(grid_results, tmp_path):
    bad = tmp_path / "results" / "broken.json"
    bad.write_text('{"schema_version": 1, "method": ')
    with pytest.raises(QbenchError, match=r"broken\.json: not valid JSON"):
        run_compare(grid_results + [bad])


def test_other_schema_version_names_the_file(grid_results, tmp_path):
    old = make_result("pq", 12, 5)
    old["schema_version"] = SCHEMA_VERSION + 1
    path = write(tmp_path, old, "future.json")
    with pytest.raises(QbenchError, match=rf"future\.json: schema_version {SCHEMA_VERSION + 1}"):
        run_compare(grid_results + [path])
    partial = make_result("pq", 12, 6)
    del partial["metrics"]
    path = write(tmp_path, partial, "partial.json")
    with pytest.raises(QbenchError, match=r"partial\.json: missing key 'metrics'"):
        run_compare([path])


def test_malformed_tuning_names_the_file(tmp_path):
    path = write(tmp_path, make_result("pq", 12, 0, tuning="yes"), "odd.json")  # type: ignore
    with pytest.raises(QbenchError, match=r"odd\.json: tuning is neither an object nor null"):
        run_compare([path])


def test_failure_records_are_skipped_with_a_note(grid_results, tmp_path):
    record = tmp_path / "digits-standard-ssm-12b-seed0.failed.json"
    record.write_text(json.dumps({"kind": "qbench-grid-failure", "message": "boom"}))
    text = run_compare(grid_results + [record], fmt="csv")
    assert text.startswith(f"# skipped {record}: a grid failure record")
    assert len(read_csv_output(text)) == 4
    with pytest.raises(QbenchError, match="no result files"):
        run_compare([record])


def test_different_metric_conventions_are_never_averaged(tmp_path):
    paths = [write(tmp_path, make_result("pq", 12, s, map_all=0.4)) for s in range(2)]
    other = metric_card(normaliser="min_k_r", k=100)
    paths += [write(tmp_path, make_result("pq", 12, s, map_all=0.9, card=other),
                    f"other-{s}.json") for s in range(2)]
    df = read_csv_output(run_compare(paths, fmt="csv"))
    assert sorted(df["mean"]) == [pytest.approx(0.4), pytest.approx(0.9)]
    assert df["n"].tolist() == [2, 2]
    assert df["convention"].nunique() == 2
    md = run_compare(paths, fmt="md")
    assert md.count("| method | 12 bits |") == 2
    assert "normaliser min_k_r" in md and "normaliser rk" in md


def test_selection_rules_are_never_averaged_or_tested_together(tmp_path):
    paths = []
    for rule, value, folder in (("best", 0.6, "b"), ("last", 0.4, "l"), (None, 0.2, "o")):
        paths += [write(tmp_path / folder, make_result("dqn", 12, s, map_all=value + 0.01 * s,
                                                       rule=rule)) for s in range(2)]
    df = read_csv_output(run_compare(paths, fmt="csv"))
    assert sorted(df["mean"].round(6)) == [0.205, 0.405, 0.605]
    assert df["convention"].nunique() == 3
    assert df["tied"].all()  # each table holds one row: its own reference
    md = run_compare(paths, fmt="md")
    assert md.count("| method | 12 bits |") == 3
    for rule in ("selection rule best", "selection rule last", "selection rule not recorded"):
        assert rule in md


def test_selection_criteria_of_one_method_get_separate_rows(tmp_path):
    paths = [write(tmp_path / c, make_result("dqn", 12, s, criterion=f"{c} MAP"))
             for c in ("cosine", "ADC") for s in range(2)]
    rows = {r[0] for r in markdown_rows(run_compare(paths, fmt="md"))[1:]}
    assert rows == {"dqn (selected by cosine)", "dqn (selected by ADC)"}


def test_tuned_and_untuned_rows_are_never_mixed(tmp_path):
    tuning = {"trials": 12, "best_value": 0.7, "study": "digits-standard-dqn-12b-seed0",
              "best_params": {"lam": 0.03}}
    paths = [write(tmp_path / "d", make_result("dqn", 12, s, map_all=0.5)) for s in range(2)]
    paths += [write(tmp_path / "t", make_result("dqn", 12, s, map_all=0.7,
                                                params={"lam": 0.03}, tuning=tuning))
              for s in range(2)]
    df = read_csv_output(run_compare(paths, fmt="csv")).set_index("method")
    assert list(df.index) == ["dqn", "dqn (tuned)"]
    assert df.loc["dqn", "mean"] == pytest.approx(0.5)
    assert df.loc["dqn (tuned)", "mean"] == pytest.approx(0.7)
    assert bool(df.loc["dqn (tuned)", "tuned"]) and not bool(df.loc["dqn", "tuned"])


def test_distance_and_tie_aware_notes_do_not_split_conventions():
    pq = make_result("pq")
    binary = make_result("sign", card=metric_card(
        distance="hamming", curves="tie-aware expected precision",
        hamming_radius_curves="set metrics within radius",
        tie_policy="database index; tie-aware expectation reported"))
    assert convention_key(pq) == convention_key(binary)
    assert convention_key(pq) != convention_key(make_result("pq", card=metric_card(
        tie_policy="random")))


def test_two_files_of_the_same_run_are_rejected(tmp_path):
    a = write(tmp_path, make_result("pq", 12, 0), "a.json")
    b = write(tmp_path, make_result("pq", 12, 0), "b.json")
    with pytest.raises(QbenchError, match=r"a\.json and .*b\.json are both runs of pq"):
        run_compare([a, b])
    assert "0.500" in run_compare([a, a])  # the same file twice counts once


def test_variant_rows_are_labelled_by_non_default_params(tmp_path):
    defaults = {"dqn": {"loss": "cosine", "epochs": 0, "lam": 1.0}}
    runs = []
    for loss in ("cosine", "ip"):
        for seed in range(2):
            res = make_result("dqn", 12, seed, params={"loss": loss, "epochs": 15, "lam": 1.0})
            runs.append(Run(Path(f"{loss}{seed}.json"), res))
    assign_labels(runs, defaults, {})
    assert [r.label for r in runs] == ["dqn", "dqn", "dqn[loss=ip]", "dqn[loss=ip]"]
    # a budget parameter that varies between runs is part of the label
    runs[0].result["params"]["epochs"] = 30
    assign_labels(runs, defaults, {})
    assert runs[0].label == "dqn[epochs=30]" and runs[1].label == "dqn[epochs=15]"
    runs[0].result["params"]["epochs"] = 15
    # where candidates start, set per grid for every method: labelled only when it varies
    defaults["dqn"]["select_from"] = 0.0
    for run in runs:
        run.result["params"]["select_from"] = 0.5
    assign_labels(runs, defaults, {})
    assert [r.label for r in runs] == ["dqn", "dqn", "dqn[loss=ip]", "dqn[loss=ip]"]
    runs[1].result["params"]["select_from"] = 0.0
    assign_labels(runs, defaults, {})
    assert runs[0].label == "dqn[select_from=0.5]" and runs[1].label == "dqn"
    for run in runs:
        del run.result["params"]["select_from"]
    del defaults["dqn"]["select_from"]
    # a tuned run: the tuned parameters stay out of the label, the variant's stay in
    runs[0].result["params"]["epochs"] = 15
    for run in runs[2:]:
        run.result["params"]["lam"] = 0.05
        run.result["tuning"] = {"trials": 12, "best_value": 0.6, "study": "s"}
    runs[3].result["tuning"]["best_params"] = {"lam": 0.05}
    assign_labels(runs, defaults, tunable={"dqn": {"lam"}})
    assert [r.label for r in runs[2:]] == ["dqn[loss=ip] (tuned)"] * 2
    assert runs[2].variant == "dqn[loss=ip]"
    assign_labels(runs, defaults, tunable={})  # best_params recorded: left out as well
    assert [r.label for r in runs[2:]] == ["dqn[lam=0.05,loss=ip] (tuned)",
                                           "dqn[loss=ip] (tuned)"]
    # methods unknown to the registry: the most common value is the reference
    toy = [Run(Path(f"t{i}.json"), make_result("toy", 12, i, params={"alpha": a}))
           for i, a in enumerate((0.5, 0.5, 0.1))]
    assign_labels(toy, {}, {})
    assert [r.label for r in toy] == ["toy", "toy", "toy[alpha=0.1]"]


def test_registered_method_defaults_label_the_ip_variant(tmp_path):
    paths = [write(tmp_path, make_result("dqn", 12, s, params={"loss": loss}),
                   f"{loss}-{s}.json") for loss in ("cosine", "ip") for s in range(2)]
    rows = {r[0] for r in markdown_rows(run_compare(paths, fmt="md"))[1:]}
    assert rows == {"dqn", "dqn[loss=ip]"}


def test_cells_with_fewer_seeds_show_n_and_say_no_test(tmp_path):
    paths = [write(tmp_path, make_result("pq", 12, s, map_all=0.4 + 0.01 * s)) for s in range(3)]
    paths += [write(tmp_path, make_result("dqn", 12, s, map_all=0.5 + 0.01 * s))
              for s in range(3)]
    paths.append(write(tmp_path, make_result("pq", 24, 0, map_all=0.5)))
    paths.append(write(tmp_path, make_result("dqn", 24, 0, map_all=0.6)))
    md = run_compare(paths, fmt="md")
    rows = {r[0]: r[1:] for r in markdown_rows(md)}
    assert rows["pq"][1] == "0.500 (n=1)" and rows["dqn"][1] == "**0.600 (n=1)**"
    assert "needs >= 2 seeds paired with the reference): pq at 24 bits" in md
    _, _, sig, _ = prepare(paths)
    pq24 = sig.table.set_index(["label", "bits"]).loc[("pq", 24)]
    assert pd.isna(pq24["p_value"]) and pq24["tied"] is None and pq24["n_seeds"] == 1


def test_fixed_colour_per_method():
    from qbench.report.plots import METHOD_STYLES, method_style

    assert method_style("dqn")["color"] == METHOD_STYLES["dqn"][0]
    assert method_style("dqn[loss=ip]")["color"] == METHOD_STYLES["dqn"][0]
    assert method_style("dqn (tuned)")["color"] == METHOD_STYLES["dqn"][0]
    assert method_style("dqn[loss=ip]")["linestyle"] != "-"
    assert method_style("mystery") == method_style("mystery")
    assert len({c for c, _ in METHOD_STYLES.values()}) == len(METHOD_STYLES)


def test_a_run_that_selected_nothing_joins_every_rules_table(tmp_path):
    paths = []
    for rule in ("best", "last"):
        paths += [write(tmp_path / rule, make_result("dqn", 12, s, map_all=0.6, rule=rule))
                  for s in range(2)]
    for s in range(2):
        raw = make_result("pq", 12, s, map_all=0.4)
        raw["selection"] = None  # nothing trained, nothing selected
        paths.append(write(tmp_path / "raw", raw))
    df = read_csv_output(run_compare(paths, fmt="csv"))
    assert df["convention"].nunique() == 2
    assert sorted(df["method"]) == ["dqn", "dqn", "pq", "pq"]
    assert set(df.loc[df["method"] == "pq", "n"]) == {2}


@pytest.mark.parametrize("key, value", [("dataset", "../../../x"), ("protocol", "a/b"),
                                        ("method", "..")])
def test_a_name_that_would_leave_the_output_folder_is_refused(tmp_path, key, value):
    result = make_result("pq", 12, 0)
    result[key] = value
    path = write_json_atomic(tmp_path / "crafted.json", result)
    with pytest.raises(QbenchError, match=rf"crafted\.json: {key} '.*' is not allowed; "
                                          r"allowed: letters, digits"):
        run_compare([path], out=tmp_path / "out")
    assert not (tmp_path / "out").exists() and not (tmp_path.parent / "x").exists()


def test_an_unwritable_table_is_a_one_line_error_and_leaves_no_partial_file(tmp_path,
                                                                           monkeypatch):
    paths = [write(tmp_path, make_result("pq", 12, s)) for s in range(2)]
    import qbench.core.atomic as atomic

    real = atomic.os.replace

    def full_disk(src, dst):
        if str(dst).endswith("all_metrics.csv"):
            raise OSError(28, "No space left on device")
        return real(src, dst)

    monkeypatch.setattr(atomic.os, "replace", full_disk)
    with pytest.raises(QbenchError, match="cannot write .*all_metrics.csv: No space left"):
        run_compare(paths, out=tmp_path / "out")
    tables = tmp_path / "out" / "tables"
    assert not (tables / "all_metrics.csv").exists()
    assert not [p for p in tables.iterdir() if p.name.startswith(".")]  # no temp file left


@pytest.mark.parametrize("change, message", [
    (lambda r: r["metrics"].update(map_at_k="high"), r"metrics\.map_at_k is not a number"),
    (lambda r: r["curves"].update(pr={"precision": [0.5, "x"]}),
     r"curves\.pr\.precision\[1\] is not a number"),
    (lambda r: r["params"].update(lam={"nested": 1}), r"params\.lam is a dict; allowed"),
    (lambda r: r["metric_card"].clear(), r"metric_card lacks relevance, k, normaliser"),
])
def test_a_result_with_values_no_table_can_hold_is_refused(tmp_path, change, message):
    result = make_result("pq", 12, 0)
    change(result)
    path = write_json_atomic(tmp_path / "odd.json", result)
    with pytest.raises(QbenchError, match=message):
        run_compare([path], out=tmp_path / "out")
    assert not (tmp_path / "out").exists()
