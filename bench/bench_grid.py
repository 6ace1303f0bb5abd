"""Grid benchmark (issue "train once, quantize many"): cache vs --no-cache, trainings counted.

    python bench/bench_grid.py --out results/bench/grid.json [--epochs 300] [--default-grid]
                               [--fashion-run]

1. The stage-1 methods (float, two-stage-pq, two-stage-opq, itq) x 12/24/32/48 bits, one seed,
   on digits at ``--epochs`` (300): wall time with the encoder cache and with ``--no-cache``,
   in one process, and the number of stage-1 trainings each did (cache misses, or one per
   run without the cache) against the number of distinct encoder keys.
2. ``--default-grid``: the digits default grid (grids/default.json, every method, 5 seeds)
   with and without the cache, ``--jobs 2``.
3. ``--fashion-run``: the per-phase breakdown of one Fashion-MNIST two-stage-pq run at the
   CPU defaults (needs Debian's dataset-fashion-mnist).
Figures go to ``--out`` as JSON; nothing here is a pass/fail test.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from qbench.grid import run_grid
from qbench.results import load_result, write_json_atomic

STAGE1_METHODS = ["float", "two-stage-pq", "two-stage-opq", "itq"]


def _grid_file(folder: Path, methods: list[str], seeds: list[int], epochs: int | None) -> Path:
    spec = {"methods": methods, "bits": [12, 24, 32, 48], "seeds": seeds,
            "datasets": {"digits": {"protocol": "standard", "epochs": epochs}}}
    path = folder / "grid.json"
    path.write_text(json.dumps(spec))
    return path


def _timed_grid(grid: Path, out: Path, *, use_cache: bool, jobs: int,
                dataset: str = "digits") -> dict:
    start = time.perf_counter()
    summary = run_grid(grid, dataset=dataset, out=out, jobs=jobs, use_cache=use_cache,
                       progress=False)
    wall = time.perf_counter() - start
    results = [load_result(p) for p in sorted(out.glob("*.json"))]
    statuses = [r.get("encoder_cache") for r in results]
    keys = {r["encoder_key"] for r in results if r.get("encoder_key")}
    trained = statuses.count("miss") if use_cache else sum(1 for s in statuses if s == "off")
    return {"wall_s": wall, "runs": len(summary.done), "failed": len(summary.failed),
            "stage1_trainings": trained, "distinct_encoder_keys": len(keys)}


def stage1_grid(epochs: int, jobs: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        grid = _grid_file(tmp, STAGE1_METHODS, [0], epochs)
        cached = _timed_grid(grid, tmp / "cached", use_cache=True, jobs=jobs)
        plain = _timed_grid(grid, tmp / "plain", use_cache=False, jobs=jobs)
    return {"epochs": epochs, "jobs": jobs, "cache": cached, "no_cache": plain,
            "speed_up": plain["wall_s"] / cached["wall_s"]}


def default_grid(jobs: int) -> dict:
    grid = Path(__file__).resolve().parents[1] / "grids" / "default.json"
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cached = _timed_grid(grid, tmp / "cached", use_cache=True, jobs=jobs)
        plain = _timed_grid(grid, tmp / "plain", use_cache=False, jobs=jobs)
    return {"jobs": jobs, "cache": cached, "no_cache": plain,
            "speed_up": plain["wall_s"] / cached["wall_s"]}


def fashion_run() -> dict:
    from qbench.pipeline import RunRequest, run_experiment

    with tempfile.TemporaryDirectory() as tmp:
        _, result = run_experiment(RunRequest(method="two-stage-pq", dataset="fashion-mnist",
                                              bits=32, out=Path(tmp)))
    phases = ("load_s", "train_s", "select_s", "fit_s", "encode_s", "eval_s", "total_s")
    return {"method": "two-stage-pq", "bits": 32,
            "epochs": result["method_info"]["training"]["epochs"],
            "encoder": result["method_info"]["training"]["encoder"],
            "map_all": result["metrics"]["map_all"],
            "float_map_all": result["metrics"]["float_map_all"],
            "phases": {k: result["timings"][k] for k in phases}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("results/bench/grid.json"))
    parser.add_argument("--epochs", type=int, default=300)
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--default-grid", action="store_true")
    parser.add_argument("--fashion-run", action="store_true")
    args = parser.parse_args()
    report = {"machine": {"cpu_count": os.cpu_count()},
              "stage1_grid_digits": stage1_grid(args.epochs, args.jobs)}
    print(json.dumps(report["stage1_grid_digits"], indent=1))
    if args.default_grid:
        report["default_grid_digits"] = default_grid(2)
        print(json.dumps(report["default_grid_digits"], indent=1))
    if args.fashion_run:
        report["fashion_mnist_run"] = fashion_run()
        print(json.dumps(report["fashion_mnist_run"], indent=1))
    write_json_atomic(args.out, report)
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
