"""The resumable grid runner: expand a grid file, skip finished runs, isolate failures.

The grid file's format, checks and expansion into cells are :mod:`qbench.grid.gridfile`.

Running
-------
Cells are (method or variant, bits, seed) for the chosen dataset, expanded seed by seed
(the local backend submits them round-robin over seeds, so that parallel workers train
different stage-1 encoders). Each cell's result goes to
``<out>/<result_filename(dataset, protocol, name, bits, seed, split_seed)>``. A cell is
skipped only when that file is current (:func:`cell_status`: same schema, resolved
parameters, selection rule, pool size, split seed, split and dataset checksums, tuning
record and code version); otherwise it runs (an invalid or stale file is overwritten,
except a result of another run, :mod:`qbench.run.identity`: that cell fails and the file
stays).
A run that raises any :class:`Exception` (including :class:`QbenchError`) is recorded in
``<out>/failed/<result name>.failed.json`` (error type, message, traceback, cell) and the
grid goes on; failed cells run again on the next invocation and a success removes the
record.

Where cells run is the backend's business (:mod:`qbench.grid.backends`; the caller
hands :func:`run_grid` a backend object, default the local one in this process): ``local`` (the
default) runs them in this process or, with ``jobs`` > 1, in that many worker processes
(each with cores // jobs threads for torch, faiss and BLAS); ``ray`` runs each as a Ray
task on a cluster, after one task per distinct stage-1 encoder
(:func:`qbench.grid.worker.stage1_group`).
This module plans, records outcomes and writes failure records, the same for every
backend. KeyboardInterrupt / SystemExit stop the grid; results are written atomically, so
rerunning the same command resumes without redoing finished runs.

Grids started on one ``--out`` at once (local backend) share its cells: each cell runs
under its lock in ``<out>/.locks/``, and a grid that gets a cell's lock after another grid
wrote its result skips it, so every cell runs once.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path

from qbench.core.errors import QbenchError
from qbench.core.provenance import code_version
from qbench.grid.backends import Backend, make_backend
from qbench.grid.cells import Cell, CellOptions, Outcome
from qbench.grid.gridfile import expand_grid, grid_resources, load_grid
from qbench.grid.tuning import final_cells, studies_finished, tune_cells
from qbench.grid.worker import run_pipeline
from qbench.run.identity import check_replace, conflicts
from qbench.run.results import FAILURE_SUFFIX, load_result, new_record, write_json_atomic

FAILED_DIR = "failed"
LOCK_DIR = ".locks"
"""Under ``--out``: one lock file per cell, held while the cell runs (local backend)."""


@dataclass
class GridSummary:
    """Result names of the cells run now (done), skipped as finished, and failed."""

    grid_file: Path
    dataset: str
    out: Path
    jobs: int
    backend: str = "local"
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    run_s: float = 0.0
    stale: int = 0  # cells rerun because their result was stale
    clashes: int = 0  # cells not run: their file holds a result of another run

    def describe(self) -> str:
        """One paragraph: counts, time, where results and failures are."""
        total = len(self.done) + len(self.skipped) + len(self.failed)
        if total and len(self.skipped) == total:
            return (f"Grid {self.grid_file} on {self.dataset}: all {total} runs are already "
                    f"finished in {self.out}; nothing to run.")
        minutes, seconds = divmod(self.wall_s, 60)
        text = (f"Grid {self.grid_file} on {self.dataset}: {total} runs — {len(self.done)} "
                f"done now ({self.stale} of them were stale), {len(self.skipped)} skipped "
                f"(already finished), "
                f"{len(self.failed)} failed; {int(minutes)} min {seconds:.1f} s wall time "
                + (f"with {self.jobs} job{'s' if self.jobs != 1 else ''}"
                   if self.backend == "local" else f"on {self.backend}")
                + f" (the runs took {self.run_s:.1f} s together). Results are in {self.out}.")
        if self.failed:
            text += (f" Failures are recorded in {Path(self.out) / FAILED_DIR}/ "
                     f"(e.g. {self.failed[0]}{FAILURE_SUFFIX}); rerun the same command to "
                     "retry them without redoing finished runs.")
        if self.clashes:
            text += (f" {self.clashes} of the failed cells were not run: their files hold "
                     "results of other runs (other choices), which a grid never replaces; "
                     "use another --out for this grid, or remove those files.")
        return text


# -- one cell ------------------------------------------------------------------------------


def cell_status(cell: Cell, out: Path, checksums: tuple[str, str] | None = None, *,
                tuning_pending: bool = False) -> tuple[str, str]:
    """("done", "") when the cell's result exists and is current; else ("to-run", why),
    ("stale", why), or ("clash", why) when the file holds a result of another run (other
    choices, :mod:`qbench.run.identity`), which the grid never replaces and does not run.
    ``tuning_pending``: the grid has not tuned yet (a dry run), so which study tunes the
    cell is not compared.

    Current means: it validates (same schema version), records the cell's dataset,
    protocol, method, bits, seed, split seed, selection rule and pool size, the same
    *resolved* parameters (defaults included), the same split and dataset checksums
    (``checksums``, when given) and the
    same code version (:func:`qbench.core.provenance.code_version`).
    """
    path = Path(out) / cell.filename
    if not path.is_file():
        return "to-run", "no result yet"
    try:
        res = load_result(path)
    except QbenchError as exc:
        return "stale", str(exc).removeprefix(f"{path}: ")
    recorded = (res["dataset"], res["protocol"], res["method"], res["bits"], res["seed"],
                res["split_seed"])
    wanted = (cell.dataset, cell.protocol, cell.method, cell.bits, cell.seed, cell.split_seed)
    if recorded != wanted:
        return "stale", f"records {recorded}, the cell is {wanted}"
    clash = conflicts(res, cell.choices(out), ignore_tuned_by=tuning_pending)
    if clash:
        return "clash", (f"holds a result of another run ({'; '.join(clash)}); a grid never "
                         "replaces it: use another --out, or remove the file")
    selection = res.get("selection") or {}
    if selection.get("rule", cell.select) != cell.select:
        return "stale", f"selected by {selection.get('rule')!r}, the grid asks {cell.select!r}"
    if selection.get("pool_size", cell.pool_size) != cell.pool_size:
        return "stale", f"pool size {selection.get('pool_size')}, the grid asks {cell.pool_size}"
    if res.get("regime", "full") != cell.regime:
        return "stale", f"regime {res.get('regime', 'full')!r}, the grid asks {cell.regime!r}"
    if ((res.get("backbone") or {}).get("params")) != cell.resolved_backbone:
        return "stale", "the backbone's parameters changed"
    if res.get("tuning") != cell.tuning:
        return "stale", "its tuning record differs from the grid's studies"
    params = cell.resolved
    changed = sorted(k for k in set(params) | set(res["params"])
                     if params.get(k) != res["params"].get(k))
    if changed:
        k = changed[0]
        return "stale", f"parameter {k}: recorded {res['params'].get(k)!r}, now {params.get(k)!r}"
    if (res.get("dataset_params") or {}) != cell.resolved_dataset_params:
        return "stale", "dataset parameters changed"
    if checksums is not None and res["splits"].get("checksum") != checksums[0]:
        return "stale", "the split changed (checksum differs)"
    if checksums is not None and res.get("dataset_checksum") != checksums[1]:
        return "stale", "the data changed (dataset checksum differs)"
    if res["code_version"] != code_version():
        return "stale", f"made by other code (version {res['code_version']}, now {code_version()})"
    return "done", ""


def data_checksums(cell: Cell, out: Path, data_dir: Path | None,
                   cache_dir: Path | None) -> tuple[str, str]:
    """(split checksum, dataset checksum) of the data the grid's cells use (loads it once)."""
    from qbench.data.protocols import materialise
    from qbench.run.pipeline import prepare

    prep = prepare(cell.request(out, data_dir, "cpu", cache_dir=cache_dir))
    dataset = prep.dataset_plugin.load_cached(cache_dir)
    splits = materialise(dataset, prep.protocol_spec, cell.split_seed, Path(out) / "splits")
    return splits.checksum, dataset.checksum


