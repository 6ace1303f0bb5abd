"""One run, end to end: dataset + protocol -> method -> evaluator -> one result file.

Every method goes through :func:`run_experiment`; the CLI and the grid runner call it.
All input is validated before any data is loaded or any model trained, and the result is
written atomically, so a bad input never leaves a file behind.
"""

from __future__ import annotations

import contextlib
import dataclasses
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from qbench.core.errors import QbenchError, choice_error
from qbench.core.provenance import code_version
from qbench.core.validation import check_int
from qbench.data.context import RunContext
from qbench.data.pool import DEFAULT_POOL_SIZE, selection_pool
from qbench.data.protocols import materialise
from qbench.eval.evaluator import evaluate, mean_average_precision
from qbench.registry import DATASETS, METHODS
from qbench.run.identity import RunChoices, check_replace, identity_tag, run_choices
from qbench.run.results import new_record, result_filename, write_json_atomic
from qbench.run.reuse import InputMemo, process_memo
from qbench.train.selection import RULES

DEVICES = ("auto", "cpu", "cuda")


@dataclass
class RunRequest:
    """What a user asks for; strings for params are parsed against the declarations."""

    method: str
    dataset: str = "digits"
    bits: int = 32
    seed: int = 0
    protocol: str | None = None
    epochs: int | None = None
    device: str = "auto"
    out: Path = Path("results")
    data_dir: Path | None = None
    method_params: dict = field(default_factory=dict)
    dataset_params: dict = field(default_factory=dict)
    progress: bool = False
    output_file: Path | None = None  # default: <out>/<result_filename(...)>
    split_seed: int = 0
    select: str = "best"
    pool_size: int = DEFAULT_POOL_SIZE
    cache_dir: Path | None = None  # default: $QBENCH_CACHE or <out>/cache
    use_cache: bool = True
    deterministic: bool = False
    tuning: dict | None = None  # {"trials", "best_value", "study"} when params were tuned
    regime: str = "full"  # or "head": methods train a shared head on a frozen backbone
    backbone: dict = field(default_factory=dict)  # backbone parameters (regime head)


def resolve_device(device: str) -> str:
    """'auto' -> 'cuda' when available else 'cpu'; 'cuda' or 'cuda:N' must exist."""
    import torch

    base, _, index = device.partition(":")
    if base not in DEVICES or (index and (base != "cuda" or not index.isdigit())):
        raise choice_error("device", device, DEVICES + ("cuda:N",))
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if base == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if not count:
            raise QbenchError(f"--device {device}: no CUDA device is available; allowed here: "
                              "auto, cpu")
        if index and int(index) >= count:
            raise QbenchError(f"--device {device}: only {count} CUDA device(s); allowed: "
                              + ", ".join(f"cuda:{i}" for i in range(count)))
    return device


