"""The Ray backend: a grid's runs (and tuning trials) as Ray tasks on a cluster.

Ray is the optional extra ``pip install 'qbench[ray]'``; this is the only module that
imports it, and only once something is to run.

Cluster
-------
``address`` None joins the cluster started on this machine with ``ray start`` or else
starts one; "auto", "HOST:PORT" (the head's GCS port) or "ray://HOST:PORT" (Ray Client)
join that one. Results (``--out``) and the cache (``--cache-dir`` / ``$QBENCH_CACHE``)
must be on storage every node reaches (a shared filesystem path: NFS, Lustre, ...): the
encoder cache shares trained encoders between nodes through it (``fcntl`` locks and
atomic renames). Before anything runs, a probe task on every node checks that it sees
both folders (a marker file the driver wrote there) and can write to them, and the
resources a run asks for are checked against the nodes, since Ray would leave a task no
node can hold pending forever.

Task graph
----------
One task per distinct stage-1 encoder (cells grouped by :func:`qbench.grid.worker.stage1_group`)
calls :func:`qbench.run.pipeline.train_stage1`; every run task that uses the encoder takes that
task's ObjectRef as an argument, so Ray starts it once the encoder is in the cache. A run
task asks for the grid's :class:`qbench.grid.backends.base.RunResources` (its CPUs are also its
threads, as a local worker's cores // jobs) and runs :func:`qbench.grid.worker.execute_cell` with
the result written to a folder local to its worker; it returns the outcome with the result
record, which the driver writes into ``--out``. A worker process that dies is retried by
Ray (:data:`MAX_RETRIES`) and leaves no partial or duplicate result; an exception in a run
is a failed outcome, recorded under ``failed/`` as in the local backend.
"""

from __future__ import annotations

import importlib.util
import logging
import socket
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qbench.core.errors import QbenchError, one_line
from qbench.grid.backends.base import CellOptions, RunResources
from qbench.grid.worker import Outcome, execute_cell, set_worker_threads, stage1_group
from qbench.run.results import read_json

if TYPE_CHECKING:
    from qbench.grid.gridfile import Cell

MAX_RETRIES = 3
"""How often Ray reruns a task whose worker process died (killed, out of memory)."""

INSTALL_HINT = "pip install 'qbench[ray]' (or: pip install 'ray[client]>=2.9')"
CONNECT_TIMEOUT_S = 5.0
"""Seconds to wait for the head node's port before calling the address unreachable."""


def _ray():
    """The ray module, or a one-line error saying how to install it."""
    try:
        import ray
    except ImportError:
        raise QbenchError(f"--backend ray needs Ray, which is not installed: {INSTALL_HINT}") \
            from None
    return ray


def _check_reachable(address: str) -> None:
    """Fail fast on a HOST:PORT or ray://HOST:PORT nobody answers on (``ray.init`` would
    retry for minutes)."""
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit():
        raise QbenchError(f"--address {address!r}: expected auto, HOST:PORT or ray://HOST:PORT")
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        raise QbenchError(f"--address {address}: no Ray cluster answers there "
                          f"({exc.strerror or exc}); start one with `ray start --head` or "
                          "check the host and port") from None


def connect(address: str | None) -> bool:
    """Join the Ray cluster at ``address`` (None: this machine's, else a new local one).

    Returns True when this call connected (the caller then disconnects), False when this
    process was already connected. Failures are one-line :class:`QbenchError`.
    """
    ray = _ray()
    if ray.is_initialized():
        return False
    if address not in (None, "auto", "local"):
        _check_reachable(address)
    try:
        ray.init(address=address, logging_level=logging.WARNING)
    except Exception as exc:  # noqa: BLE001 -- ray raises many kinds; all mean "not joined"
        raise QbenchError(f"--address {address or '(none: local)'}: cannot join a Ray "
                          f"cluster: {one_line(exc)}") from None
    return True


def check_resources(resources: RunResources, nodes: list[dict]) -> None:
    """Raise unless some alive node of ``nodes`` (``ray.nodes()``) can hold one run."""
    alive = [n.get("Resources", {}) for n in nodes if n.get("Alive")]
    cpu, gpu = resources.cpu, resources.gpu
    if gpu > 0 and not any(r.get("GPU", 0) > 0 for r in alive):
        raise QbenchError(f"each run asks for {gpu:g} GPU (the grid file's 'resources' or "
                          "--gpus-per-run), but the Ray cluster has no GPU; ask for "
                          "--gpus-per-run 0")
    if not any(r.get("CPU", 0) >= cpu and r.get("GPU", 0) >= gpu for r in alive):
        largest = max(alive, key=lambda r: (r.get("CPU", 0), r.get("GPU", 0)), default={})
        raise QbenchError(f"each run asks for {cpu} CPU and {gpu:g} GPU, more than any node "
                          f"of the Ray cluster has (the largest: {largest.get('CPU', 0):g} CPU, "
                          f"{largest.get('GPU', 0):g} GPU); lower the grid file's 'resources' "
                          "or --gpus-per-run")


