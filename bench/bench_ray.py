"""Benchmark of the Ray backend against the local one: wall time of the same grid.

    python bench/bench_ray.py [--out results/bench/ray.json] [--seeds 0] [--jobs 2]

Runs ``grids/default.json`` on digits twice in this process, each into a fresh results
folder with a fresh cache: first with the local backend and ``--jobs`` worker processes,
then with the Ray backend on a Ray cluster it starts itself (2 CPUs here: one CPU, and so
one thread, per run, as the local workers with cores // jobs). The Ray wall time includes
starting and stopping the cluster, as a user pays it; ``ray_start_s`` (one extra
start-and-stop afterwards) says how much of it that is. ``--seeds`` picks a subset of the
grid's five seeds (default 0: 13 methods x 4 bits = 52 runs); the results of both backends
are compared up to timings (metrics of every run equal). Target: Ray within 1.3x of local.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from qbench.grid.backends import make_backend  # noqa: E402
from qbench.grid.runner import run_grid  # noqa: E402
from qbench.run.results import write_json_atomic  # noqa: E402

GRID = Path(__file__).resolve().parents[1] / "grids" / "default.json"


def timed_grid(out: Path, seeds: list[int], **backend) -> dict:
    """Run the digits default grid into ``out``; its summary figures."""
    started = time.perf_counter()
    summary = run_grid(GRID, dataset="digits", out=out, device="cpu", seeds=seeds,
                       progress=False, **backend)
    wall = time.perf_counter() - started
    if summary.failed:
        raise SystemExit(f"bench_ray: {summary.describe()}")
    return {"wall_s": wall, "runs": len(summary.done), "runs_s": summary.run_s}


def same_metrics(a: Path, b: Path) -> bool:
    """Whether every result file of ``a`` has the metrics of its namesake in ``b``."""
    files = sorted(p.name for p in a.glob("*.json"))
    return files == sorted(p.name for p in b.glob("*.json")) and all(
        json.loads((a / f).read_text())["metrics"] == json.loads((b / f).read_text())["metrics"]
        for f in files)


def ray_start_s() -> float:
    """Seconds to start and stop a local 2-CPU Ray cluster."""
    import ray

    started = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    ray.shutdown()
    return time.perf_counter() - started


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("results/bench/ray.json"))
    ap.add_argument("--seeds", default="0", help="comma-separated seeds of the grid")
    ap.add_argument("--jobs", type=int, default=2, help="local worker processes")
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    os.environ.pop("QBENCH_CACHE", None)  # each backend gets its own, fresh cache

    with tempfile.TemporaryDirectory(prefix="qbench-bench-ray-") as tmp:
        local = timed_grid(Path(tmp) / "local", seeds,
                           backend=make_backend("local", jobs=args.jobs))
        print(f"local, {args.jobs} jobs: {local['wall_s']:.1f} s for {local['runs']} runs")
        on_ray = timed_grid(Path(tmp) / "ray", seeds, backend=make_backend("ray"))
        print(f"ray: {on_ray['wall_s']:.1f} s for {on_ray['runs']} runs")
        identical = same_metrics(Path(tmp) / "local", Path(tmp) / "ray")
    ratio = on_ray["wall_s"] / local["wall_s"]
    report = {
        "kind": "qbench-bench-ray",
        "grid": "grids/default.json", "dataset": "digits", "seeds": seeds,
        "cores": len(os.sched_getaffinity(0)),
        "local": {"jobs": args.jobs, **local},
        "ray": {"cpus_per_run": 1, **on_ray},
        "ray_start_s": ray_start_s(),
        "ratio_ray_to_local": ratio,
        "target_ratio": 1.3,
        "within_target": ratio <= 1.3,
        "same_metrics": identical,
        "python": platform.python_version(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    write_json_atomic(args.out, report)
    print(f"ray / local = {ratio:.2f} (target <= 1.3); same metrics: {identical}; "
          f"written to {args.out}")


if __name__ == "__main__":
    main()
