"""The qbench command line: thin wrappers that parse, call the library and print.

Every user error (:class:`qbench.core.errors.QbenchError` or a click usage error) is printed as
one line on stderr, ``error: ...``, with exit code 2 and no traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from qbench import __version__
from qbench.core.errors import QbenchError
from qbench.data.pool import DEFAULT_POOL_SIZE
from qbench.registry import DATASETS, METHODS, parse_key_values


class QbenchGroup(click.Group):
    """A click group that turns every user error into one line on stderr and exit code 2."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except QbenchError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)
        except click.ClickException as exc:
            click.echo(f"error: {exc.format_message()}", err=True)
            sys.exit(2)
        except click.Abort:
            click.echo("aborted", err=True)
            sys.exit(130)
        code = rv if isinstance(rv, int) else 0
        if standalone_mode:
            sys.exit(code)
        return code


@click.group(cls=QbenchGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="qbench")
def cli() -> None:
    """Compare quantization strategies for deep similarity search on one fair evaluator."""


@cli.command("list")
@click.option("--params", "show_params", is_flag=True, help="Also list each plugin's parameters.")
def list_command(show_params: bool) -> None:
    """List methods and datasets with one-line descriptions."""

    def show(title: str, registry) -> None:
        click.echo(f"{title}:")
        for name, cls in registry.items():
            tag = f" [{cls.family}]" if hasattr(cls, "family") else ""
            click.echo(f"  {name:<15}{tag:<9} {cls.description}")
            if hasattr(cls, "protocols") and cls.protocols:
                click.echo(f"  {'':<15}{'':<9} protocols: {', '.join(cls.protocols)}")
            if show_params:
                for p in cls.params:
                    space = f" [tune: {p.tune.describe()}]" if p.tune is not None else ""
                    click.echo(f"      {p.name}={p.default!r} ({p.type.__name__}): {p.help}"
                               f"{space}")

    show("methods", METHODS)
    click.echo()
    show("datasets", DATASETS)


@cli.command("run")
@click.option("--method", "-m", required=True, help="Method name (see `qbench list`).")
@click.option("--dataset", "-d", default="digits", show_default=True, help="Dataset name.")
@click.option("--bits", "-b", type=int, default=32, show_default=True,
              help="Code length in bits (the same storage for every method).")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Training seed: initialisation, batch order and augmentation (the split "
                   "comes from --split-seed).")
@click.option("--protocol", default=None, help="Split protocol (default: the dataset's).")
@click.option("--epochs", type=int, default=None,
              help="Training epochs for learned methods (default: the method's).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda.")
@click.option("--out", type=click.Path(path_type=Path), default=Path("results"),
              show_default=True, help="Folder for the result JSON (and split files).")
@click.option("--data-dir", type=click.Path(path_type=Path), default=None,
              help="Folder holding the dataset's files.")
@click.option("-p", "--param", "params", multiple=True, metavar="KEY=VALUE",
              help="Method hyper-parameter, repeatable (see `qbench list --params`).")
