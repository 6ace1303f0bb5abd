"""The seed papers' claims as data, checked on seed-level results.

A claim says that row ``a`` beats row ``b`` (``expected`` = +1) or loses to it (−1); ``a``
and ``b`` are row variants (method plus non-default parameters, e.g. ``dqn[loss=ip]``, see
:mod:`qbench.report.rows`). :func:`evaluate_claims` gives one row per claim and (dataset, protocol,
convention, bits) cell holding both, for each way they can be compared like with like:

- ``defaults``: both with default parameters; ``tuned``: both tuned;
- ``a tuned, b defaults`` (or the reverse) only when one side has no tuned run in the cell,
  as happens for a method with nothing to tune in an equal-budget grid.

Each row: the mean difference a − b of the headline MAP over seeds paired by training seed
(same split checksum), its 95% t confidence interval (n − 1 degrees of freedom, from the
paired differences), and a verdict: *holds* when the interval lies entirely on the
expected side of 0, *does not hold* when it lies entirely on the other side, *undecided*
otherwise or with fewer than 2 paired seeds. Beside it, the retention (MAP / float MAP) of
the two-stage-pq baseline in the same cell, mean over seeds: how much room quantization
left to win.

A claim against ``best_of`` (today's baselines, issue 21) compares ``a`` in each cell with
whichever of those variants has the highest mean headline MAP there (tuned runs first,
where the cell has any), so "ssm beats today's best" is tested against the strongest of
them at that bit length; the row's ``b`` names the one chosen.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from qbench.report.rows import HEADLINE
from qbench.report.stats import CELL_KEYS, Aggregate, paired_t_test, paired_values

BASELINE_VARIANT = "two-stage-pq"
HOLDS, FAILS, UNDECIDED = "holds", "does not hold", "undecided"
_JOINT = ("DQN, SSM and GSL seed documents (SPEC §3): learning the embedding jointly with "
          "its quantizer beats quantizing a separately trained embedding")
TODAYS_BASELINES = ("csq", "greedyhash", "orthohash", "two-stage-rq", "two-stage-lsq")
"""Today's baselines (issue 21): the deep-hashing methods CSQ, GreedyHash and OrthoHash,
and RQ / LSQ++ codes of the similarity embedding. Does a seed method still beat the best?"""
TODAYS_BEST = "best of today's baselines"
"""The opponent's name in such a claim; its row names which baseline was the best."""
_TODAY = ("issue 21: a seed method (2016-2017) is still worth using only if it beats the "
          "strongest of today's baselines (CSQ 2020, GreedyHash 2018, OrthoHash 2021; RQ "
          "and LSQ++ codes of a similarity embedding) at the same bits per item")


@dataclass(frozen=True)
class Claim:
    """Row variant ``a`` beats ``b`` (expected = +1) or loses to it (−1), per ``source``."""

    a: str
    b: str
    expected: int
    source: str
    best_of: tuple[str, ...] = ()  # b is the best of these in each cell; b names the set

    @property
    def text(self) -> str:
        """The claim in words, e.g. "dqn beats two-stage-opq"."""
        return f"{self.a} {'beats' if self.expected > 0 else 'loses to'} {self.b}"

    def opponent(self, runs: pd.DataFrame) -> str | None:
        """The row variant ``a`` is compared with in ``runs`` (one cell's runs of one kind,
        tuned or with defaults): ``b``, or the variant of ``best_of`` with the highest mean
        headline MAP there; None when none of them has a headline value there."""
        if not self.best_of:
            return self.b
        present = runs[runs["variant"].isin(self.best_of)]
        means = present.groupby("variant")[HEADLINE].mean().dropna()
        return str(means.sort_index().idxmax()) if len(means) else None


CLAIMS: tuple[Claim, ...] = (
    Claim("dqn", "two-stage-opq", 1,
          "DQN slides (SPEC §8): DQN 0.554-0.580 vs DQN_2+ (two-stage + OPQ) 0.528-0.541 "
          "MAP on CIFAR-10, at every bit length"),
    Claim("dqn", "dqn[loss=ip]", 1,
          "DQN slides (SPEC §8): cosine loss 0.554-0.580 vs inner-product loss (DQN_ip) "
          "0.506-0.529 MAP on CIFAR-10"),
    Claim("householder", "sign", 1,
          "H2Q (SPEC §8): about +1 to +2 MAP points over plain sign of the same embedding"),
    Claim("ssm", "dqn", 1, "SSM seed document (SPEC §3): momentum on network outputs "
                           "beats DQN's loss penalty"),
    Claim("gsl", "dqn", 1, "GSL seed document (SPEC §3): gradient snapping beats DQN's "
                           "loss penalty"),
    Claim("dqn", "two-stage-pq", 1, _JOINT),
    Claim("ssm", "two-stage-pq", 1, _JOINT),
    Claim("gsl", "two-stage-pq", 1, _JOINT),
    *(Claim(seed, TODAYS_BEST, 1, _TODAY, best_of=TODAYS_BASELINES)
      for seed in ("dqn", "ssm", "gsl", "householder", "two-stage-opq")),
)
"""The claims checked by ``qbench compare`` (SPEC §7, issue 11 §4, issue 21)."""

