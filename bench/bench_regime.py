"""Regime benchmark (issue 23): one method's run in ``full`` against ``head``, same machine,
one invocation.

    python bench/bench_regime.py --out results/bench/regime.json [--method dqn] [--bits 32]
                                 [--dataset fashion-mnist] [--skip-full]

1. ``full``: the method trained end to end as grids/fashion-tuned.json runs it on a CPU
   (lightcnn, no augmentation, 12 epochs), a fresh cache, so its stage-1 warm start is
   trained too; and ``full_default``: at the CPU defaults (cnn5, augmentation, 30 epochs),
   what a plain ``qbench run`` costs.
2. The head regime's backbone, as grids/reference.json sets it for the dataset, trained and
   its features cached (timed on its own: every method of a seed shares it).
3. ``head``: the same method on the cached backbone (train, select, encode, evaluate), twice:
   the first run also trains the head's shared stage-1 warm start, the second finds it.

Wall times per phase come from each result's ``timings``; the figures go to ``--out`` as
JSON. Needs the dataset on disk (Fashion-MNIST: Debian's dataset-fashion-mnist). Nothing
here is a pass/fail test.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from qbench.run.pipeline import RunRequest, run_experiment, train_stage1
from qbench.run.results import write_json_atomic

ROOT = Path(__file__).resolve().parents[1]


def _timed(req: RunRequest) -> dict:
    start = time.perf_counter()
    _, result = run_experiment(req)
    wall = time.perf_counter() - start
    keep = ("train_s", "select_s", "fit_s", "encode_s", "eval_s", "backbone_s", "total_s")
    return {"wall_s": round(wall, 2), "map_all": result["metrics"]["map_all"],
            "timings": {k: round(v, 2) for k, v in result["timings"].items() if k in keep},
            "encoder_cache": result.get("encoder_cache")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("results/bench/regime.json"))
    parser.add_argument("--method", default="dqn")
    parser.add_argument("--bits", type=int, default=32)
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--skip-full", action="store_true")
    args = parser.parse_args()

    grid = json.loads((ROOT / "grids" / "reference.json").read_text())
    block = grid["datasets"][args.dataset]
    figures: dict = {"method": args.method, "bits": args.bits, "dataset": args.dataset,
                     "cpus": os.cpu_count(), "head_epochs": block["epochs"],
                     "backbone": block["backbone"], "pool_size": grid["pool_size"]}
    with tempfile.TemporaryDirectory() as tmp:
        base = dict(method=args.method, dataset=args.dataset, bits=args.bits, seed=0,
                    device="cpu", out=Path(tmp) / "out", cache_dir=Path(tmp) / "cache",
                    pool_size=grid["pool_size"],
                    dataset_params=block.get("dataset_params", {}))
        if not args.skip_full:
            full = RunRequest(**base, epochs=12,
                              method_params={"encoder": "lightcnn", "augment": False})
            figures["full"] = _timed(full)
            figures["full_default"] = _timed(RunRequest(**base))
        head = RunRequest(**base, epochs=block["epochs"], regime="head",
                          backbone=block["backbone"])
        start = time.perf_counter()
        # the backbone and its features alone (lsh uses no stage-1 head: nothing else trains)
        train_stage1(replace(head, method="lsh", method_params={}))
        figures["backbone_s"] = round(time.perf_counter() - start, 2)
        figures["head_first"] = _timed(head)
        figures["head"] = _timed(head)
    if "full" in figures:
        for name in ("full", "full_default"):
            figures[f"speedup_vs_{name}"] = round(figures[name]["wall_s"]
                                                  / figures["head"]["wall_s"], 1)
    write_json_atomic(args.out, figures)
    print(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
