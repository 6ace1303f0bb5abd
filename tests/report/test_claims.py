"""The claims table: claims as data, paired differences, CIs, verdicts, like-with-like."""

from __future__ import annotations

import io
import math

import numpy as np
import pandas as pd
import pytest

from qbench.report.claims import CLAIMS, Claim, evaluate_claims, verdict
from qbench.report.compare import prepare, run_compare
from tests.report.test_compare import make_result, write

TUNING = {"trials": 12, "best_value": 0.7, "study": "s"}
T_975_2 = 4.302652729749464  # scipy.stats.t.ppf(0.975, 2)


def results(folder, method: str, maps: list[float], bits: int = 12, **kw) -> list:
    return [write(folder, make_result(method, bits, s, map_all=v, **kw),
                  f"{method}-{kw.get('params', {}).get('loss', '')}-{bits}-{s}"
                  f"{'-t' if kw.get('tuning') else ''}.json")
            for s, v in enumerate(maps)]


def claims_of(paths) -> pd.DataFrame:
    _, agg, _, _ = prepare(paths)
    return evaluate_claims(agg)


def test_verdict_follows_the_ci_and_the_expected_sign():
    assert verdict(0.01, 0.03, 1) == "holds"
    assert verdict(-0.03, -0.01, 1) == "does not hold"
    assert verdict(-0.01, 0.03, 1) == "undecided"
    assert verdict(-0.03, -0.01, -1) == "holds"
    assert verdict(math.nan, math.nan, 1) == "undecided"


def test_claims_are_data_covering_the_seed_papers():
    pairs = {(c.a, c.b) for c in CLAIMS if not c.best_of}
    assert pairs == {("dqn", "two-stage-opq"), ("dqn", "dqn[loss=ip]"), ("householder", "sign"),
                     ("ssm", "dqn"), ("gsl", "dqn"), ("dqn", "two-stage-pq"),
                     ("ssm", "two-stage-pq"), ("gsl", "two-stage-pq")}
    assert all(c.expected == 1 and c.source for c in CLAIMS)
    today = {c.a: c.best_of for c in CLAIMS if c.best_of}
    assert set(today) == {"dqn", "ssm", "gsl", "householder", "two-stage-opq"}
    assert set(today.values()) == {("csq", "greedyhash", "orthohash", "two-stage-rq",
                                    "two-stage-lsq")}


def test_a_seed_method_is_tested_against_the_best_of_todays_baselines_in_each_cell(tmp_path):
    """ssm vs the strongest of csq / greedyhash / orthohash at each bit length: greedyhash
    at 12 bits, orthohash at 24; a cell with none of them has no such row."""
    paths = []
    for bits, maps in ((12, {"greedyhash": 0.66, "orthohash": 0.62, "csq": 0.50}),
                       (24, {"greedyhash": 0.60, "orthohash": 0.72, "csq": 0.70}),
                       (32, {})):
        paths += results(tmp_path, "ssm", [0.70, 0.71, 0.69], bits)
        for method, value in maps.items():
            paths += results(tmp_path, method, [value, value + 0.01, value - 0.01], bits)
    frame = claims_of(paths)
    rows = frame[frame["claim"] == "ssm beats best of today's baselines"]
    rows = rows.set_index("bits")
    assert list(rows.index) == [12, 24]
    assert rows.at[12, "b"] == "greedyhash" and rows.at[24, "b"] == "orthohash"
    assert rows.at[12, "diff"] == pytest.approx(0.04) and rows.at[12, "verdict"] == "holds"
    assert rows.at[24, "diff"] == pytest.approx(-0.02)
    assert rows.at[24, "verdict"] == "does not hold"


def test_each_claim_gets_a_paired_difference_ci_and_verdict_per_bit_length(tmp_path):
    dqn = {12: [0.60, 0.62, 0.61], 24: [0.70, 0.69, 0.71]}
    opq = {12: [0.55, 0.56, 0.57], 24: [0.70, 0.71, 0.69]}
    paths = []
    for bits in (12, 24):
        paths += results(tmp_path, "dqn", dqn[bits], bits)
        paths += results(tmp_path, "two-stage-opq", opq[bits], bits)
        paths += results(tmp_path, "two-stage-pq", [0.5, 0.5, 0.5], bits,
                         retention=0.9 if bits == 12 else 0.99)
    frame = claims_of(paths)
    rows = frame[frame["b"] == "two-stage-opq"].set_index("bits")
    assert list(rows.index) == [12, 24]
    d = np.array(dqn[12]) - np.array(opq[12])
    half = T_975_2 * d.std(ddof=1) / math.sqrt(3)
    assert rows.loc[12, "diff"] == pytest.approx(d.mean())
    assert (rows.loc[12, "ci_low"], rows.loc[12, "ci_high"]) == pytest.approx(
        (d.mean() - half, d.mean() + half))
    assert rows.loc[12, "verdict"] == "holds" and rows.loc[24, "verdict"] == "undecided"
    assert rows.loc[12, "baseline_retention"] == pytest.approx(0.9)
    assert rows.loc[24, "baseline_retention"] == pytest.approx(0.99)
    assert set(frame["compared"]) == {"defaults"} and set(frame["n_seeds"]) == {3}
    pq_rows = frame[frame["b"] == "two-stage-pq"]
    assert set(pq_rows["a"]) == {"dqn"} and set(pq_rows["verdict"]) == {"holds"}