@click.option("-D", "--data-param", "data_params", multiple=True, metavar="KEY=VALUE",
              help="Dataset parameter, repeatable (e.g. -D path=feats.npz).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
@click.option("--split-seed", type=int, default=0, show_default=True,
              help="Seed of the query/train/validation split (separate from --seed, which "
                   "seeds training).")
@click.option("--select", default="best", show_default=True,
              help="Model selection: best (highest validation MAP of the evaluated "
                   "representation) or last (the last epoch).")
@click.option("--pool-size", type=int, default=DEFAULT_POOL_SIZE, show_default=True,
              help="Cap on the selection pool the validation queries search (0: all).")
@click.option("--cache-dir", type=click.Path(path_type=Path), default=None,
              help="Encoder and dataset cache (default: $QBENCH_CACHE, else <out>/cache).")
@click.option("--no-cache", is_flag=True, help="Train the stage-1 encoder anew; cache nothing.")
@click.option("--deterministic", is_flag=True,
              help="torch and cuDNN deterministic algorithms (slower on a GPU); recorded.")
@click.option("--params-from", type=click.Path(path_type=Path), default=None,
              help="Use the best parameters of a tuning study (<out>/tune/<study>.json).")
@click.option("--regime", default="full", show_default=True,
              type=click.Choice(["full", "head"]),
              help="full: every method trains its network end to end; head: one backbone "
                   "per seed is trained and frozen, and every method trains the same MLP "
                   "head on its cached features (docs/training.md).")
@click.option("--backbone", "backbone_params", multiple=True, metavar="KEY=VALUE",
              help="Backbone parameter for --regime head, repeatable (e.g. --backbone "
                   "encoder=lightcnn --backbone epochs=10).")
def run_command(method, dataset, bits, seed, protocol, epochs, device, out, data_dir, params,
                data_params, quiet, split_seed, select, pool_size, cache_dir, no_cache,
                deterministic, params_from, regime, backbone_params) -> None:
    """Train, encode, search and evaluate one method; write results/<run>.json."""
    from qbench.run.pipeline import RunRequest, run_experiment

    method_params = parse_key_values(params)
    tuning = None
    if params_from is not None:
        from qbench.grid.tuned_params import load_tuned_params

        tuned, tuning = load_tuned_params(params_from, method, dataset, bits)
        if set(method_params) & set(tuning["best_params"]):
            tuning = None  # -p replaced a tuned value: not the tuned configuration
        method_params = {**tuned, **method_params}
    req = RunRequest(
        method=method, dataset=dataset, bits=bits, seed=seed, protocol=protocol,
        epochs=epochs, device=device, out=out, data_dir=data_dir,
        method_params=method_params, dataset_params=parse_key_values(data_params),
        progress=not quiet, split_seed=split_seed, select=select, pool_size=pool_size,
        cache_dir=cache_dir, use_cache=not no_cache, deterministic=deterministic,
        tuning=tuning, regime=regime, backbone=parse_key_values(backbone_params),
    )
    path, result = run_experiment(req)
    m = result["metrics"]
    k = result["metric_card"].get("k")
    headline = f"MAP@all {m['map_all']:.4f}"
    if k != "all":
        headline = f"MAP@{k} {m['map_at_k']:.4f}, " + headline
    extra = f", retention {m['retention']:.3f}" if m.get("retention") is not None else ""
    tie = (f", tie-aware {m['tie_aware_map_all']:.4f}"
           if m.get("tie_aware_map_all") is not None else "")
    sel = result.get("selection")
    chosen = (f"; selected epoch {sel['chosen_epoch']} by {sel['criterion']}"
              if sel else "")
    regime_note = ", head on a frozen backbone" if regime == "head" else ""
    click.echo(
        f"{method} on {dataset} ({result['protocol']}{regime_note}, {bits} bits, seed {seed}): "
        f"{headline}{tie}{extra}{chosen}; {result['timings']['total_s']:.1f} s -> {path}"
    )


@cli.command("evaluate")
@click.argument("codes_file", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Write the evaluation JSON here (default: print a summary only).")
@click.option("--k", type=int, default=None, help="Cut-off K of MAP@K (default: all).")
@click.option("--normaliser", default="rk", show_default=True,
              help="AP@K normaliser: rk, min_k_r or r.")
@click.option("--metric", "float_metric", default="l2", show_default=True,
              help="Distance for float embeddings: l2 or cosine.")
@click.option("--sdc", is_flag=True, help="PQ codes: symmetric distance (query quantized too).")
@click.option("--device", default="cpu", show_default=True,
              help="cpu, cuda, or auto (cuda when available); only cuda and auto load torch.")
def evaluate_command(codes_file: Path, out: Path | None, k: int | None, normaliser: str,
                     float_metric: str, sdc: bool, device: str) -> None:
    """Score codes or embeddings produced elsewhere (.npz) with the qbench evaluator."""
    from qbench.core.codes import FloatCodes, PQCodes
    from qbench.eval.codesfile import load_codes_npz
    from qbench.eval.evaluator import evaluate
    from qbench.run.pipeline import check_writable, resolve_device
    from qbench.run.results import new_record, read_json, write_json_atomic

    if float_metric not in ("l2", "cosine"):
        raise QbenchError(f"--metric {float_metric!r} is not allowed; allowed: cosine, l2")
    if out is not None:
        if out.is_dir():
            raise QbenchError(f"--out {out} is a directory; give a file, e.g. {out / 'eval.json'}")
        check_writable(out.parent)
    if device != "cpu":
        device = resolve_device(device)
    codes, q_labels, db_labels = load_codes_npz(codes_file)
    if isinstance(codes, FloatCodes):
        codes.metric = float_metric
    if sdc and not isinstance(codes, PQCodes):
        raise QbenchError(f"--sdc needs PQ codes (db_codes + codebooks) in {codes_file}")
    ev = evaluate(codes, q_labels, db_labels, k=k, normaliser=normaliser, device=device,
                  sdc=sdc)
    if out is not None:
        try:
            existing = read_json(out) if Path(out).is_file() else None
        except QbenchError:
            existing = None  # not a readable record: replaced
        if isinstance(existing, dict) and "schema_version" in existing and "kind" not in existing:
            raise QbenchError(f"--out {out} holds a run result; an evaluation record never "
                              "replaces it: choose another file")
        write_json_atomic(out, new_record({
            "source": str(codes_file), "metrics": ev.metrics, "curves": ev.curves,
            "metric_card": ev.metric_card, "timings": ev.timings,
            "per_query_ap": ev.per_query_ap,
        }, kind="evaluation", device=device))
    m = ev.metrics
    parts = [f"MAP@all {m['map_all']:.4f}", f"MAP@{ev.metric_card.get('k')} {m['map_at_k']:.4f}"]
    if m.get("tie_aware_map_all") is not None:
        parts.append(f"tie-aware {m['tie_aware_map_all']:.4f} "
                     f"[{m['tie_aware_map_all_pessimistic']:.4f}, "
                     f"{m['tie_aware_map_all_optimistic']:.4f}]")
    click.echo(f"{codes_file} ({ev.metric_card.get('distance')}): " + ", ".join(parts)
               + (f" -> {out}" if out else ""))


@cli.command("compare")
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--format", "fmt", default="table", show_default=True,
              help="Table format: table, md, csv or latex.")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Folder for tables (all formats) and plots (PNG and PDF).")
@click.option("--metric", default="headline_map", show_default=True,
              help="Metric to tabulate (headline_map: tie-aware MAP@all where reported, "
                   "else MAP@all).")
@click.option("--baseline", default=None, metavar="LABEL",
              help="Test every row against this row label (e.g. two-stage-pq) instead of "
                   "each column's best row; needs >= 2 seeds per row.")
def compare_command(files, fmt: str, out: Path | None, metric: str,
                    baseline: str | None) -> None:
    """Aggregate result files: mean, std and 95% CI over seeds, paired t-tests, claims,
    tables and plots."""
    from qbench.report.compare import run_compare

    click.echo(run_compare(list(files), fmt=fmt, out=out, metric=metric, baseline=baseline))


@cli.command("report")
@click.argument("folders", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), default=Path("report.html"),
              show_default=True, help="The HTML file to write (replaced atomically).")