def failure_path(out: Path, cell: Cell) -> Path:
    """Where the failure record of ``cell`` lives."""
    return Path(out) / FAILED_DIR / f"{cell.stem}{FAILURE_SUFFIX}"


def record_failure(out: Path, cell: Cell, outcome: Outcome, grid_file: Path) -> Path:
    """Write the failure record of ``cell`` atomically; return its path. A record that
    cannot be written (a full disk, an unwritable folder) raises :class:`QbenchError`."""
    path = failure_path(out, cell)
    record = new_record({
        "grid_file": str(grid_file),
        "cell": {f.name: getattr(cell, f.name) for f in fields(cell) if f.init},
        "result_file": cell.filename,
        "error_type": outcome.error_type,
        "message": outcome.message,
        "traceback": outcome.traceback,
        "seconds": outcome.seconds,
    }, kind="qbench-grid-failure")
    try:
        return write_json_atomic(path, record)
    except OSError as exc:  # atomic_write names most; this catches the rest
        raise QbenchError(f"cannot write {path}: {exc.strerror or exc}") from None


# -- the grid ------------------------------------------------------------------------------

def _check_options(out: Path, data_dir: Path | None, device: str, backend: str) -> None:
    from qbench.run.pipeline import DEVICES, check_data_dir, resolve_device

    check_data_dir(data_dir)

    if backend == "local":
        resolve_device(device)
    elif device not in DEVICES:  # a cluster's workers, not this machine, have the devices
        raise QbenchError(f"--device {device!r} with --backend ray: allowed auto, cpu, cuda "
                          "(Ray gives each run its GPU share)")
    try:
        Path(out).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise QbenchError(f"--out {out} cannot be created: {exc.strerror or exc}") from None


