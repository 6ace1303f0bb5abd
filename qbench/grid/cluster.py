"""Ray plumbing, and the only module that imports Ray (the optional extra
``pip install 'qbench[ray]'``, imported only once something is to run): joining a cluster,
checking its resources and shared folders, the device of a task, and the ask-and-tell loop
that runs tuning trials as Ray tasks. The Ray grid backend (:mod:`qbench.grid.backends.ray`)
and tuning (:mod:`qbench.grid.tune`) both stand on it.

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
"""

from __future__ import annotations

import contextlib
import logging
import socket
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from qbench.core.cores import set_worker_threads
from qbench.core.errors import QbenchError, one_line
from qbench.core.validation import check_int
from qbench.grid.cells import RunResources

MAX_RETRIES = 3
"""How often Ray reruns a task whose worker process died (killed, out of memory)."""

INSTALL_HINT = "pip install 'qbench[ray]' (or: pip install 'ray[client]>=2.9')"
STOP_POLL_S = 1.0
"""Seconds between two looks at a ``stop`` event while trials run."""
CONNECT_TIMEOUT_S = 5.0
"""Seconds to wait for the head node's port before calling the address unreachable."""


class Stopped(QbenchError):
    """A trial cancelled because the driver stopped (:func:`run_trials`'s ``stop``)."""


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


def task_device(device: str, resources: RunResources) -> str:
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


def _evaluate(evaluate: Callable[[dict], Any], params: dict, threads: int) -> Any:
    """Task: one trial's ``evaluate(params)`` with ``threads`` threads."""
    set_worker_threads(threads)
    return evaluate(params)


def run_trials(ask: Callable[[], tuple[Any, dict] | None], evaluate: Callable[[dict], Any],
               tell: Callable[[Any, Any, BaseException | None], None], *, parallel: int,
               address: str | None = None, resources: RunResources | None = None,
               beat: Callable[[list], None] | None = None, beat_s: float = 30.0,
               stop=None) -> None:
    """Ask-and-tell on Ray: the driver alone talks to the study; workers only evaluate.

    ask(): the next trial's ``(token, params)``, or None when no more trials should start
        (budget reached, timeout); called in this process.
    evaluate(params): runs in a Ray task (picklable; a closure is fine) with
        ``resources.cpu`` threads; up to ``parallel`` run at once.
    tell(token, value, error): called in this process as each finishes, with ``error``
        None, or the exception ``evaluate`` raised (value None), or the Ray error of a
        trial whose worker died more than :data:`MAX_RETRIES` times.
    beat(tokens): called with the tokens in flight at least every ``beat_s`` seconds (the
        study's heartbeats of the trials this driver runs).
    stop: a :class:`threading.Event` (another thread of the driver stopping it); once set,
        no trial starts, and each in flight is cancelled and told ``error`` :class:`Stopped`.
    """
    ray = _ray()
    resources = resources or RunResources()
    check_int(parallel, "--parallel", low=1)
    connected = connect(address)
    try:
        check_resources(resources, ray.nodes())
        task = ray.remote(_evaluate).options(num_cpus=resources.cpu, num_gpus=resources.gpu,
                                             max_retries=MAX_RETRIES)
        in_flight: dict = {}
        asking = True
        last_beat = time.monotonic()
        try:
            while True:
                while asking and len(in_flight) < parallel:
                    asked = None if stop is not None and stop.is_set() else ask()
                    if asked is None:
                        asking = False
                    else:
                        in_flight[task.remote(evaluate, asked[1], resources.cpu)] = asked[0]
                if not in_flight:
                    return
                if stop is not None and stop.is_set():
                    for ref, token in list(in_flight.items()):
                        ray.cancel(ref, force=True)
                        tell(token, None, Stopped("the grid stopped before this trial ended"))
                        del in_flight[ref]
                    return
                wait_s = beat_s if beat is not None else None
                if stop is not None:  # look at ``stop`` at least once a second
                    wait_s = min(wait_s or STOP_POLL_S, STOP_POLL_S)
                done, _ = ray.wait(list(in_flight), num_returns=1, timeout=wait_s)
                if beat is not None and (done or time.monotonic() - last_beat >= beat_s):
                    beat(list(in_flight.values()))
                    last_beat = time.monotonic()
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
        except BaseException as exc:
            for ref, token in in_flight.items():
                ray.cancel(ref, force=True)
                with contextlib.suppress(Exception):  # never left RUNNING if it can be told
                    tell(token, None, Stopped(f"the driver stopped: {one_line(exc)}"))
            raise
    finally:
        if connected:
            ray.shutdown()
