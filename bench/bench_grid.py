"""Grid benchmark (issue "train once, quantize many"): cache vs --no-cache, trainings counted.

    python bench/bench_grid.py --out results/bench/grid.json [--epochs 300] [--default-grid]
                               [--default-grid-seeds N] [--fashion-run]
                               [--fashion-default-grid-seeds N] [--skip-digits]

1. The stage-1 methods (float, two-stage-pq, two-stage-opq, itq) x 12/24/32/48 bits, one seed,
   on digits at ``--epochs`` (300): wall time with the encoder cache and with ``--no-cache``,
   in one process, and the number of stage-1 trainings each did (cache misses, or one per
   run without the cache) against the number of distinct encoder keys.
2. ``--default-grid``: the digits default grid (grids/default.json, every method, 5 seeds)
   with and without the cache, ``--jobs 2``.
3. ``--fashion-default-grid-seeds N``: the Fashion-MNIST default grid on its first N seeds
   with the cache, ``--jobs 2``: wall time, trainings, run time per phase and per method.
   ``--fashion-run``: the per-phase breakdown of one Fashion-MNIST two-stage-pq run at the
   CPU defaults (needs Debian's dataset-fashion-mnist).
4. Unless ``--skip-digits`` (which also skips 1.): inference on 20,000 Fashion-MNIST-sized
   images (1x28x28) with the 6-layer CNN (``cnn``), in three fresh processes: before (glibc's
   allocator defaults, batch 1024, as qbench did until the fix), batch-only (the sized
   batch, glibc's defaults) and after (:mod:`qbench.core.memory`: fixed thresholds and sized
   batches), with images/s, user and system time and minor page faults; and, in the same
   process as "after", training throughput of a bare step (forward, backward and Adam,
   batch 128) and of qbench's own loops (``Trainer.fit`` with the default engine
   parameters against ``Trainer.embed``): the issue's "inference >= 3x training" is read
   from the latter.
Figures go to ``--out`` as JSON; nothing here is a pass/fail test.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from qbench.grid.backends import make_backend
from qbench.grid.runner import run_grid
from qbench.run.results import load_result, write_json_atomic

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
    summary = run_grid(grid, dataset=dataset, out=out, use_cache=use_cache, progress=False,
                       backend=make_backend("local", jobs=jobs))
    wall = time.perf_counter() - start
    paths = sorted(out.glob("*.json"))
    results = [load_result(p) for p in paths]
    statuses = [r.get("encoder_cache") for r in results]
    keys = {r["encoder_key"] for r in results if r.get("encoder_key")}
    trained = statuses.count("miss") if use_cache else sum(1 for s in statuses if s == "off")
    phases = ("load_s", "train_s", "select_s", "fit_s", "encode_s", "eval_s", "total_s")
    run_time = {k: sum(r["timings"].get(k) or 0.0 for r in results) for k in phases}
    run_time["stage1_train_s"] = sum(
        ((r.get("method_info") or {}).get("warm_start") or {}).get("stage1_train_s") or 0.0
        for r in results)
    per_method: dict[str, float] = {}
    maps: dict[str, dict[str, float]] = {}
    for path, r in zip(paths, results):  # by cell name: a variant (dqn-ip) on its own
        name = path.stem.removeprefix(f"{r['dataset']}-{r['protocol']}-").rsplit("-", 2)[0]
        per_method[name] = per_method.get(name, 0.0) + r["timings"]["total_s"]
        maps.setdefault(name, {})[f"{r['bits']}b-seed{r['seed']}"] = r["metrics"]["map_all"]
    return {"wall_s": wall, "runs": len(summary.done), "failed": len(summary.failed),
            "stage1_trainings": trained, "distinct_encoder_keys": len(keys),
            "run_time_s": run_time, "run_time_by_method_s": per_method, "map_all": maps}


def stage1_grid(epochs: int, jobs: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        grid = _grid_file(tmp, STAGE1_METHODS, [0], epochs)
        cached = _timed_grid(grid, tmp / "cached", use_cache=True, jobs=jobs)
        plain = _timed_grid(grid, tmp / "plain", use_cache=False, jobs=jobs)
    return {"epochs": epochs, "jobs": jobs, "cache": cached, "no_cache": plain,
            "speed_up": plain["wall_s"] / cached["wall_s"]}


DEFAULT_GRID = Path(__file__).resolve().parents[1] / "grids" / "default.json"


def _first_seeds(folder: Path, seeds: int | None) -> Path:
    """grids/default.json, or a copy in ``folder`` cut to its first ``seeds`` seeds."""
    if seeds is None:
        return DEFAULT_GRID
    spec = json.loads(DEFAULT_GRID.read_text())
    spec["seeds"] = spec["seeds"][:seeds]
    path = folder / "default.json"
    path.write_text(json.dumps(spec))
    return path


def default_grid(jobs: int, seeds: int | None = None) -> dict:
    """The digits default grid; ``seeds``: only its first that many training seeds."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        grid = _first_seeds(tmp, seeds)
        cached = _timed_grid(grid, tmp / "cached", use_cache=True, jobs=jobs)
        plain = _timed_grid(grid, tmp / "plain", use_cache=False, jobs=jobs)
    return {"jobs": jobs, "seeds": seeds or "all", "cache": cached, "no_cache": plain,
            "speed_up": plain["wall_s"] / cached["wall_s"]}