def run_device(device: str, resources: RunResources) -> str:
    """The device of a run task: "auto" is "cuda" with a GPU share and "cpu" without."""
    if device == "cuda" and resources.gpu == 0:
        raise QbenchError("--device cuda on Ray needs a GPU share per run: set "
                          "--gpus-per-run or the grid file's 'resources'")
    if device == "cpu" and resources.gpu > 0:
        raise QbenchError(f"--device cpu, but each run asks for {resources.gpu:g} GPU; "
                          "add --gpus-per-run 0")
    if device == "auto":
        return "cuda" if resources.gpu > 0 else "cpu"
    return device


def _probe_folders(folders: list[tuple[str, str, str]]) -> list[str]:
    """On one node: a problem for every (label, folder, marker) whose folder this node does
    not share with the driver (no marker) or cannot write to."""
    import ray

    node = ray.util.get_node_ip_address()
    problems = []
    for label, folder, marker in folders:
        if not (Path(folder) / marker).is_file():
            problems.append(f"{label} {folder} is not the driver's folder on node {node}")
            continue
        try:
            with tempfile.TemporaryFile(dir=folder):
                pass
        except OSError as exc:
            problems.append(f"{label} {folder} is not writable on node {node}: "
                            f"{exc.strerror or exc}")
    return problems


def check_folders(folders: dict[str, Path]) -> None:
    """Raise unless every alive node sees and can write each folder (label -> folder)."""
    ray = _ray()
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    marker = f".qbench-probe-{uuid.uuid4().hex}"
    paths = [(label, str(Path(folder).resolve()), marker) for label, folder in folders.items()]
    for _, folder, _ in paths:
        (Path(folder) / marker).touch()
    try:
        probe = ray.remote(_probe_folders)
        refs = [probe.options(num_cpus=0, max_retries=MAX_RETRIES,
                              scheduling_strategy=NodeAffinitySchedulingStrategy(
                                  n["NodeID"], soft=False)).remote(paths)
                for n in ray.nodes() if n.get("Alive")]
        problems = [p for found in ray.get(refs) for p in found]
    finally:
        for _, folder, _ in paths:
            (Path(folder) / marker).unlink(missing_ok=True)
    if problems:
        raise QbenchError(f"{problems[0]}: results and the cache must be on storage every "
                          "node of the Ray cluster reaches (a shared filesystem path)")


class _WriteInto:
    """A runner that writes its result file into ``folder`` instead of ``--out``."""

    def __init__(self, runner: Callable, folder: Path):
        self.runner, self.folder = runner, folder

    def __call__(self, request) -> tuple[Path, dict]:
        return self.runner(replace(request, output_file=self.folder / request.output_file.name))


def _train_stage1(cell: Cell, options: CellOptions, threads: int) -> dict:
    """Task: train (or find) ``cell``'s stage-1 encoder in the cache; {"key", "cache"}, or
    {"error"}: its runs then meet the same error themselves and are recorded as failed."""
    import torch

    from qbench.run.pipeline import train_stage1

    set_worker_threads(threads)
    torch.set_num_threads(threads)
    try:
        return train_stage1(cell.request(options.out, options.data_dir, options.device,
                                         cache_dir=options.cache_dir,
                                         use_cache=options.use_cache)) or {}
    except Exception as exc:  # noqa: BLE001 -- reported by the runs that depend on it
        return {"error": one_line(exc)}


def _run_cell(cell: Cell, options: CellOptions, threads: int, *encoder: dict) -> Outcome:
    """Task: run ``cell`` once its stage-1 ``encoder`` task (if any) is done; the outcome
    carries the result record for the driver to write."""
    set_worker_threads(threads)
    with tempfile.TemporaryDirectory(prefix="qbench-run-") as folder:
        outcome = execute_cell(cell, options.out, options.data_dir, options.device,
                               _WriteInto(options.runner, Path(folder)), options.cache_dir,
                               options.use_cache)
        if outcome.ok:
            outcome.result = read_json(Path(outcome.path), "result")
            outcome.path = str(Path(options.out) / cell.filename)
    return outcome