@click.option("--title", default=None, help="Page title (default: the folders' names).")
def report_command(folders, out: Path, title: str | None) -> None:
    """One self-contained HTML page (tables, claims, figures, tuning, environment) for
    results folders; opens from disk, no network needed."""
    from qbench.report.html import write_report

    click.echo(f"wrote {write_report(list(folders), out, title)}")


@cli.command("grid")
@click.argument("grid_file", type=click.Path(path_type=Path), default=Path("grids/default.json"))
@click.option("--dataset", default="digits", show_default=True, help="Dataset of the grid.")
@click.option("--jobs", "-j", type=int, default=1, show_default=True, help="Parallel processes.")
@click.option("--out", type=click.Path(path_type=Path), default=Path("results"), show_default=True,
              help="Folder for result files.")
@click.option("--data-dir", type=click.Path(path_type=Path), default=None,
              help="Folder holding the dataset's files.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda.")
@click.option("--seeds", default=None, help="Comma-separated seeds (default: the grid file's).")
@click.option("--cache-dir", type=click.Path(path_type=Path), default=None,
              help="Encoder and dataset cache (default: $QBENCH_CACHE, else <out>/cache).")
@click.option("--no-cache", is_flag=True, help="Train every encoder anew; cache nothing.")
@click.option("--dry-run", is_flag=True,
              help="List every cell as done, to-run or stale (with the reason); run nothing.")
