"""Benchmark of the evaluator: speed against the naive loop, ADC cost, scale and memory.

    python bench/bench_evaluator.py [--out results/bench/evaluator.json] [--quick]

Cases (sizes shrink with --quick, for a smoke test):
1. 1000 queries x 59,000 items, 32-bit binary codes with a 10-class structure: one
   ``evaluate()`` (MAP@all, tie-aware MAP, PR, top-R, Hamming-radius curves) against the
   per-query ``np.argsort`` loop typical of deep-hashing repositories, computing MAP@all
   only, with the same tie order (stable sort on the Hamming distance). MAP@all must agree.
2. ADC, 1000 x 59,000, M=4, K=256, D=64: one ``evaluate()``.
3. 10^6 items, 1000 queries, 32-bit binary and PQ (M=4, K=256, D=64): time and peak
   resident memory, each case in its own subprocess so the peak is per case.

Figures go to ``--out`` (JSON) and the same path with ``.md`` (a Markdown table, also printed).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import qbench.evaluator as E  # noqa: E402
from qbench.codes import BinaryCodes, PQCodes  # noqa: E402
from qbench.evaluator import evaluate  # noqa: E402

N_CLASSES = 10


def binary_data(n_query: int, n_db: int, bits: int = 32, flip: float = 0.25, seed: int = 0):
    """Codes = class centre XOR Bernoulli(flip) noise, so that MAP is well above chance."""
    rng = np.random.default_rng(seed)
    centres = rng.integers(0, 2, (N_CLASSES, bits), dtype=np.uint8)
    q_labels = rng.integers(0, N_CLASSES, n_query)
    db_labels = rng.integers(0, N_CLASSES, n_db)
    q = centres[q_labels] ^ (rng.random((n_query, bits)) < flip).astype(np.uint8)
    db = centres[db_labels] ^ (rng.random((n_db, bits)) < flip).astype(np.uint8)
    return BinaryCodes(q, db), q_labels, db_labels


def pq_data(n_query: int, n_db: int, m: int = 4, k: int = 256, dim: int = 64,
            keep: float = 0.5, seed: int = 0):
    """Each class owns one codeword per subspace; an item keeps it with probability ``keep``
    (else a random codeword); queries are their class's reconstruction plus noise."""
    rng = np.random.default_rng(seed)
    codebooks = rng.normal(size=(m, k, dim // m)).astype(np.float32)
    class_codes = rng.integers(0, k, (N_CLASSES, m))
    q_labels = rng.integers(0, N_CLASSES, n_query)
    db_labels = rng.integers(0, N_CLASSES, n_db)
    db_codes = np.where(rng.random((n_db, m)) < keep, class_codes[db_labels],
                        rng.integers(0, k, (n_db, m))).astype(np.uint8)
    centre = codebooks[np.arange(m)[None, :], class_codes[q_labels]].reshape(n_query, dim)
    query = (centre + rng.normal(scale=0.7, size=centre.shape)).astype(np.float32)
    return PQCodes(query, db_codes, codebooks), q_labels, db_labels


def naive_map_all(codes: BinaryCodes, q_labels: np.ndarray, db_labels: np.ndarray):
    """MAP@all the way deep-hashing repositories compute it: one query at a time, ±1 codes,
    one-hot labels, Hamming distance through a dot product, a full argsort per query
    (stable, so that ties follow the database index like the evaluator)."""
    q_pm = 2.0 * codes.query_bits - 1.0
    db_pm = 2.0 * codes.db_bits - 1.0
    q_onehot = np.eye(N_CLASSES)[q_labels]
    db_onehot = np.eye(N_CLASSES)[db_labels]
    n_bits = q_pm.shape[1]
    per_query = np.zeros(len(q_pm))
    for i in range(len(q_pm)):
        gnd = (q_onehot[i] @ db_onehot.T > 0).astype(np.float32)
        hamm = 0.5 * (n_bits - q_pm[i] @ db_pm.T)
        gnd = gnd[np.argsort(hamm, kind="stable")]
        tsum = int(gnd.sum())
        if tsum == 0:
            continue
        count = np.linspace(1, tsum, tsum)
        tindex = np.asarray(np.where(gnd == 1)) + 1.0
        per_query[i] = np.mean(count / tindex)
    return per_query.mean(), per_query


def one_blas_thread():
    """Limit BLAS to one thread: its best setting for the naive loop's small products (with
    more threads, OpenBLAS spins and the loop gets several times slower on a busy machine)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(1, user_api="blas")


def rss_mib() -> float:
    """Current resident set size of this process, MiB (Linux /proc)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed(fn):
    """(result, wall seconds, CPU seconds of this process: all threads, load-independent)."""
    w0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w0, time.process_time() - c0


def case_speed(n_query: int, n_db: int, repeats: int) -> dict:
    codes, ql, dl = binary_data(n_query, n_db)
    runs = [timed(lambda: evaluate(codes, ql, dl)) for _ in range(repeats)]
    ev = runs[-1][0]
    threads, saved = E._workers("cpu"), E.MAX_WORKERS
    E.MAX_WORKERS = 1
    try:
        single = [timed(lambda: evaluate(codes, ql, dl))[1] for _ in range(repeats)]
    finally:
        E.MAX_WORKERS = saved
    with one_blas_thread():
        (naive_map, naive_ap), naive_s, naive_cpu = timed(lambda: naive_map_all(codes, ql, dl))
    diff = abs(ev.metrics["map_all"] - naive_map)
    max_ap_diff = float(np.max(np.abs(ev.per_query_ap - naive_ap)))
    assert diff <= 1e-12 and max_ap_diff <= 1e-12, (diff, max_ap_diff)
    wall = [w for _, w, _ in runs]
    cpu = [c for _, _, c in runs]
    return {
        "n_query": n_query, "n_db": n_db, "bits": 32, "threads": threads,
        "evaluate_wall_s_runs": wall, "evaluate_wall_s_best": min(wall),
        "evaluate_wall_s_median": float(np.median(wall)),
        "evaluate_cpu_s_runs": cpu, "evaluate_cpu_s_best": min(cpu),
        "evaluate_1thread_wall_s_best": min(single),
        "naive_wall_s": naive_s, "naive_cpu_s": naive_cpu,
        "speedup_wall_best": naive_s / min(wall),
        "speedup_wall_median": naive_s / float(np.median(wall)),
        "speedup_cpu": naive_cpu / min(cpu),
        "speedup_1thread_wall": naive_s / min(single),
        "map_all": ev.metrics["map_all"], "naive_map_all": float(naive_map),
        "map_all_abs_diff": diff, "per_query_ap_max_abs_diff": max_ap_diff,
        "tie_aware_map_all": ev.metrics["tie_aware_map_all"],
        "tie_aware_bounds": [ev.metrics["tie_aware_map_all_pessimistic"],
                             ev.metrics["tie_aware_map_all_optimistic"]],
        "search_s": ev.timings["search_s"],
    }


def case_adc(n_query: int, n_db: int, repeats: int) -> dict:
    codes, ql, dl = pq_data(n_query, n_db)
    runs, ev = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        ev = evaluate(codes, ql, dl)
        runs.append(time.perf_counter() - t0)
    return {"n_query": n_query, "n_db": n_db, "M": 4, "K": 256, "D": 64,
            "evaluate_s_runs": runs, "evaluate_s_best": min(runs),
            "search_s": ev.timings["search_s"], "map_all": ev.metrics["map_all"]}


def run_scale_case(kind: str, n_query: int, n_db: int) -> dict:
    """Child process body: build the data, evaluate once, report time and memory."""
    make = binary_data if kind == "binary" else pq_data
    codes, ql, dl = make(n_query, n_db)
    before = rss_mib()
    t0 = time.perf_counter()
    ev = evaluate(codes, ql, dl)
    seconds = time.perf_counter() - t0
    return {"kind": kind, "n_query": n_query, "n_db": n_db, "evaluate_s": seconds,
            "search_s": ev.timings["search_s"], "map_all": ev.metrics["map_all"],
            "rss_before_evaluate_mib": before, "peak_rss_mib": peak_rss_mib()}


def case_scale(kind: str, n_query: int, n_db: int) -> dict:
    cmd = [sys.executable, __file__, "--child", kind, str(n_query), str(n_db)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"scale case {kind} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def markdown(report: dict) -> str:
    s, a = report["speed"], report["adc"]
    rows = [
        "| case | size | time (s) | notes |",
        "|---|---|---|---|",
        f"| binary 32-bit, evaluate(), {s['threads']} threads | {s['n_query']} x {s['n_db']} | "
        f"{s['evaluate_wall_s_best']:.3f} (median {s['evaluate_wall_s_median']:.3f}; "
        f"CPU {s['evaluate_cpu_s_best']:.3f}) | MAP@all {s['map_all']:.4f}, "
        f"tie-aware {s['tie_aware_map_all']:.4f} |",
        f"| binary 32-bit, evaluate(), 1 thread | {s['n_query']} x {s['n_db']} | "
        f"{s['evaluate_1thread_wall_s_best']:.3f} | |",
        f"| binary 32-bit, naive argsort loop | {s['n_query']} x {s['n_db']} | "
        f"{s['naive_wall_s']:.3f} (CPU {s['naive_cpu_s']:.3f}) | speed-up "
        f"{s['speedup_wall_best']:.1f}x wall (best), {s['speedup_wall_median']:.1f}x wall "
        f"(median), {s['speedup_cpu']:.1f}x CPU, {s['speedup_1thread_wall']:.1f}x vs 1 thread; "
        f"MAP@all diff {s['map_all_abs_diff']:.1e} |",
        f"| PQ ADC M=4 K=256 D=64, evaluate() | {a['n_query']} x {a['n_db']} | "
        f"{a['evaluate_s_best']:.3f} | search {a['search_s']:.3f} s, "
        f"MAP@all {a['map_all']:.4f} |",
    ]
    for c in report["scale"]:
        rows.append(
            f"| {c['kind']} at scale, evaluate() | {c['n_query']} x {c['n_db']} | "
            f"{c['evaluate_s']:.2f} | peak RSS {c['peak_rss_mib']:.0f} MiB "
            f"(data {c['rss_before_evaluate_mib']:.0f} MiB), MAP@all {c['map_all']:.4f} |")
    return "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("results/bench/evaluator.json"))
    parser.add_argument("--quick", action="store_true", help="small sizes (smoke test)")
    parser.add_argument("--child", nargs=3, metavar=("KIND", "N_QUERY", "N_DB"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        kind, n_query, n_db = args.child
        print(json.dumps(run_scale_case(kind, int(n_query), int(n_db))))
        return
    if args.quick:
        n_query, n_db, scale_q, scale_db, repeats = 100, 5_000, 50, 20_000, 1
    else:
        n_query, n_db, scale_q, scale_db, repeats = 1000, 59_000, 1000, 1_000_000, 3
    report = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version(), "numpy": np.__version__,
                    "load_average_at_start": list(os.getloadavg())},
        "quick": args.quick,
        "speed": case_speed(n_query, n_db, repeats),
        "adc": case_adc(n_query, n_db, repeats),
        "scale": [case_scale("binary", scale_q, scale_db), case_scale("pq", scale_q, scale_db)],
    }
    report["machine"]["load_average_at_end"] = list(os.getloadavg())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    table = markdown(report)
    args.out.with_suffix(".md").write_text(table)
    print(table)
    print(f"figures -> {args.out} and {args.out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