class RayBackend:
    """Cells as Ray tasks, after one stage-1 task per distinct encoder; see the module
    docstring."""

    def __init__(self, address: str | None, resources: RunResources | None = None):
        if importlib.util.find_spec("ray") is None:
            raise QbenchError(f"--backend ray needs Ray, which is not installed: {INSTALL_HINT}")
        self.address = address
        self.resources = resources or RunResources()

    def run(self, cells: list[Cell], options: CellOptions,
            report: Callable[[Outcome], None]) -> None:
        """Connect, check resources and folders, submit the task graph, report outcomes."""
        options = replace(options, device=run_device(options.device, self.resources))
        ray = _ray()
        connected = connect(self.address)
        try:
            check_resources(self.resources, ray.nodes())
            folders = {"--out": options.out}
            if options.cache_dir is not None:
                folders["the cache"] = options.cache_dir
            check_folders(folders)
            refs = self._submit(cells, options)
            self._collect(refs, report)
        finally:
            if connected:
                ray.shutdown()

    def _submit(self, cells: list[Cell], options: CellOptions) -> dict:
        """Submit one stage-1 task per encoder group, then every cell; ObjectRef -> cell."""
        ray = _ray()
        task = {"num_cpus": self.resources.cpu, "num_gpus": self.resources.gpu,
                "max_retries": MAX_RETRIES}
        train = ray.remote(_train_stage1).options(**task)
        run = ray.remote(_run_cell).options(**task)
        stage1: dict[tuple, Any] = {}
        refs = {}
        for cell in cells:
            group = (stage1_group(cell, options.out, options.data_dir)
                     if options.use_cache else None)
            if group is not None and group not in stage1:
                stage1[group] = train.remote(cell, options, self.resources.cpu)
            depends = [stage1[group]] if group is not None else []
            refs[run.remote(cell, options, self.resources.cpu, *depends)] = cell
        return refs

    @staticmethod
    def _collect(refs: dict, report: Callable[[Outcome], None]) -> None:
        """Report each outcome as it finishes; a task Ray gave up on is a failed outcome.
        An interruption cancels every task still pending."""
        ray = _ray()
        remaining = list(refs)
        try:
            while remaining:
                done, remaining = ray.wait(remaining, num_returns=1)
                for ref in done:
                    try:
                        outcome = ray.get(ref)
                    except ray.exceptions.RayError as exc:
                        outcome = Outcome(refs[ref].stem, False, 0.0,
                                          error_type=type(exc).__name__,
                                          message=f"Ray gave up on the run: {one_line(exc)}")
                    report(outcome)
        except BaseException:
            for ref in remaining:
                ray.cancel(ref, force=True)
            raise


def _evaluate(evaluate: Callable[[dict], Any], params: dict, threads: int) -> Any:
    """Task: one trial's ``evaluate(params)`` with ``threads`` threads."""
    import torch

    set_worker_threads(threads)
    torch.set_num_threads(threads)
    return evaluate(params)


def run_trials(ask: Callable[[], tuple[Any, dict] | None], evaluate: Callable[[dict], Any],
               tell: Callable[[Any, Any, BaseException | None], None], *, parallel: int,
               address: str | None = None, resources: RunResources | None = None) -> None:
    """Ask-and-tell on Ray: the driver alone talks to the study; workers only evaluate.

    ask(): the next trial's ``(token, params)``, or None when no more trials should start
        (budget reached, timeout); called in this process.
    evaluate(params): runs in a Ray task (picklable; a closure is fine) with
        ``resources.cpu`` threads; up to ``parallel`` run at once.
    tell(token, value, error): called in this process as each finishes, with ``error``
        None, or the exception ``evaluate`` raised (value None), or the Ray error of a
        trial whose worker died more than :data:`MAX_RETRIES` times.
    """
    ray = _ray()
    resources = resources or RunResources()
    if isinstance(parallel, bool) or not isinstance(parallel, int) or parallel < 1:
        raise QbenchError(f"--parallel must be a positive integer, got {parallel!r}")
    connected = connect(address)
    try:
        check_resources(resources, ray.nodes())
        task = ray.remote(_evaluate).options(num_cpus=resources.cpu, num_gpus=resources.gpu,
                                             max_retries=MAX_RETRIES)
        in_flight: dict = {}
        asking = True
        try:
            while True:
                while asking and len(in_flight) < parallel:
                    asked = ask()
                    if asked is None:
                        asking = False
                    else:
                        in_flight[task.remote(evaluate, asked[1], resources.cpu)] = asked[0]
                if not in_flight:
                    return
                done, _ = ray.wait(list(in_flight), num_returns=1)
                for ref in done:
                    token = in_flight.pop(ref)
                    try:
                        value = ray.get(ref)
                    except ray.exceptions.RayTaskError as exc:
                        tell(token, None, getattr(exc, "cause", None) or exc)
                    except ray.exceptions.RayError as exc:
                        tell(token, None, exc)
                    else:
                        tell(token, value, None)
        except BaseException:
            for ref in in_flight:
                ray.cancel(ref, force=True)
            raise
    finally:
        if connected:
            ray.shutdown()