def fashion_default_grid(jobs: int, seeds: int) -> dict:
    """The Fashion-MNIST default grid on its first ``seeds`` training seeds, with the cache
    only (the CPU defaults of grids/default.json; needs Debian's dataset-fashion-mnist)."""
    spec = json.loads(DEFAULT_GRID.read_text())
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cached = _timed_grid(_first_seeds(tmp, seeds), tmp / "cached", use_cache=True,
                             jobs=jobs, dataset="fashion-mnist")
    return {"jobs": jobs, "seeds": seeds, "of_seeds": len(spec["seeds"]),
            "params": spec["datasets"]["fashion-mnist"], "cache": cached}


def fashion_run() -> dict:
    from qbench.run.pipeline import RunRequest, run_experiment

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


def inference_probe(mode: str, encoder: str = "cnn", n: int = 20_000) -> dict:
    """Embed n random 1x28x28 images; ``mode`` "before" or "after" (run in a fresh process)."""
    import numpy as np
    import torch

    from qbench.core.memory import inference_batch, keep_freed_memory
    from qbench.train.encoders import build_encoder

    torch.manual_seed(0)
    model = build_encoder(encoder, (1, 28, 28), 64).eval()
    x = np.random.default_rng(0).random((n, 1, 28, 28), dtype=np.float32)
    if mode == "after":
        keep_freed_memory()
    if mode in ("after", "batch-only"):
        batch = inference_batch(model, torch.from_numpy(x[:1]), torch.device("cpu"))
    else:
        batch = 1024
    out = np.empty((n, 64), np.float32)

    def embed():
        with torch.inference_mode():
            for start in range(0, n, batch):
                out[start:start + batch] = model(torch.from_numpy(x[start:start + batch])).numpy()

    embed()  # warm-up: first-touch of the output, one-time allocations
    r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    embed()
    wall, r1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
    report = {"mode": mode, "encoder": encoder, "batch": batch, "images": n,
              "threads": torch.get_num_threads(), "wall_s": wall, "images_per_s": n / wall,
              "user_s": r1.ru_utime - r0.ru_utime, "system_s": r1.ru_stime - r0.ru_stime,
              "minor_faults": r1.ru_minflt - r0.ru_minflt}
    if mode == "after":
        model.train()
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        xb = torch.from_numpy(x[:128])
        steps, t0 = 40, time.perf_counter()
        for _ in range(steps):
            opt.zero_grad(set_to_none=True)
            model(xb).pow(2).mean().backward()
            opt.step()
        report["train_images_per_s"] = steps * 128 / (time.perf_counter() - t0)
        report["inference_over_training"] = report["images_per_s"] / report["train_images_per_s"]
        report["qbench_loop"] = qbench_loop(encoder)
        report["qbench_loop_no_augment"] = qbench_loop(encoder, augment=False)
    return report


