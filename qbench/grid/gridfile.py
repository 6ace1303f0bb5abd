"""The grid file: parse, check and expand it into cells (:class:`Cell`); the runner is
:mod:`qbench.grid.runner`.

Grid file (JSON)
----------------
::

    {
      "description": "free text",
      "methods":  ["float", "sign", "pq", "dqn", "dqn-ip"],    # methods or variant names
      "bits":     [12, 24, 32, 48],
      "seeds":    [0, 1, 2],
      "params":   {"*": {"dim": 64}, "dqn": {"refit_every": 5}, "dqn-ip": {...}},
      "variants": {"dqn-ip": {"method": "dqn", "params": {"loss": "ip"}}},
      "datasets": {
        "digits":  {"protocol": "standard", "epochs": null},
        "cifar10": {"epochs": 60, "params": {"*": {"encoder": "cnn"}},
                    "dataset_params": {}, "methods": [...], "bits": [...], "seeds": [...],
                    "resources": {"cpu": 2, "gpu": 0.25}}
      }
    }

- ``datasets``: one block per dataset; ``--dataset`` picks the block (a dataset without a
  block is an error). Block keys, all optional: ``protocol`` (null: the dataset's default),
  ``epochs`` (null: each method's default; given: ``RunRequest.epochs``), ``dataset_params``,
  ``params`` (as the top-level ``params``, applied after them), ``methods``, ``bits``,
  ``seeds`` replacing the top-level lists for this dataset, and ``resources``: what one run
  asks of a Ray node (``cpu``: whole CPUs, which are also its threads, default 1; ``gpu``: a
  GPU share, default 0; see :class:`qbench.grid.cells.RunResources`; the local backend
  ignores it).
- ``params``: method hyper-parameters by method name, variant name or ``"*"`` (every method
  that declares the parameter). A cell's parameters, later entries winning: top-level
  ``*``, method, variant definition, top-level variant name, then the same from the
  dataset block.
- ``variants``: a named method with fixed parameters. Its runs are stored under the variant
  name (``digits-standard-dqn-ip-12b-seed0.json``) while the result's ``method`` stays the
  base method; ``qbench compare`` labels such rows by their non-default parameters
  (``dqn[loss=ip]``). A variant name must not be a method name.
- ``--seeds`` on the command line replaces the file's seeds.

The file is checked (keys, types, method and parameter names) before anything runs; a
mistake there is a :class:`QbenchError`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qbench.core.errors import QbenchError, choice_error
from qbench.core.validation import SAFE_NAME, check_int, is_int
from qbench.data.pool import DEFAULT_POOL_SIZE
from qbench.grid.cells import Cell, RunResources
from qbench.run.results import read_json
from qbench.train.selection import RULES

RUN_KEYS = ("select", "split_seed", "pool_size", "tune")
TOP_KEYS = ("description", "datasets", "methods", "bits", "seeds", "params",
            "variants") + RUN_KEYS
BLOCK_KEYS = ("description", "protocol", "epochs", "dataset_params", "params", "methods",
              "bits", "seeds", "resources", "regime", "backbone") + RUN_KEYS
RESOURCE_KEYS = ("cpu", "gpu")
VARIANT_KEYS = ("method", "params", "description")
TUNE_KEYS = ("trials", "seed", "shared", "pruner", "parallel")
"""Keys of a grid's ``"tune"`` block (:mod:`qbench.grid.tuning` runs it)."""


def check_tune_spec(spec, where: str) -> None:
    """Raise :class:`QbenchError` unless ``spec`` is a valid ``"tune"`` object."""
    if not isinstance(spec, dict):
        raise QbenchError(f"{where}: 'tune' must be an object with 'trials' and 'seed'")
    unknown = sorted(set(spec) - set(TUNE_KEYS))
    if unknown:
        raise QbenchError(f"{where}: unknown key {unknown[0]!r} in 'tune'; allowed: "
                          + ", ".join(TUNE_KEYS))
    for key in ("trials", "seed", "parallel"):
        if key == "parallel" and key not in spec:
            continue
        value = spec.get(key)
        low = 0 if key == "seed" else 1
        check_int(value, f"{where}: 'tune.{key}'", low=low, what=f"an integer >= {low}")
    if not isinstance(spec.get("shared", False), bool):
        raise QbenchError(f"{where}: 'tune.shared' must be true or false")
    from qbench.grid.tune import PRUNERS

    if spec.get("pruner", "none") not in PRUNERS:
        raise QbenchError(f"{where}: 'tune.pruner' {spec['pruner']!r} is not allowed; "
                          "allowed: " + ", ".join(PRUNERS))