def plan_grid(cells: list[Cell], out: Path, data_dir: Path | None, cache_dir: Path | None,
              tuning_pending: bool = False,
              checksums: dict | None = None) -> list[tuple[Cell, str, str]]:
    """(cell, status, reason) for every cell: "done", "to-run", "stale" or "clash" (see
    :func:`cell_status`); the data's checksums are computed once per split seed (kept in
    ``checksums``, split seed -> checksums, across calls when given)."""
    checksums = {} if checksums is None else checksums
    plan = []
    for cell in cells:
        path = Path(out) / cell.filename
        if path.is_file() and cell.split_seed not in checksums:
            checksums[cell.split_seed] = data_checksums(cell, out, data_dir, cache_dir)
        plan.append((cell, *cell_status(cell, out, checksums.get(cell.split_seed),
                                        tuning_pending=tuning_pending)))
    return plan


def describe_plan(plan: list[tuple[Cell, str, str]]) -> str:
    """One line per cell (status, cell, reason), then the counts: ``qbench grid --dry-run``."""
    lines = [f"{status:7} {cell.describe()}" + (f": {reason}" if reason else "")
             for cell, status, reason in plan]
    counts = {s: sum(1 for _, st, _ in plan if st == s)
              for s in ("done", "to-run", "stale", "clash")}
    lines.append(f"{len(plan)} cells: {counts['done']} done, {counts['to-run']} to run, "
                 f"{counts['stale']} stale (rerun)"
                 + (f", {counts['clash']} clash (not run: another run's result is there)"
                    if counts["clash"] else ""))
    return "\n".join(lines)


