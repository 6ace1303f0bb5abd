"""The qbench command line: thin wrappers that parse, call the library and print.

Every user error (:class:`qbench.errors.QbenchError` or a click usage error) is printed as
one line on stderr, ``error: ...``, with exit code 2 and no traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from qbench import __version__
from qbench.errors import QbenchError
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
                    click.echo(f"      {p.name}={p.default!r} ({p.type.__name__}): {p.help}")

    show("methods", METHODS)
    click.echo()
    show("datasets", DATASETS)


@cli.command("run")
@click.option("--method", "-m", required=True, help="Method name (see `qbench list`).")
@click.option("--dataset", "-d", default="digits", show_default=True, help="Dataset name.")
@click.option("--bits", "-b", type=int, default=32, show_default=True,
              help="Code length in bits (the same storage for every method).")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of the splits, initialisation and batches.")
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
def run_command(method, dataset, bits, seed, protocol, epochs, device, out, data_dir, params,
                data_params, quiet) -> None:
    """Train, encode, search and evaluate one method; write results/<run>.json."""
    from qbench.pipeline import RunRequest, run_experiment

    req = RunRequest(
        method=method, dataset=dataset, bits=bits, seed=seed, protocol=protocol,
        epochs=epochs, device=device, out=out, data_dir=data_dir,
        method_params=parse_key_values(params), dataset_params=parse_key_values(data_params),
        progress=not quiet,
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
    click.echo(
        f"{method} on {dataset} ({result['protocol']}, {bits} bits, seed {seed}): "
        f"{headline}{tie}{extra}; {result['timings']['total_s']:.1f} s -> {path}"
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
    from qbench.codes import FloatCodes, PQCodes
    from qbench.codesfile import load_codes_npz
    from qbench.evaluator import evaluate
    from qbench.pipeline import check_writable, resolve_device
    from qbench.results import SCHEMA_VERSION, write_json_atomic

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
        write_json_atomic(out, {
            "schema_version": SCHEMA_VERSION, "kind": "evaluation", "source": str(codes_file),
            "metrics": ev.metrics, "curves": ev.curves, "metric_card": ev.metric_card,
            "timings": ev.timings, "per_query_ap": ev.per_query_ap,
        })
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
    from qbench.compare import run_compare

    click.echo(run_compare(list(files), fmt=fmt, out=out, metric=metric, baseline=baseline))


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
def grid_command(grid_file: Path, dataset: str, jobs: int, out: Path, data_dir: Path | None,
                 device: str, seeds: str | None) -> None:
    """Run a grid of methods x bits x seeds; finished runs are skipped, failures recorded."""
    from qbench.grid import run_grid

    seed_list = None
    if seeds:
        try:
            seed_list = [int(s) for s in seeds.split(",")]
        except ValueError:
            raise QbenchError(f"--seeds expects comma-separated integers, got {seeds!r}") from None
    summary = run_grid(grid_file, dataset=dataset, jobs=jobs, out=out, data_dir=data_dir,
                       device=device, seeds=seed_list)
    click.echo(summary.describe())
    if summary.failed:
        sys.exit(1)


def main() -> None:
    cli.main(prog_name="qbench")


if __name__ == "__main__":
    main()