def load_grid(path: Path) -> dict:
    """Read a grid file and check its structure; errors name the file and the key."""
    path = Path(path)
    grid = read_json(path, "grid file")
    where = f"grid file {path}"
    if not isinstance(grid, dict):
        raise QbenchError(f"{where}: the top level must be an object")
    _check_keys(grid, TOP_KEYS, where)
    if not isinstance(grid.get("datasets"), dict) or not grid["datasets"]:
        raise QbenchError(f"{where}: 'datasets' must be an object with one block per dataset")
    _check_common(grid, where)
    for name, block in grid["datasets"].items():
        bwhere = f"{where}, datasets.{name}"
        if not isinstance(block, dict):
            raise QbenchError(f"{bwhere}: must be an object")
        _check_keys(block, BLOCK_KEYS, bwhere)
        _check_common(block, bwhere)
        if block.get("protocol") is not None and not isinstance(block["protocol"], str):
            raise QbenchError(f"{bwhere}: 'protocol' must be a string or null")
        epochs = block.get("epochs")
        if epochs is not None and (not is_int(epochs) or epochs < 1):
            raise QbenchError(f"{bwhere}: 'epochs' must be a positive integer or null")
        if not isinstance(block.get("dataset_params", {}), dict):
            raise QbenchError(f"{bwhere}: 'dataset_params' must be an object")
        _check_resources(block.get("resources", {}), f"{bwhere}, resources")
        _check_regime(block, bwhere)
    variants = grid.get("variants", {})
    if not isinstance(variants, dict):
        raise QbenchError(f"{where}: 'variants' must be an object")
    for name, spec in variants.items():
        vwhere = f"{where}, variants.{name}"
        if not SAFE_NAME.match(name):
            raise QbenchError(f"{vwhere}: a variant name may hold letters, digits, '_', '.', "
                              "'+' and '-' only")
        if not isinstance(spec, dict) or not isinstance(spec.get("method"), str):
            raise QbenchError(f"{vwhere}: must be an object with a 'method' name")
        _check_keys(spec, VARIANT_KEYS, vwhere)
        if not isinstance(spec.get("params", {}), dict):
            raise QbenchError(f"{vwhere}: 'params' must be an object")
    return grid


def _check_regime(block: dict, where: str) -> None:
    """A block's ``regime`` (full or head) and ``backbone`` (parameters, head only)."""
    from qbench.train.backbone import check_regime, resolve_backbone_params

    regime = block.get("regime", "full")
    try:
        check_regime(regime if isinstance(regime, str) else repr(regime))
        backbone = block.get("backbone", {})
        if not isinstance(backbone, dict):
            raise QbenchError("'backbone' must be an object of backbone parameters")
        if backbone and regime != "head":
            raise QbenchError("'backbone' applies to \"regime\": \"head\" only")
        resolve_backbone_params(backbone)
    except QbenchError as exc:
        raise QbenchError(f"{where}: {exc}") from None


def _check_keys(obj: dict, allowed: tuple[str, ...], where: str) -> None:
    unknown = sorted(set(obj) - set(allowed))
    if unknown:
        raise QbenchError(f"{where}: unknown key {unknown[0]!r}; allowed: {', '.join(allowed)}")


def _check_resources(resources: Any, where: str) -> None:
    if not isinstance(resources, dict):
        raise QbenchError(f"{where}: must be an object such as {{\"cpu\": 1, \"gpu\": 0.25}}")
    _check_keys(resources, RESOURCE_KEYS, where)
    cpu, gpu = resources.get("cpu", 1), resources.get("gpu", 0)
    if not is_int(cpu) or cpu < 1:
        raise QbenchError(f"{where}: 'cpu' must be a whole number of CPUs >= 1, got {cpu!r}")
    check_gpu_share(gpu, f"{where}: 'gpu'")


def check_gpu_share(gpu: Any, what: str) -> None:
    """A GPU share is a number >= 0: a fraction of one GPU, or a whole number of GPUs."""
    if isinstance(gpu, bool) or not isinstance(gpu, (int, float)) or not gpu >= 0 or (
            gpu > 1 and gpu != int(gpu)):
        raise QbenchError(f"{what} must be a GPU share: a fraction in [0, 1] or a whole "
                          f"number of GPUs, got {gpu!r}")


def grid_resources(grid: dict, dataset: str, gpus_per_run: float | None = None) -> RunResources:
    """What one run of ``dataset`` asks of a node: the block's ``resources``, with
    ``gpus_per_run`` (``--gpus-per-run``) replacing its GPU share when given."""
    block = grid["datasets"].get(dataset, {})
    resources = block.get("resources", {})
    if gpus_per_run is not None:
        check_gpu_share(gpus_per_run, "--gpus-per-run")
    gpu = resources.get("gpu", 0) if gpus_per_run is None else gpus_per_run
    return RunResources(cpu=resources.get("cpu", 1), gpu=float(gpu))


