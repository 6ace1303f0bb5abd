"""Seed-level statistics: t intervals, paired t-tests, Holm, the reference row, --baseline."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from qbench.core.errors import QbenchError
from qbench.report.compare import prepare, run_compare
from qbench.report.stats import holm, paired_t_test, t_interval
from tests.report.test_compare import N_QUERY, make_result, write

T_975 = {2: 4.302652729749464, 4: 2.7764451051977987}  # scipy.stats.t.ppf(0.975, dof)


def write_maps(folder: Path, maps: dict[str, list[float]], bits: int = 12) -> list[Path]:
    """One result per (method, seed) with the given seed-level MAPs."""
    return [write(folder, make_result(m, bits, s, map_all=v))
            for m, values in maps.items() for s, v in enumerate(values)]


def test_t_interval_matches_a_hand_computation():
    values = [0.40, 0.42, 0.44]
    mean, low, high = t_interval(values)
    half = T_975[2] * 0.02 / math.sqrt(3)
    assert mean == pytest.approx(0.42) and low == pytest.approx(0.42 - half)
    assert high == pytest.approx(0.42 + half)
    assert all(math.isnan(v) for v in t_interval([0.5])[1:])


def test_paired_t_test_matches_scipy_and_a_hand_ci():
    from scipy.stats import ttest_rel

    a = np.array([0.51, 0.532, 0.489, 0.521, 0.50])
    b = np.array([0.50, 0.52, 0.48, 0.51, 0.49])
    test = paired_t_test(a, b)
    d = a - b
    half = T_975[4] * d.std(ddof=1) / math.sqrt(5)
    assert test.n == 5 and test.diff == pytest.approx(d.mean())
    assert (test.ci_low, test.ci_high) == pytest.approx((d.mean() - half, d.mean() + half))
    assert test.p_value == pytest.approx(ttest_rel(a, b).pvalue)
    assert paired_t_test(a, a).p_value == 1.0
    assert math.isnan(paired_t_test(a[:1], b[:1]).p_value)


def test_holm_matches_a_hand_computation():
    adjusted = holm([0.01, 0.04, 0.03, np.nan])
    # sorted 0.01, 0.03, 0.04 with m = 3: 3*0.01, max(that, 2*0.03), max(that, 1*0.04)
    assert adjusted[:3] == pytest.approx([0.03, 0.06, 0.06])
    assert math.isnan(adjusted[3])
    assert holm([0.6, 0.5]) == pytest.approx([1.0, 1.0])


def test_gain_on_every_query_of_two_seeds_lost_in_the_third_is_not_significant(tmp_path):
    from scipy.stats import wilcoxon

    rng = np.random.default_rng(3)
    paths, pooled = [], []
    for seed, sign in enumerate((1, 1, -1)):
        b = rng.uniform(0.3, 0.7, N_QUERY)
        a = b + sign * rng.uniform(0.02, 0.04, N_QUERY)  # a beats b on every query, or loses
        pooled.append(a - b)
        for method, ap in (("dqn", a), ("pq", b)):
            paths.append(write(tmp_path, make_result(method, 12, seed, map_all=float(ap.mean()),
                                                     per_query_ap=ap.tolist())))
    assert wilcoxon(np.concatenate(pooled)).pvalue < 0.01  # the query-pooled test's trap
    _, _, sig, _ = prepare(paths)
    row = sig.table.set_index("label").loc["pq"]
    assert row["reference"] == "dqn" and row["n_seeds"] == 3
    assert row["p_value"] > 0.3 and row["tied"]
    assert row["ci_low"] < 0 < row["ci_high"]


def test_small_consistent_gain_over_five_seeds_is_significant(tmp_path):
    base = [0.50, 0.52, 0.48, 0.51, 0.49]
    gain = [0.010, 0.012, 0.009, 0.011, 0.010]
    paths = write_maps(tmp_path, {"pq": base, "dqn": [b + g for b, g in zip(base, gain)]})
    _, _, sig, _ = prepare(paths)
    row = sig.table.set_index("label").loc["pq"]
    d = -np.array(gain)
    half = T_975[4] * d.std(ddof=1) / math.sqrt(5)
    assert row["diff"] == pytest.approx(d.mean())
    assert (row["ci_low"], row["ci_high"]) == pytest.approx((d.mean() - half, d.mean() + half))
    assert row["p_holm"] < 0.001 and row["tied"] is False


def test_holm_corrects_across_every_column_of_a_table(tmp_path):
    maps = {"pq": [0.50, 0.53, 0.49], "sign": [0.55, 0.54, 0.58], "dqn": [0.60, 0.61, 0.62]}
    paths = write_maps(tmp_path, maps, bits=12) + write_maps(tmp_path, maps, bits=24)
    _, _, sig, _ = prepare(paths)
    tested = sig.table.dropna(subset=["p_value"])
    assert len(tested) == 4
    assert tested["p_holm"].to_numpy() == pytest.approx(holm(tested["p_value"].to_numpy()))
    assert (tested["p_holm"] > tested["p_value"]).all()


def test_float_is_compared_but_never_the_best(tmp_path):
    paths = write_maps(tmp_path, {"float": [0.9, 0.91, 0.92], "pq": [0.5, 0.52, 0.51]})
    _, _, sig, _ = prepare(paths)
    by = sig.table.set_index("label")
    assert set(by["reference"]) == {"pq"} and by.loc["float", "diff"] > 0.3


def test_baseline_tests_every_row_against_the_named_row(tmp_path):
    maps = {"pq": [0.50, 0.52, 0.51], "dqn": [0.60, 0.61, 0.63], "ssm": [0.51, 0.52, 0.50]}
    paths = write_maps(tmp_path, maps)
    _, _, sig, _ = prepare(paths, baseline="pq")
    by = sig.table.set_index("label")
    assert set(by["reference"]) == {"pq"} and bool(by.loc["pq", "tied"])
    assert by.loc["dqn", "diff"] == pytest.approx(np.mean(maps["dqn"]) - np.mean(maps["pq"]))
    assert not by.loc["dqn", "tied"] and by.loc["ssm", "tied"]
    summary = pd.read_csv(io.StringIO(run_compare(paths, fmt="csv", baseline="pq")))
    assert set(summary["baseline"]) == {"pq"} and "best" not in summary
    with pytest.raises(QbenchError, match="unknown --baseline row 'opq'; allowed: dqn, pq, ssm"):
        prepare(paths, baseline="opq")


def test_baseline_with_one_seed_is_a_one_line_error(tmp_path):
    from qbench.cli import cli

    paths = write_maps(tmp_path, {"pq": [0.5], "dqn": [0.6]})
    with pytest.raises(QbenchError, match="significance needs >= 2 seeds: dqn and the baseline "
                                          "pq share 1 seed"):
        prepare(paths, baseline="pq")
    res = CliRunner().invoke(cli, ["compare", *map(str, paths), "--baseline", "pq"])
    assert res.exit_code == 2
    assert res.output.startswith("error: significance needs >= 2 seeds")
    assert res.output.count("\n") == 1
    # without --baseline one seed is not an error: the table says there was no test
    ok = CliRunner().invoke(cli, ["compare", *map(str, paths), "--format", "md"])
    assert ok.exit_code == 0 and "needs >= 2 seeds paired with the reference): pq" in ok.output


def test_runs_on_different_splits_are_not_paired(tmp_path):
    paths = [write(tmp_path, make_result("dqn", 12, s, map_all=0.6 + 0.01 * s))
             for s in range(3)]
    paths += [write(tmp_path, make_result("pq", 12, s, map_all=0.4, checksum=f"other{s}"))
              for s in range(3)]
    _, _, sig, _ = prepare(paths)
    row = sig.table.set_index("label").loc["pq"]
    assert row["n_seeds"] == 0 and pd.isna(row["p_value"]) and row["tied"] is None
