"""Where a whole evaluation spends its time: a cProfile of ``evaluate()`` by phase.

    python bench/profile_evaluator.py [--out results/bench/evaluator-profile.json]
                                      [--queries 1000] [--db 59000]

The cases of ``bench/bench_evaluator.py`` (Hamming, 32-bit codes; ADC, PQ 4 x 256, D = 64;
the same synthetic data), evaluated with every metric and curve, in one thread
(``OMP_NUM_THREADS=1`` is set before anything is imported, so the query blocks run in
this thread and the profiler sees all of them). Each phase is the cumulative time of the
functions that make it, measured once after a warm-up call (the numba kernel compiled):

- distances: the lookup tables (ADC; on the compiled path the summed table distances
  happen inside the bucket kernel, under ranking) and, on the numpy path, the summed
  table distances; the packing of bits into words (Hamming; XOR + popcount happen inside
  the compiled kernel, under ranking);
- ranking: the sort of each query's distances, relevance in ranked order and the tie
  groups (``rank_numpy``), or the compiled Hamming kernel (``hamming_block``), or the
  compiled bucket kernel of ADC and float distances (``rank_block``), less the distances
  above;
- exact metrics: MAP@all and MAP@K, hits at the PR and top-R cut-offs, 11-point PR;
- tie-aware metrics: expected / best / worst AP and hits over the tie groups;
- radius curves, the summary (means, curves, metric card) and the rest.

Figures go to ``--out`` (JSON) and the same path with ``.md`` (a table, also printed).
"""

from __future__ import annotations

import os

os.environ["OMP_NUM_THREADS"] = "1"  # before numpy, numba and qbench read it

import argparse  # noqa: E402
import cProfile  # noqa: E402
import json  # noqa: E402
import pstats  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_evaluator import binary_data, pq_data  # noqa: E402

from qbench.eval.evaluator import evaluate  # noqa: E402

# phase -> functions (file suffix, function name) whose cumulative time makes it
PHASES = {
    "distances": [("distances.py", "numpy"), ("distances.py", "tables"),
                  ("distances.py", "words64")],
    "ranking": [("ranking.py", "rank_numpy"), ("kernels.py", "hamming_block"),
                ("buckets.py", "rank_block")],
    "exact metrics": [("metrics.py", "average_precision"), ("metrics.py", "hits_at"),
                      ("metrics.py", "interpolated_precision")],
    "tie-aware metrics": [("ties.py", "__init__"), ("ties.py", "average_precision"),
                          ("ties.py", "hits")],
    "radius curves": [("metrics.py", "radius_counts")],
    "summary and card": [("evaluator.py", "_summarise"), ("evaluator.py", "_metric_card")],
}


def _cumulative(stats: pstats.Stats, wanted: list[tuple[str, str]]) -> float:
    total = 0.0
    for (path, _line, name), (_cc, _nc, _tt, ct, _callers) in stats.stats.items():
        if any(path.endswith(suffix) and name == fn for suffix, fn in wanted):
            total += ct
    return total


def profile_case(name: str, codes, q_labels, db_labels) -> dict:
    evaluate(codes, q_labels, db_labels)  # warm-up: JIT cache, imports, first touches
    profiler = cProfile.Profile()
    t0 = time.perf_counter()
    profiler.enable()
    result = evaluate(codes, q_labels, db_labels)
    profiler.disable()
    wall = time.perf_counter() - t0
    stats = pstats.Stats(profiler)
    phases = {phase: _cumulative(stats, fns) for phase, fns in PHASES.items()}
    # the evaluator computes distances before it calls the ranking, so no phase nests in
    # another; what no phase names (block slicing, concatenation) is the rest
    phases["rest"] = max(0.0, wall - sum(phases.values()))
    top = sorted(stats.stats.items(), key=lambda kv: -kv[1][2])[:12]
    return {
        "case": name, "wall_s": wall, "backend": result.timings["backend"],
        "threads": result.timings["threads"], "map_all": result.metrics["map_all"],
        "phases_s": phases,
        "top_functions_tottime_s": [
            {"function": f"{Path(path).name}:{line}:{fn}", "tottime_s": tt, "calls": nc}
            for (path, line, fn), (_cc, nc, tt, _ct, _callers) in top],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("results/bench/evaluator-profile.json"))
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--db", type=int, default=59_000)
    args = parser.parse_args()
    cases = [profile_case("hamming-32b", *binary_data(args.queries, args.db)),
             profile_case("adc-pq-4x256", *pq_data(args.queries, args.db))]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    record = {"queries": args.queries, "db": args.db, "cases": cases}
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    lines = [f"# evaluate() by phase, {args.queries} queries x {args.db} items, one thread",
             "", "| phase | " + " | ".join(c["case"] + f" ({c['backend']})" for c in cases)
             + " |", "|---|" + "---|" * len(cases)]
    for phase in [*PHASES, "rest"]:
        cells = [f"{c['phases_s'][phase]:.3f} s ({c['phases_s'][phase] / c['wall_s']:.0%})"
                 for c in cases]
        lines.append(f"| {phase} | " + " | ".join(cells) + " |")
    lines.append("| **whole evaluation** | " + " | ".join(f"{c['wall_s']:.3f} s" for c in cases)
                 + " |")
    text = "\n".join(lines) + "\n"
    args.out.with_suffix(".md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