def run_grid(grid_file: Path, *, dataset: str = "digits", backend: Backend | None = None,
             out: Path = Path("results"), data_dir: Path | None = None, device: str = "auto",
             seeds: list[int] | None = None, runner: Callable | None = None,
             progress: bool | None = None, cache_dir: Path | None = None,
             use_cache: bool = True, dry_run: bool = False,
             gpus_per_run: float | None = None) -> GridSummary | str:
    """Run every unfinished or stale cell of ``grid_file`` for ``dataset``; see the module
    docstring. With ``dry_run`` nothing runs: the plan (:func:`describe_plan`) is returned.

    runner: called with a RunRequest, returns (path, result); default
        :func:`run_pipeline`. With a pool of workers or on Ray it must be picklable (a module-level
        function).
    progress: show the tqdm bar (None: only on a terminal).
    cache_dir / use_cache: the encoder and dataset cache (default: $QBENCH_CACHE or
        <out>/cache), or none.
    backend: where cells run (:func:`qbench.grid.backends.make_backend`; default: the local
        backend, one cell at a time in this process). On Ray each run asks for the dataset
        block's ``resources``, its GPU share replaced by ``gpus_per_run``.
    """
    from tqdm.auto import tqdm

    from qbench.train import encoder_cache
    from qbench.train.encoder_cache import EncoderCache

    grid_file, out = Path(grid_file), Path(out)
    grid = load_grid(grid_file)
    backend = backend if backend is not None else make_backend("local")
    _check_options(out, data_dir, device, backend.name)
    resources = grid_resources(grid, dataset, gpus_per_run)
    cells = expand_grid(grid, dataset, seeds=seeds, data_dir=data_dir, source=str(grid_file))
    cache_root = encoder_cache.cache_root(cache_dir, out, use_cache)
    if cache_root is not None:
        EncoderCache(cache_root)  # an unwritable cache is an error before anything runs
    tune_spec = grid["datasets"][dataset].get("tune", grid.get("tune"))

    def request(cell: Cell):
        return cell.request(out, data_dir, device, cache_dir=cache_root, use_cache=use_cache)

    echo = None if progress is False else print
    # on Ray a tuned grid is one task graph: its studies' trials and final runs are tasks
    # (a finished grid's rerun reads its studies here and joins no cluster)
    graph = (tune_spec is not None and not dry_run and backend.name == "ray"
             and not studies_finished(tune_spec, cells, out))
    if tune_spec is not None and not dry_run and not graph:
        cells = tune_cells(tune_spec, cells, request, echo=echo, jobs=backend.jobs)
    elif tune_spec is not None:  # the tuning seed's runs are the studies' trials, not cells
        cells = final_cells(tune_spec, cells)
    planned_at = time.time()
    if dry_run:
        plan = plan_grid(cells, out, data_dir, cache_root, tuning_pending=tune_spec is not None)
        note = ("\n(the grid tunes first, on seed " f"{tune_spec['seed']}" ": its final cells "
                "are listed with default parameters; run it to tune and to see which tuned "
                "results are current)") if tune_spec else ""
        return describe_plan(plan) + note
    # local workers share --out: each cell runs under its lock there, so grids started on
    # one --out at once run every cell once (a cluster's driver writes results itself)
    lock_dir = out / LOCK_DIR if backend.name == "local" else None
    options = CellOptions(out, data_dir, device, runner or run_pipeline, cache_root,
                          use_cache, resources, lock_dir, planned_at)
    summary = GridSummary(grid_file, dataset, out, backend.jobs, backend.name)
    started = time.perf_counter()
    by_stem: dict[str, Cell] = {}
    checksums: dict[int, tuple[str, str]] = {}
    bar = tqdm(total=len(cells), unit="run", desc=f"grid {dataset}",
               disable=(None if progress is None else not progress), dynamic_ncols=True)

    def report(outcome: Outcome) -> None:
        cell = by_stem[outcome.stem]
        summary.run_s += outcome.seconds
        if outcome.skipped:  # another grid on this --out ran it meanwhile
            summary.skipped.append(cell.stem)
            bar.update(1)
            return
        if outcome.ok and outcome.result is not None:  # a remote run: written here
            try:
                check_replace(out / cell.filename, cell.choices(out))
                write_json_atomic(out / cell.filename, outcome.result)
            except QbenchError as exc:  # another run's result there, or an unwritable --out
                outcome = dataclasses.replace(outcome, ok=False, error_type="QbenchError",
                                              message=str(exc), result=None)
        if outcome.ok:
            summary.done.append(cell.stem)
            failure_path(out, cell).unlink(missing_ok=True)
        else:
            summary.failed.append(cell.stem)
            try:  # an unrecordable failure is still a failed cell; the grid goes on
                recorded = f"recorded in {record_failure(out, cell, outcome, grid_file)}"
            except QbenchError as exc:
                recorded = f"the failure could not be recorded: {exc}"
            bar.write(f"failed: {cell.describe()}: {outcome.error_type}: "
                      f"{outcome.message.splitlines()[0] if outcome.message else ''} "
                      f"({recorded})")
        bar.update(1)
        left = len(cells) - len(summary.done) - len(summary.failed) - len(summary.skipped)
        bar.set_postfix_str(f"done {len(summary.done)}, failed {len(summary.failed)}, "
                            f"skipped {len(summary.skipped)}, left {left}")

    def triage(batch: list[Cell]) -> list[Cell]:
        """Plan ``batch``: finished cells are skipped, clashes reported as failed; the
        cells to run are returned."""
        pending, clashes = [], []
        for cell, status, reason in plan_grid(batch, out, data_dir, cache_root,
                                              checksums=checksums):
            by_stem[cell.stem] = cell
            if status == "done":
                summary.skipped.append(cell.stem)
                failure_path(out, cell).unlink(missing_ok=True)
                bar.update(1)
            elif status == "clash":  # never run: its result could not be written
                clashes.append((cell, reason))
            else:
                summary.stale += status == "stale"
                pending.append(cell)
        summary.clashes += len(clashes)
        for cell, reason in clashes:
            report(Outcome(cell.stem, False, 0.0, error_type="QbenchError",
                           message=f"{out / cell.filename} {reason}"))
        return pending

    try:
        if graph:
            from qbench.grid.tuned_graph import feed_tuned_cells

            backend.run_fed(lambda submit, stop: feed_tuned_cells(
                tune_spec, cells, request, submit, stop, address=backend.address,
                gpus_per_run=resources.gpu, cpus_per_run=resources.cpu, echo=echo),
                options, report, triage)
        else:
            pending = triage(cells)
            if pending:  # nothing to run starts no worker (and no Ray)
                backend.run(pending, options, report)
    finally:
        bar.close()
        summary.wall_s = time.perf_counter() - started
    return summary