def qbench_loop(encoder: str, epochs: int = 2, n_embed: int = 20_000, *,
                augment: bool = True) -> dict:
    """Throughput of qbench's own loops on the same machine: ``Trainer.fit`` (the default
    engine parameters: batch 128, the similarity loss, Adam; flip-and-crop augmentation
    unless ``augment`` is False, as in the Fashion-MNIST default grid) on
    the Fashion-MNIST protocol's 5,000 training images, then ``Trainer.embed`` of
    ``n_embed`` images. Synthetic 1x28x28 uint8 images with 10 labels stand in for the data
    (throughput does not depend on pixel values)."""
    import numpy as np

    from qbench.data.dataset import Dataset
    from qbench.data.protocols import make_splits
    from qbench.methods import RunContext
    from qbench.registry import DATASETS
    from qbench.train.params import ENGINE_PARAMS
    from qbench.train.trainer import Trainer

    rng = np.random.default_rng(0)
    n = 27_000
    ds = Dataset("synthetic", rng.integers(0, 256, (n, 1, 28, 28), dtype=np.uint8),
                 np.arange(n) % 10, "image")
    spec = DATASETS.get("fashion-mnist")({}, None).protocol("standard")
    ctx = RunContext(ds, make_splits(ds, spec, seed=0), bits=32, seed=0)
    params = {p.name: p.default for p in ENGINE_PARAMS}
    params.update(encoder=encoder, epochs=epochs, augment=augment)
    trainer = Trainer(ctx, params, 64).fit()
    train_rate = epochs * len(ctx.splits.train) / trainer.train_s
    images = ds.X[:n_embed]
    trainer.embed(images[:1000])  # batch size chosen, one-time allocations
    t0 = time.perf_counter()
    trainer.embed(images)
    embed_rate = n_embed / (time.perf_counter() - t0)
    return {"train_images": len(ctx.splits.train), "epochs": epochs,
            "augment": params["augment"], "batch_size": params["batch_size"],
            "train_images_per_s": train_rate, "inference_batch": trainer.infer_batch,
            "inference_images_per_s": embed_rate,
            "inference_over_training": embed_rate / train_rate}


def inference() -> dict:
    """Before/after figures, each from a fresh interpreter (allocator settings are global)."""
    runs = {}
    for mode in ("before", "batch-only", "after"):
        done = subprocess.run([sys.executable, __file__, "--inference-probe", mode],
                              capture_output=True, text=True, check=True)
        runs[mode] = json.loads(done.stdout.strip().splitlines()[-1])
    before, after = runs["before"], runs["after"]
    return {**runs, "speed_up": after["images_per_s"] / before["images_per_s"],
            "system_s_before_after": [before["system_s"], after["system_s"]],
            "minor_faults_before_after": [before["minor_faults"], after["minor_faults"]]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("results/bench/grid.json"))
    parser.add_argument("--epochs", type=int, default=300)
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--default-grid", action="store_true")
    parser.add_argument("--default-grid-seeds", type=int, default=None,
                        help="the default grid on its first N seeds (implies --default-grid)")
    parser.add_argument("--fashion-run", action="store_true")
    parser.add_argument("--fashion-default-grid-seeds", type=int, default=None,
                        help="the Fashion-MNIST default grid on its first N seeds, with the "
                        "cache, --jobs 2 (needs dataset-fashion-mnist)")
    parser.add_argument("--skip-digits", action="store_true",
                        help="skip the inference probes and the digits stage-1 grid")
    parser.add_argument("--inference-probe", choices=("before", "batch-only", "after"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.default_grid_seeds is not None:
        if args.default_grid_seeds < 1:
            parser.error(f"--default-grid-seeds must be >= 1, got {args.default_grid_seeds}")
        args.default_grid = True
    if args.inference_probe:
        print(json.dumps(inference_probe(args.inference_probe)))
        return
    report = {"machine": {"cpu_count": os.cpu_count(), "load_average": os.getloadavg()}}
    if not args.skip_digits:
        report["inference_cpu"] = inference()
        print(json.dumps(report["inference_cpu"], indent=1))
        report["stage1_grid_digits"] = stage1_grid(args.epochs, args.jobs)
        print(json.dumps(report["stage1_grid_digits"], indent=1))
    if args.default_grid:
        report["default_grid_digits"] = default_grid(2, args.default_grid_seeds)
        print(json.dumps(report["default_grid_digits"], indent=1))
    if args.fashion_default_grid_seeds is not None:
        if args.fashion_default_grid_seeds < 1:
            parser.error("--fashion-default-grid-seeds must be >= 1, got "
                         f"{args.fashion_default_grid_seeds}")
        report["fashion_default_grid"] = fashion_default_grid(2, args.fashion_default_grid_seeds)
        print(json.dumps(report["fashion_default_grid"], indent=1))
    if args.fashion_run:
        report["fashion_mnist_run"] = fashion_run()
        print(json.dumps(report["fashion_mnist_run"], indent=1))
    write_json_atomic(args.out, report)
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
