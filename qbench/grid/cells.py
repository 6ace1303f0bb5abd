"""The plain values a grid passes around: a :class:`Cell` (one run of the grid, its
parameters resolved once), how cells run (:class:`CellOptions`, :class:`RunResources`) and
what a worker reports (:class:`Outcome`). Every other grid module imports these; they
import nothing of the grid.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from qbench.data.pool import DEFAULT_POOL_SIZE
from qbench.run.results import result_filename


@dataclass
class Cell:
    """One run of the grid. ``name`` is the method or variant name used in file names;
    ``params`` holds the requested (parsed) method parameters only."""

    dataset: str
    protocol: str
    method: str
    name: str
    bits: int
    seed: int
    params: dict = field(default_factory=dict)
    epochs: int | None = None
    dataset_params: dict = field(default_factory=dict)
    select: str = "best"
    split_seed: int = 0
    pool_size: int = DEFAULT_POOL_SIZE
    tuning: dict | None = None  # set by the grid's tuning step (qbench.grid.tuning)
    regime: str = "full"  # or "head" (qbench.train.backbone)
    backbone: dict = field(default_factory=dict)  # requested backbone parameters (head)
    resolved: dict = field(init=False, repr=False, compare=False)
    """The method's parameters resolved once (defaults and ``epochs`` included), exactly as
    the run will record them; recomputed by ``dataclasses.replace``."""
    resolved_dataset_params: dict = field(init=False, repr=False, compare=False)
    resolved_backbone: dict | None = field(init=False, repr=False, compare=False)
    """The backbone's parameters resolved (regime head), else None."""

    def __post_init__(self) -> None:
        from qbench.registry import DATASETS
        from qbench.run.pipeline import resolve_method_params
        from qbench.train.backbone import resolve_backbone_params

        self.resolved = resolve_method_params(self.method, self.params, self.epochs)
        self.resolved_dataset_params = DATASETS.resolve_params(self.dataset,
                                                               self.dataset_params)
        self.resolved_backbone = (resolve_backbone_params(self.backbone)
                                  if self.regime == "head" else None)

    @property
    def filename(self) -> str:
        return result_filename(self.dataset, self.protocol, self.name, self.bits, self.seed,
                               self.split_seed, self.regime)

    @property
    def stem(self) -> str:
        return self.filename.removesuffix(".json")

    def choices(self, out: Path):
        """What this cell's run chooses (:class:`qbench.run.identity.RunChoices`), as its
        result will record them, without loading anything."""
        from qbench.registry import DATASETS, METHODS
        from qbench.run.identity import run_choices
        from qbench.train.backbone import resolve_backbone_params

        method = METHODS.get(self.method)(self.resolved)
        dataset = DATASETS.get(self.dataset)(self.resolved_dataset_params, None)
        return run_choices(self.request(out, None, "cpu"), method, dataset,
                           self.resolved_backbone,
                           resolve_backbone_params({}) if self.resolved_backbone else {})

    def describe(self) -> str:
        head = ", head" if self.regime == "head" else ""
        return (f"{self.name} {self.bits} bits seed {self.seed} "
                f"({self.dataset}/{self.protocol}{head})")

    def request(self, out: Path, data_dir: Path | None, device: str, *,
                cache_dir: Path | None = None, use_cache: bool = True):
        """The :class:`qbench.run.pipeline.RunRequest` of this cell."""
        from qbench.run.pipeline import RunRequest

        return RunRequest(
            method=self.method, dataset=self.dataset, bits=self.bits, seed=self.seed,
            protocol=self.protocol, epochs=self.epochs, device=device, out=Path(out),
            data_dir=data_dir, method_params=dict(self.params),
            dataset_params=dict(self.dataset_params), progress=False,
            output_file=Path(out) / self.filename, split_seed=self.split_seed,
            select=self.select, pool_size=self.pool_size, cache_dir=cache_dir,
            use_cache=use_cache, tuning=self.tuning, regime=self.regime,
            backbone=dict(self.backbone),
        )


@dataclass
class Outcome:
    """What a worker reports about one cell. ``result``: the result record when the worker
    could not write it itself (a remote backend); the driver then writes it to ``path``."""

    stem: str
    ok: bool
    seconds: float
    path: str | None = None
    error_type: str = ""
    message: str = ""
    traceback: str = ""
    result: dict | None = None
    skipped: bool = False  # another grid on the same --out ran the cell meanwhile
    busy: bool = False  # another grid holds the cell's lock: not run, try it later


@dataclass(frozen=True)
class RunResources:
    """What one run asks of a node: ``cpu`` whole CPUs, which are also its torch, faiss and
    BLAS threads, and ``gpu``, a share of one GPU (0: none; 0.25: four runs share one GPU)
    or a whole number of GPUs."""

    cpu: int = 1
    gpu: float = 0.0


@dataclass(frozen=True)
class CellOptions:
    """How every cell of one grid runs (the arguments of
    :func:`qbench.grid.worker.execute_cell`)."""

    out: Path
    data_dir: Path | None
    device: str
    runner: Callable
    cache_dir: Path | None
    use_cache: bool
    resources: RunResources = RunResources()  # what one run asks of a cluster node
    lock_dir: Path | None = None  # per-cell locks on a shared --out (local backend)
    planned_at: float = 0.0  # time.time() when the grid planned: a result newer is another's