def test_a_claim_that_fails_and_the_ip_variant(tmp_path):
    paths = results(tmp_path, "householder", [0.40, 0.41, 0.42])
    paths += results(tmp_path, "sign", [0.45, 0.46, 0.47])
    paths += results(tmp_path, "dqn", [0.60, 0.61, 0.62], params={"loss": "cosine"})
    paths += results(tmp_path, "dqn", [0.55, 0.57, 0.56], params={"loss": "ip"})
    frame = claims_of(paths).set_index("claim")
    assert frame.loc["householder beats sign", "verdict"] == "does not hold"
    assert frame.loc["dqn beats dqn[loss=ip]", "verdict"] == "holds"
    assert math.isnan(frame.loc["householder beats sign", "baseline_retention"])


def test_claims_compare_like_with_like(tmp_path):
    paths = results(tmp_path, "dqn", [0.60, 0.61, 0.62])
    paths += results(tmp_path, "dqn", [0.70, 0.71, 0.72], tuning=TUNING)
    paths += results(tmp_path, "ssm", [0.61, 0.62, 0.63])
    paths += results(tmp_path, "ssm", [0.65, 0.66, 0.67], tuning=TUNING)
    paths += results(tmp_path, "two-stage-pq", [0.64, 0.65, 0.66])  # nothing tuned
    frame = claims_of(paths)
    ssm = frame[frame["claim"] == "ssm beats dqn"].set_index("compared")
    assert sorted(ssm.index) == ["defaults", "tuned"]  # never ssm tuned vs dqn defaults
    assert ssm.loc["tuned", "diff"] == pytest.approx(-0.05)
    assert ssm.loc["defaults", "diff"] == pytest.approx(0.01)
    dqn = frame[frame["claim"] == "dqn beats two-stage-pq"].set_index("compared")
    assert sorted(dqn.index) == ["a tuned, b defaults", "defaults"]
    assert dqn.loc["a tuned, b defaults", "diff"] == pytest.approx(0.06)


def test_one_seed_is_undecided(tmp_path):
    paths = results(tmp_path, "ssm", [0.7]) + results(tmp_path, "dqn", [0.6])
    row = claims_of(paths).iloc[0]
    assert row["n_seeds"] == 1 and row["verdict"] == "undecided"
    assert row["diff"] == pytest.approx(0.1) and math.isnan(row["ci_low"])


def test_compare_writes_the_claims_tables(tmp_path, monkeypatch):
    monkeypatch.setattr("qbench.report.plots.write_plots", lambda agg, folder: [])  # tables only
    paths = results(tmp_path, "gsl", [0.60, 0.62, 0.61]) + results(tmp_path, "dqn",
                                                                   [0.50, 0.53, 0.52])
    out = tmp_path / "report"
    run_compare(paths, out=out)
    csv = pd.read_csv(io.StringIO((out / "tables" / "claims.csv").read_text()))
    assert csv.loc[0, "claim"] == "gsl beats dqn" and csv.loc[0, "verdict"] == "holds"
    md = (out / "tables" / "claims.md").read_text()
    assert "| gsl beats dqn | 12 | defaults | 3 |" in md
    assert "Not evaluated" in md and "ssm beats dqn" in md


def test_custom_claims_with_an_expected_loss(tmp_path):
    paths = results(tmp_path, "pq", [0.40, 0.41, 0.42]) + results(tmp_path, "opq",
                                                                  [0.45, 0.47, 0.46])
    _, agg, _, _ = prepare(paths)
    frame = evaluate_claims(agg, (Claim("pq", "opq", -1, "test"),))
    assert frame.loc[0, "claim"] == "pq loses to opq" and frame.loc[0, "verdict"] == "holds"


def test_todays_best_is_chosen_among_runs_of_the_same_kind(tmp_path):
    """At defaults orthohash is the strongest, after tuning greedyhash: each pairing of
    ssm faces the best of its own kind."""
    paths = results(tmp_path, "ssm", [0.70, 0.71, 0.69])
    paths += results(tmp_path, "ssm", [0.74, 0.75, 0.73], tuning=TUNING)
    paths += results(tmp_path, "orthohash", [0.66, 0.67, 0.65])
    paths += results(tmp_path, "greedyhash", [0.60, 0.61, 0.59])
    paths += results(tmp_path, "greedyhash", [0.72, 0.73, 0.71], tuning=TUNING)
    frame = claims_of(paths)
    rows = frame[frame["claim"] == "ssm beats best of today's baselines"]
    rows = rows.set_index("compared")
    assert rows.at["defaults", "b"] == "orthohash"
    assert rows.at["defaults", "diff"] == pytest.approx(0.04)
    assert rows.at["tuned", "b"] == "greedyhash"
    assert rows.at["tuned", "diff"] == pytest.approx(0.02)