CLAIM_COLUMNS = ["claim", "a", "b", "dataset", "protocol", "bits", "compared", "n_seeds",
                 "mean_a", "mean_b", "diff", "ci_low", "ci_high", "verdict",
                 "baseline_retention", "source", "convention"]


def verdict(ci_low: float, ci_high: float, expected: int) -> str:
    """holds / does not hold / undecided from a CI of a − b and the expected sign."""
    if math.isnan(ci_low) or math.isnan(ci_high):
        return UNDECIDED
    low, high = sorted((expected * ci_low, expected * ci_high))
    if low > 0:
        return HOLDS
    if high < 0:
        return FAILS
    return UNDECIDED


def _pairings(runs: pd.DataFrame, a: str, b: str) -> list[tuple[str, pd.DataFrame,
                                                                 pd.DataFrame]]:
    """(compared, runs of a, runs of b) for each like-with-like comparison in one cell."""
    side = {(v, t): g for (v, t), g in runs.groupby(["variant", "tuned"], sort=False)}
    out = []
    for tuned, name in ((False, "defaults"), (True, "tuned")):
        if (a, tuned) in side and (b, tuned) in side:
            out.append((name, side[(a, tuned)], side[(b, tuned)]))
    for x, y, name in ((a, b, "a tuned, b defaults"), (b, a, "b tuned, a defaults")):
        if (x, True) in side and (y, False) in side and (y, True) not in side:
            pair = (side[(x, True)], side[(y, False)])
            out.append((name, *(pair if x == a else pair[::-1])))
    return out


def _claim_pairings(runs: pd.DataFrame, claim: Claim):
    """(compared, b's variant, runs of a, runs of b) of ``claim`` in one cell. Against
    ``best_of``, b is the strongest of them among the runs of the same kind (tuned, or
    defaults) as the side of a it meets, so each pairing faces its own best opponent."""
    if not claim.best_of:
        return [(c, claim.b, ra, rb) for c, ra, rb in _pairings(runs, claim.a, claim.b)]
    out, seen = [], set()
    for tuned in (False, True, None):  # None: whichever kind the cell has (mixed pairings)
        kind = runs if tuned is None else runs[runs["tuned"] == tuned]
        opponent = claim.opponent(kind)
        if opponent is None:
            continue
        for compared, ra, rb in _pairings(runs, claim.a, opponent):
            mixed = compared not in ("defaults", "tuned")
            if (compared == ("tuned" if tuned else "defaults") if tuned is not None
                    else mixed) and compared not in seen:
                seen.add(compared)
                out.append((compared, opponent, ra, rb))
    return out


def _baseline_retention(runs: pd.DataFrame) -> float:
    """Mean over seeds of the two-stage-pq baseline's retention (defaults preferred)."""
    if "retention" not in runs:
        return math.nan
    base = runs[runs["variant"] == BASELINE_VARIANT]
    if (~base["tuned"]).any():
        base = base[~base["tuned"]]
    values = base["retention"].dropna()
    return float(values.mean()) if len(values) else math.nan


def evaluate_claims(agg: Aggregate, claims: tuple[Claim, ...] = CLAIMS) -> pd.DataFrame:
    """One row per claim, cell and pairing (module docstring); columns CLAIM_COLUMNS.

    Rows are ordered by dataset, protocol, convention, claim (in ``claims`` order),
    pairing and bits.
    """
    rows = []
    for cell, part in agg.runs.groupby(CELL_KEYS, sort=True):
        info = dict(zip(CELL_KEYS, cell))
        retention = _baseline_retention(part)
        for index, claim in enumerate(claims):
            for compared, opponent, runs_a, runs_b in _claim_pairings(part, claim):
                a, b, _ = paired_values(runs_a, runs_b)
                test = paired_t_test(a, b)
                rows.append({
                    "claim": claim.text, "a": claim.a, "b": opponent,
                    "dataset": info["dataset"], "protocol": info["protocol"],
                    "bits": info["bits"], "compared": compared, "n_seeds": test.n,
                    "mean_a": float(a.mean()) if test.n else math.nan,
                    "mean_b": float(b.mean()) if test.n else math.nan,
                    "diff": test.diff, "ci_low": test.ci_low, "ci_high": test.ci_high,
                    "verdict": verdict(test.ci_low, test.ci_high, claim.expected),
                    "baseline_retention": retention, "source": claim.source,
                    "convention": info["convention"], "_order": index,
                })
    if not rows:
        return pd.DataFrame(columns=CLAIM_COLUMNS)
    frame = pd.DataFrame(rows).sort_values(
        ["dataset", "protocol", "convention", "_order", "compared", "bits"], kind="stable")
    return frame[CLAIM_COLUMNS].reset_index(drop=True)