def check_writable(folder: Path) -> None:
    """Raise unless files can be created in ``folder`` (created if missing)."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise QbenchError(f"--out {folder} is not writable: {exc.strerror or exc}") from None


@dataclass
class Prepared:
    """A validated request: plugin instances and resolved values, nothing loaded yet."""

    request: RunRequest
    method: object
    dataset_plugin: object
    protocol_spec: object
    device: str
    output_path: Path
    backbone: dict | None = None  # resolved backbone parameters (regime head), else None
    choices: RunChoices | None = None  # what the run chose (qbench.run.identity)


def check_data_dir(data_dir: Path | None) -> None:
    """Raise unless ``data_dir`` (``--data-dir``) is None or a directory."""
    if data_dir is not None and not Path(data_dir).is_dir():
        raise QbenchError(f"--data-dir {data_dir} is not a directory")


def resolve_method_params(method: str, params: dict, epochs: int | None = None) -> dict:
    """The parameters ``method`` runs with: ``params`` checked and completed with the
    declared defaults, ``epochs`` (``--epochs``) in place of the method's own where it
    declares one. The one rule for a run, a grid cell and a tuning trial."""
    requested = dict(params)
    if epochs is not None:
        check_int(epochs, "--epochs", low=1)
        if any(p.name == "epochs" for p in METHODS.get(method).params):
            requested["epochs"] = epochs
    return METHODS.resolve_params(method, requested)


def prepare(req: RunRequest) -> Prepared:
    """Validate every input of ``req`` (cheap checks only) and build the plugins."""
    if req.seed < 0:
        raise QbenchError(f"--seed must be a non-negative integer, got {req.seed}")
    if req.split_seed < 0:
        raise QbenchError(f"--split-seed must be a non-negative integer, got {req.split_seed}")
    if req.select not in RULES:
        raise choice_error("--select", req.select, RULES)
    if req.pool_size < 0:
        raise QbenchError(f"--pool-size must be >= 0 (0: all), got {req.pool_size}")
    method = METHODS.get(req.method)(resolve_method_params(req.method, req.method_params,
                                                          req.epochs))
    dataset_cls = DATASETS.get(req.dataset)
    if not isinstance(req.bits, int) or isinstance(req.bits, bool):
        raise QbenchError(f"--bits must be an integer, got {req.bits!r}")
    method.check_bits(req.bits)
    from qbench.train.backbone import check_regime, resolve_backbone_params

    check_regime(req.regime)
    if req.backbone and req.regime != "head":
        raise QbenchError("--backbone applies to --regime head only; got --regime "
                          f"{req.regime}")
    backbone = resolve_backbone_params(req.backbone) if req.regime == "head" else None
    check_data_dir(req.data_dir)
    dataset_plugin = dataset_cls(DATASETS.resolve_params(req.dataset, req.dataset_params),
                                 req.data_dir)
    protocol_spec = dataset_plugin.protocol(req.protocol)
    device = resolve_device(req.device)
    out = Path(req.out)
    choices = run_choices(req, method, dataset_plugin, backbone,
                          resolve_backbone_params({}) if backbone is not None else {})
    output_path = Path(req.output_file) if req.output_file else out / result_filename(
        req.dataset, protocol_spec.name, req.method, req.bits, req.seed, req.split_seed,
        req.regime, identity_tag(choices.identity))
    check_writable(output_path.parent)
    return Prepared(req, method, dataset_plugin, protocol_spec, device, output_path, backbone,
                    choices)


@contextlib.contextmanager
def torch_settings(deterministic: bool, device: str):
    """Deterministic switches (or cuDNN autotuning) for the run; torch's thread count and
    switches are restored afterwards."""
    import torch

    threads = torch.get_num_threads()
    saved = (torch.are_deterministic_algorithms_enabled(),
             torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    # The first call of use_deterministic_algorithms imports torch._dynamo (1.7 s): only
    # when the switch changes.
    switch = deterministic or saved[0]
    if switch:
        torch.use_deterministic_algorithms(deterministic, warn_only=True)
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = device.startswith("cuda") and not deterministic
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        if switch:
            torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved[2:]


def _context(prep: Prepared, memo: InputMemo | None = None
             ) -> tuple[RunContext, float, dict | None]:
    """Load the data, materialise the splits and the selection pool; in the head regime,
    put the frozen backbone's features in place of the inputs (trained or cached now):
    (context, load_s, the backbone's record or None). With a ``memo``
    (:mod:`qbench.run.reuse`) and the cache on, a dataset or features this process already
    loaded for the same inputs are reused (the record then says ``"reused": true``); with
    ``--no-cache`` nothing is kept, so every run trains its backbone anew."""
    from qbench.train.encoder_cache import EncoderCache, cache_root

    req = prep.request
    root = cache_root(req.cache_dir, req.out, req.use_cache)
    if root is None:
        memo = None  # --no-cache: nothing is kept, in memory either
    t0 = time.perf_counter()
    source = [req.dataset, prep.dataset_plugin.params, str(req.data_dir), str(root)]
    if memo is None:
        dataset = prep.dataset_plugin.load_cached(root)
    else:
        dataset, _ = memo.get(["dataset", source],
                              lambda: prep.dataset_plugin.load_cached(root))
    load_s = time.perf_counter() - t0
    splits = materialise(dataset, prep.protocol_spec, req.split_seed, Path(req.out) / "splits")
    pool = selection_pool(splits, dataset.y, cap=req.pool_size, seed=req.split_seed)
    cache = EncoderCache(root) if root is not None else None
    ctx = RunContext(dataset, splits, req.bits, req.seed, prep.device, req.progress,
                     select=req.select, pool=pool, cache=cache)
    if prep.backbone is None:
        return ctx, load_s, None
    from qbench.train.backbone import backbone_context

    if memo is None:
        ctx, record = backbone_context(ctx, prep.backbone)
        return ctx, load_s, record
    t0 = time.perf_counter()
    # what the backbone's cache key depends on besides the data (the selection pool and
    # rule do not: the features are those of its last epoch)
    key = ["features", source, prep.protocol_spec.name, req.split_seed, req.seed,
           prep.backbone, prep.device]
    (features, record), reused = memo.get(
        key, lambda: (lambda c, r: (c.dataset, r))(*backbone_context(ctx, prep.backbone)))
    if reused:  # found in memory: neither trained nor read from the cache by this run
        record = {**record, "cache": "hit", "features_cache": "hit", "reused": True,
                  "train_s": 0.0, "seconds": time.perf_counter() - t0}
    return dataclasses.replace(ctx, dataset=features), load_s, record


@contextlib.contextmanager
def _no_leftover_out(out: Path):
    """A failed run leaves no empty folder under an --out that it created (what it did
    write, such as split files or a trained encoder in the cache, stays)."""
    existed = Path(out).exists()
    try:
        yield
    except BaseException:
        if not existed and Path(out).is_dir():
            for folder in sorted((p for p in Path(out).rglob("*") if p.is_dir()),
                                 key=lambda p: len(p.parts), reverse=True) + [Path(out)]:
                with contextlib.suppress(OSError):
                    folder.rmdir()  # only empty folders go
        raise


def train_stage1(req: RunRequest) -> dict | None:
    """Train (or find) the shared stage-1 encoder that ``req``'s method uses, in the cache;
    ``{"key", "cache"}``, or None when the method uses none. Grid backends run this once
    per distinct encoder before the runs that depend on it."""
    from qbench.train.encoder_cache import stage1_encoder

    prep = prepare(req)
    spec = prep.method.stage1_spec(req.bits)
    if not req.use_cache or (spec is None and prep.backbone is None):
        return None
    with torch_settings(req.deterministic, prep.device):
        # trains or finds the backbone (regime head)
        ctx, _, backbone = _context(prep, process_memo())
        if spec is None:
            return {"key": backbone["key"], "cache": backbone["cache"]}
        encoder = stage1_encoder(ctx, prep.method.params, spec[0], tanh=spec[1])
    return encoder.provenance


def run_selection(req: RunRequest, report=None, memo: InputMemo | None = None) -> dict:
    """Train and select as :func:`run_experiment` does, without touching the query split:
    the ``selection`` record (tuning's objective reads ``chosen_value``). ``report(epoch,
    value) -> stop`` is a tuning trial's reporter (:attr:`RunContext.report`); ``memo``:
    inputs kept between the trials of a study (else this process's, if it has one)."""
    with _no_leftover_out(Path(req.out)):
        prep = prepare(req)
        with torch_settings(req.deterministic, prep.device):
            ctx, _, _ = _context(prep, memo if memo is not None else process_memo())
            ctx.report = report
            output = prep.method.run_selection(ctx)
    if output.selection is None:
        raise QbenchError(f"method {req.method} trains and fits nothing: nothing to select")
    return output.selection


def run_experiment(req: RunRequest) -> tuple[Path, dict]:
    """Train, encode, search and evaluate; write and return (path, result)."""
    with _no_leftover_out(Path(req.out)):
        prep = prepare(req)
        check_replace(prep.output_path, prep.choices)  # before any work, and again below
        with torch_settings(req.deterministic, prep.device):
            return _run(prep)


def _run(prep: Prepared) -> tuple[Path, dict]:
    req = prep.request
    started = time.perf_counter()
    ctx, load_s, backbone = _context(prep, process_memo())
    splits = ctx.splits
    output = prep.method.run(ctx)
    q_labels, db_labels = ctx.y("query"), ctx.y("database")
    k = prep.protocol_spec.map_k
    ev = evaluate(output.codes, q_labels, db_labels, k=k, device=prep.device)
    metrics = dict(ev.metrics)
    if output.float_codes is not None:
        if prep.method.family == "float":
            float_map = metrics["map_all"]
        else:
            # MAP@all alone (no tie-aware pass, curves or card): the same ranking and AP
            float_map = mean_average_precision(output.float_codes, q_labels, db_labels,
                                               device=prep.device)
        metrics["float_map_all"] = float_map
        metrics["retention"] = metrics["map_all"] / float_map if float_map > 0 else None

    backbone_s = {"backbone_s": backbone["seconds"]} if backbone else {}
    timings = {"load_s": load_s, **backbone_s, **output.timings, **ev.timings,
               "total_s": time.perf_counter() - started}
    result = new_record({
        "method": req.method,
        "family": prep.method.family,
        "description": prep.method.description,
        "dataset": req.dataset,
        "dataset_params": prep.dataset_plugin.params,
        "dataset_source": ctx.dataset.source,
        # the raw data's checksum in both regimes (the features' is in ``backbone``)
        "dataset_checksum": backbone["data_checksum"] if backbone else ctx.dataset.checksum,
        "protocol": prep.protocol_spec.name,
        "protocol_description": prep.protocol_spec.description,
        "bits": req.bits,
        "seed": req.seed,
        "split_seed": req.split_seed,
        "params": prep.method.params,
        "run_identity": prep.choices.identity,
        "regime": req.regime,
        "backbone": backbone,
        "selection": output.selection,
        "tuning": req.tuning,
        "encoder_key": (output.encoder or {}).get("key"),
        "encoder_cache": (output.encoder or {}).get("cache"),
        "deterministic": req.deterministic,
        "code_version": code_version(),
        "method_info": output.info,
        "splits": splits.summary(),
        "metrics": metrics,
        "curves": ev.curves,
        "per_query_ap": ev.per_query_ap,
        "timings": timings,
        "cost": {
            "bytes_per_code": output.codes.bytes_per_code,
            "database_bytes": output.codes.bytes_per_code * len(splits.database),
            "queries_per_s": ev.timings.get("queries_per_s"),
        },
        "metric_card": ev.metric_card,
    }, device=prep.device)
    # a result of another run may have arrived while this one trained: never replace it
    check_replace(prep.output_path, prep.choices)
    write_json_atomic(prep.output_path, result)
    return prep.output_path, result
