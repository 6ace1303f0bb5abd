"""Benchmark of ``qbench tune``'s overhead: sampler + storage time per trial, against a trial.

    python bench/bench_tune.py [--out results/bench/tune.json] [--trials 20,50] [--trial-s S]

The tuning machinery runs exactly as ``qbench tune`` runs it (TPE sampler with constant
liar, SQLite storage with heartbeats and retries, identity check, progress callback), on a
method with a three-parameter space shaped like DQN's (a log-scale weight, an integer
period, a choice) and a no-op objective. The overhead per trial is the span from the first
trial's start to the last trial's end divided by the trial count: with a no-op objective
all of it is ask + sample + heartbeat + tell + storage round trips. It grows with the
study's size (TPE models every past trial), so it is measured at several trial counts.
The one-off cost of a session (opening the storage, plots, the summary file) is reported
apart. On a shared machine wall times move with the load (recorded); the CPU time per
trial, marginal between two study sizes, moves less.

The reference is the wall time of one digits trial: ``--trial-s`` or, by default, a
measured one: :func:`qbench.run.pipeline.run_selection` (a tuning trial's objective) of
``dqn`` on digits at 32 bits with the default epochs, run twice in one cache folder; the
second run is the trial time (a study's trials share the cached stage-1 encoder; the first
run, which trains it, is reported as ``first_trial_s``). Optuna's imports and TPE's first
use are paid once per process, by a warm-up study before the measured ones.
Target: overhead per trial < 2% of a digits trial.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from qbench.grid.tune import tune  # noqa: E402
from qbench.methods import Method  # noqa: E402
from qbench.registry import METHODS, Param, Space  # noqa: E402
from qbench.run.pipeline import RunRequest  # noqa: E402
from qbench.run.results import write_json_atomic  # noqa: E402

TARGET = 0.02


class NoOpTuned(Method):
    """A method whose space is shaped like DQN's; its objective never trains anything."""

    name = "bench-noop-tuned"
    description = "benchmark stand-in with a DQN-shaped search space"
    params = (
        Param("lam", float, 0.3, "penalty weight", minimum=0.0, tune=Space(1e-3, 3.0, log=True)),
        Param("refit_every", int, 0, "refit period", minimum=0, tune=Space(1, 10)),
        Param("force", str, "spring", "force law", choices=("spring", "gravity"),
              tune=Space(choices=("spring", "gravity"))),
    )


def digits_trial_s() -> dict:
    """Wall and CPU seconds of the first and of a later digits trial (dqn, 32 bits)."""
    from qbench.run.pipeline import run_selection

    times = []
    with tempfile.TemporaryDirectory() as tmp:
        req = RunRequest(method="dqn", dataset="digits", bits=32, seed=0, device="cpu",
                         out=Path(tmp))
        for _ in range(2):
            wall, cpu = time.perf_counter(), time.process_time()
            run_selection(req)
            times.append((time.perf_counter() - wall, time.process_time() - cpu))
    return {"first_trial_s": times[0][0], "trial_s": times[1][0], "trial_cpu_s": times[1][1]}


def overhead(trials: int) -> dict:
    """Per-trial overhead (s) of a fresh study of ``trials`` no-op trials, and the session's."""
    import optuna

    with tempfile.TemporaryDirectory() as tmp:
        template = RunRequest(method=NoOpTuned.name, dataset="digits", bits=32, seed=0,
                              device="cpu", out=Path(tmp))
        wall, cpu = time.perf_counter(), time.process_time()
        tune(template, trials=trials, objective=lambda params, report: params["lam"],
             echo=lambda line: None)
        session_s, session_cpu_s = time.perf_counter() - wall, time.process_time() - cpu
        name = f"digits-standard-{NoOpTuned.name}-32b-seed0"
        study = optuna.load_study(
            study_name=name, storage=f"sqlite:///{Path(tmp).resolve()}/tune/{name}.db")
        done = study.get_trials()
        span = (done[-1].datetime_complete - done[0].datetime_start).total_seconds()
    return {"trials": trials, "per_trial_s": span / trials, "trial_loop_s": span,
            "session_s": session_s, "one_off_s": session_s - span,
            "session_cpu_s": session_cpu_s}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("results/bench/tune.json"))
    ap.add_argument("--trials", default="20,50", help="comma-separated study sizes")
    ap.add_argument("--trial-s", type=float, default=None,
                    help="seconds of one digits trial (default: measure a dqn run)")
    args = ap.parse_args()

    METHODS.names()
    METHODS.register(NoOpTuned)
    if args.trial_s is not None:
        ref = {"first_trial_s": None, "trial_s": args.trial_s, "trial_cpu_s": None}
    else:
        ref = digits_trial_s()
    overhead(3)  # warm-up: imports and TPE's first use, once per process
    rows = [overhead(int(n)) for n in args.trials.split(",")]
    for row in rows:
        row["fraction_of_digits_trial"] = row["per_trial_s"] / ref["trial_s"]
    for small, large in zip(rows, rows[1:]):
        large["marginal_cpu_per_trial_s"] = ((large["session_cpu_s"] - small["session_cpu_s"])
                                             / (large["trials"] - small["trials"]))
        if ref["trial_cpu_s"]:
            large["cpu_fraction_of_digits_trial"] = (large["marginal_cpu_per_trial_s"]
                                                     / ref["trial_cpu_s"])
    report = {
        **ref,
        "trial_source": "--trial-s" if args.trial_s is not None else
                        "run_selection(dqn, digits, 32 bits), second run (warm encoder cache)",
        "storage": "default: SQLite <out>/tune/<study>.db, write-ahead log, heartbeat on",
        "target_fraction": TARGET,
        "meets_target": all(r["fraction_of_digits_trial"] < TARGET for r in rows),
        "studies": rows,
        "load_average_1min": os.getloadavg()[0],
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "cpu_count": os.cpu_count()},
    }
    write_json_atomic(args.out, report)
    cpu = f", {ref['trial_cpu_s']:.2f} s CPU" if ref["trial_cpu_s"] else ""
    first = (f"; the first, which trains the shared encoder: {ref['first_trial_s']:.2f} s"
             if ref["first_trial_s"] else "")
    print(f"digits trial: {ref['trial_s']:.2f} s wall{cpu}{first}; "
          f"load average {report['load_average_1min']:.1f} on {os.cpu_count()} cores")
    print("| trials | overhead per trial, wall (ms) | % of a digits trial | marginal CPU per "
          "trial (ms) | % of a trial's CPU | session one-off (s) |")
    print("|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        cpu_ms = r.get("marginal_cpu_per_trial_s")
        cpu_pct = r.get("cpu_fraction_of_digits_trial")
        print(f"| {r['trials']} | {1000 * r['per_trial_s']:.1f} | "
              f"{100 * r['fraction_of_digits_trial']:.2f} | "
              f"{'' if cpu_ms is None else f'{1000 * cpu_ms:.1f}'} | "
              f"{'' if cpu_pct is None else f'{100 * cpu_pct:.2f}'} | {r['one_off_s']:.2f} |")
    print(f"target < {100 * TARGET:.0f}%: {'met' if report['meets_target'] else 'NOT met'}"
          f" -> {args.out}")


if __name__ == "__main__":
    main()