@click.option("--backend", type=click.Choice(["local", "ray"]), default="local",
              show_default=True, help="Where runs execute: local processes (--jobs) or a Ray "
                                      "cluster (pip install 'qbench[ray]').")
@click.option("--address", default=None, metavar="auto|HOST:PORT|ray://HOST:PORT",
              help="Ray cluster to join (default: the one started here, else a new one).")
@click.option("--gpus-per-run", type=float, default=None,
              help="GPU share of each Ray run (0.25: four runs per GPU); replaces the grid "
                   "file's resources.gpu.")
def grid_command(grid_file: Path, dataset: str, jobs: int, out: Path, data_dir: Path | None,
                 device: str, seeds: str | None, cache_dir: Path | None, no_cache: bool,
                 dry_run: bool, backend: str, address: str | None,
                 gpus_per_run: float | None) -> None:
    """Run a grid of methods x bits x seeds; finished runs are skipped, stale ones rerun,
    failures recorded. With --backend ray, --out and the cache must be on storage every
    node reaches."""
    from qbench.grid.backends import make_backend
    from qbench.grid.runner import run_grid

    seed_list = None
    if seeds:
        try:
            seed_list = [int(s) for s in seeds.split(",")]
        except ValueError:
            raise QbenchError(f"--seeds expects comma-separated integers, got {seeds!r}") from None
    summary = run_grid(grid_file, dataset=dataset,
                       backend=make_backend(backend, jobs=jobs, address=address), out=out,
                       data_dir=data_dir, device=device, seeds=seed_list, cache_dir=cache_dir,
                       use_cache=not no_cache, dry_run=dry_run, gpus_per_run=gpus_per_run)
    if dry_run:
        click.echo(summary)
        return
    click.echo(summary.describe())
    if summary.failed:
        sys.exit(1)


@cli.group("cache")
def cache_group() -> None:
    """Show or remove cached stage-1 encoders and decoded datasets."""


_cache_dir_option = click.option(
    "--cache-dir", type=click.Path(path_type=Path), default=None,
    help="Cache folder (default: $QBENCH_CACHE, else results/cache).")


def _cache_folder(cache_dir: Path | None, *, write: bool = False) -> Path:
    """The cache ``qbench cache`` works on; a given ``--cache-dir`` must be a folder (and
    writable for ``write``)."""
    import os

    from qbench.train.encoder_cache import cache_root

    root = cache_root(cache_dir, Path("results"))
    if cache_dir is not None and not root.is_dir():
        what = "is not a directory" if root.exists() else "does not exist"
        raise QbenchError(f"--cache-dir {root} {what}; allowed: an existing cache folder")
    if write and root.is_dir() and not os.access(root, os.W_OK | os.X_OK):
        raise QbenchError(f"--cache-dir {root} is not writable; nothing was removed")
    return root


@cache_group.command("list")
@_cache_dir_option
def cache_list_command(cache_dir: Path | None) -> None:
    """One line per cached encoder: key, dataset, seed, D, epochs, size."""
    from qbench.train.encoder_cache import list_entries

    root = _cache_folder(cache_dir)
    rows = list_entries(root)
    for row in rows:
        click.echo(row)
    click.echo(f"{len(rows)} encoder entries in {root}")


@cache_group.command("clear")
@_cache_dir_option
def cache_clear_command(cache_dir: Path | None) -> None:
    """Remove every cached encoder and decoded dataset (downloads are kept); an encoder a
    running job has locked is kept."""
    from qbench.train.encoder_cache import clear_cache

    root = _cache_folder(cache_dir, write=True)
    removed, kept = clear_cache(root)
    in_use = f"; kept {kept} entries in use" if kept else ""
    click.echo(f"removed {removed} entries from {root}{in_use}")