def _check_common(obj: dict, where: str) -> None:
    if "methods" in obj and (not isinstance(obj["methods"], list) or not obj["methods"]
                             or not all(isinstance(m, str) for m in obj["methods"])):
        raise QbenchError(f"{where}: 'methods' must be a non-empty list of names")
    for key, low in (("bits", 1), ("seeds", 0)):
        if key in obj and (not isinstance(obj[key], list) or not obj[key]
                           or not all(is_int(v) and v >= low for v in obj[key])):
            raise QbenchError(f"{where}: '{key}' must be a non-empty list of integers >= {low}")
        if key in obj and len(set(obj[key])) != len(obj[key]):
            twice = next(v for v in obj[key] if obj[key].count(v) > 1)
            raise QbenchError(f"{where}: '{key}' lists {twice} twice; each value once")
    params = obj.get("params", {})
    if not isinstance(params, dict) or not all(isinstance(v, dict) for v in params.values()):
        raise QbenchError(f"{where}: 'params' must map method names (or '*') to objects")
    if "tune" in obj:
        check_tune_spec(obj["tune"], where)
    if "select" in obj and obj["select"] not in RULES:
        raise choice_error(f"{where}: 'select'", obj["select"], RULES)
    for key in ("split_seed", "pool_size"):
        if key in obj and (not is_int(obj[key]) or obj[key] < 0):
            raise QbenchError(f"{where}: '{key}' must be an integer >= 0")


def expand_grid(grid: dict, dataset: str, *, seeds: list[int] | None = None,
                data_dir: Path | None = None, source: str = "grid") -> list[Cell]:
    """The cells of ``grid`` for ``dataset``, seed by seed, then method, then bits.

    Method, variant and parameter names are checked against the registry here.
    """
    from qbench.registry import DATASETS, METHODS

    where = f"grid file {source}"
    if dataset not in grid["datasets"]:
        raise QbenchError(f"{where} has no block for dataset {dataset!r}; blocks: "
                          + ", ".join(sorted(grid["datasets"])))
    block = grid["datasets"][dataset]
    names = block.get("methods", grid.get("methods"))
    bits_list = block.get("bits", grid.get("bits"))
    if not names or not bits_list:
        raise QbenchError(f"{where}: no 'methods' or no 'bits' for dataset {dataset}")
    if seeds is not None:
        if not seeds or not all(is_int(s) and s >= 0 for s in seeds):
            raise QbenchError(f"--seeds must be integers >= 0, got {seeds!r}")
        if len(set(seeds)) != len(seeds):
            twice = next(s for s in seeds if seeds.count(s) > 1)
            raise QbenchError(f"--seeds lists {twice} twice; each seed once")
        seed_list = list(seeds)
    else:
        seed_list = block.get("seeds", grid.get("seeds", [0]))

    try:
        dataset_params = DATASETS.resolve_params(dataset, block.get("dataset_params", {}))
        plugin = DATASETS.get(dataset)(dataset_params, data_dir)
        protocol = plugin.protocol(block.get("protocol")).name
    except QbenchError as exc:
        raise QbenchError(f"{where}, datasets.{dataset}: {exc}") from None
    requested_dp = {k: dataset_params[k] for k in block.get("dataset_params", {})}

    variants = grid.get("variants", {})
    methods = set(METHODS.names())
    for name, spec in variants.items():
        if name in methods:
            raise QbenchError(f"{where}: variant {name!r} has the name of a method; rename it")
        if spec["method"] not in methods:
            raise QbenchError(f"{where}: variant {name!r}: unknown method {spec['method']!r}; "
                              "allowed: " + ", ".join(sorted(methods)))
    unknown = [n for n in names if n not in methods and n not in variants]
    if unknown:
        raise QbenchError(f"{where}: unknown method {unknown[0]!r}; allowed: "
                          + ", ".join(sorted(methods | set(variants))))
    if len(set(names)) != len(names):
        raise QbenchError(f"{where}: a method is listed twice for dataset {dataset}")

    cell_params = {}
    for name in names:
        method = variants[name]["method"] if name in variants else name
        declared = {p.name for p in METHODS.get(method).params}
        requested: dict = {}
        for scope in (grid, block):
            table = scope.get("params", {})
            requested.update({k: v for k, v in table.get("*", {}).items() if k in declared})
            requested.update(table.get(method, {}))
            if scope is grid and name in variants:
                requested.update(variants[name].get("params", {}))
            if name in variants:
                requested.update(table.get(name, {}))
        try:
            resolved = METHODS.resolve_params(method, requested)
        except QbenchError as exc:
            raise QbenchError(f"{where}: {name}: {exc}") from None
        cell_params[name] = (method, {k: resolved[k] for k in requested})

    run = {key: block.get(key, grid.get(key, default)) for key, default in
           (("select", "best"), ("split_seed", 0), ("pool_size", DEFAULT_POOL_SIZE))}
    return [
        Cell(dataset, protocol, cell_params[name][0], name, int(bits), int(seed),
             dict(cell_params[name][1]), block.get("epochs"), dict(requested_dp), **run,
             regime=block.get("regime", "full"), backbone=dict(block.get("backbone", {})))
        for seed in seed_list for name in names for bits in bits_list
    ]