_TUNE_SHARES_RUN_OPTIONS = ("method", "dataset", "bits", "seed", "protocol", "epochs", "device",
                            "out", "data_dir", "params", "data_params", "quiet", "split_seed",
                            "select", "pool_size", "cache_dir", "no_cache", "deterministic",
                            "params_from", "regime", "backbone_params")


@cli.command("tune", params=[p for p in run_command.params
                             if p.name in _TUNE_SHARES_RUN_OPTIONS])
@click.option("--trials", "-n", type=int, required=True,
              help="The study's total of finished trials (a rerun adds only the missing ones).")
@click.option("--timeout", type=float, default=None, help="Seconds after which no trial starts.")
@click.option("--storage", default=None,
              help="Optuna RDB URL (default: sqlite:///<out>/tune/<study>.db; SQLite is for one "
                   "machine, share a study across machines with e.g. postgresql://...).")
@click.option("--study", "study_name", default=None,
              help="Study name (default: <dataset>-<protocol>-<method>-<bits>b-seed<S>).")
@click.option("--pruner", default="none", show_default=True, type=click.Choice(["none", "median"]),
              help="Stop hopeless trials from the validation curve (median rule).")
@click.option("--shared", is_flag=True,
              help="Tune the shared stage-1 knobs (lr, weight decay): once per dataset, on "
                   "--method float; pass the result to every method with -p or --params-from.")
@click.option("--backend", default="local", show_default=True,
              type=click.Choice(["local", "ray"]),
              help="local: trials one after another here; ray: --parallel trials as Ray tasks "
                   "(this process alone talks to the study).")
@click.option("--address", default=None,
              help="Ray cluster: auto, HOST:PORT or ray://HOST:PORT (default: join the local "
                   "cluster or start one).")
@click.option("--parallel", type=int, default=2, show_default=True,
              help="Trials at once on Ray.")
@click.option("--gpus-per-run", type=float, default=None, help="GPU share of each Ray trial.")
def tune_command(method, dataset, bits, seed, protocol, epochs, device, out, data_dir, params,
                 data_params, quiet, split_seed, select, pool_size, cache_dir, no_cache,
                 deterministic, params_from, regime, backbone_params, trials, timeout, storage,
                 study_name, pruner, shared, backend, address, parallel, gpus_per_run) -> None:
    """Tune a method's search space on validation data (Optuna TPE); write <out>/tune/.

    -p and --params-from values are fixed (e.g. the stage-1 knobs of a --shared study).
    """
    from qbench.grid.tune import tune
    from qbench.grid.tuned_params import load_tuned_params
    from qbench.run.pipeline import RunRequest

    method_params = parse_key_values(params)
    if params_from is not None:
        method_params = {**load_tuned_params(params_from, method, dataset, bits)[0],
                         **method_params}
    req = RunRequest(
        method=method, dataset=dataset, bits=bits, seed=seed, protocol=protocol,
        epochs=epochs, device=device, out=out, data_dir=data_dir,
        method_params=method_params, dataset_params=parse_key_values(data_params),
        split_seed=split_seed, select=select, pool_size=pool_size, cache_dir=cache_dir,
        use_cache=not no_cache, deterministic=deterministic, regime=regime,
        backbone=parse_key_values(backbone_params),
    )
    path, record = tune(req, trials=trials, shared=shared, storage=storage,
                        study_name=study_name, timeout=timeout, pruner=pruner,
                        backend=backend, address=address, parallel=parallel,
                        gpus_per_run=gpus_per_run,
                        echo=None if quiet else click.echo)
    best = ", ".join(f"{k}={v!r}" for k, v in record["best_params"].items())
    t = record["trials"]
    click.echo(f"{record['study']}: best {record['best_value']:.4f} with {best} "
               f"({t['complete']} complete, {t['pruned']} pruned, {t['failed']} failed; "
               f"{record['compute']['trial_wall_s']:.1f} s of trials) -> {path}")
    for note in record["notes"]:
        click.echo(f"note: {note}")


def main() -> None:
    cli.main(prog_name="qbench")


if __name__ == "__main__":
    main()
