"""The ``pipeline`` command line: turns errors into messages and exit codes, no logic.

Exit codes: 0 done, 1 the run finished with failed shards, 2 bad input (job
file, function, input files, store path), 130 interrupted.
"""

from __future__ import annotations

import json
import sys

import click
from rich.console import Console
from rich.table import Table

EXIT_FAILED_SHARDS = 1
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130

SET_HELP = "Override a job-file value, e.g. --set inputs.n=1000 (repeatable; the value is YAML)."


def _console() -> Console:
    return Console(stderr=True, highlight=False, soft_wrap=True)


def _bad_input_errors():
    from .models import FunctionError
    from .runner import ClusterError
    from .sources import InputError
    from .spec import SpecError
    from .store import StoreError

    return (SpecError, FunctionError, InputError, StoreError, ClusterError)


def _unit(spec) -> str:
    """What one row of the job is called: a sweep runs cases, a derivative job samples."""
    return "cases" if spec.kind == "sweep" else "samples"


def _fail(message: str, code: int = EXIT_BAD_INPUT) -> None:
    _console().print(f"[bold red]error:[/bold red] {message}", markup=True)
    sys.exit(code)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="pipeline")
def main() -> None:
    """Batched derivatives of PyTorch functions on Ray, written to Zarr + Parquet.

    \b
    Typical session:
      pipeline validate jobs/quickstart.yaml      # check a job file, touch nothing
      pipeline submit jobs/quickstart.yaml --local
      pipeline inspect results/quickstart.zarr    # arrays, chunks, manifest
    \b
    In a notebook:
      import pipeline; ds = pipeline.open_results("results/quickstart.zarr")
    """


@main.command()
@click.argument("job", type=click.Path(dir_okay=False))
@click.option("--local", is_flag=True, help="Start a local Ray sized to this machine (no cluster needed).")
@click.option("--address", default=None, help="Ray cluster to join (default: $RAY_ADDRESS).")
@click.option(
    "--executor",
    type=click.Choice(["ray", "inline"]),
    default="ray",
    show_default=True,
    help="'inline' runs every shard in this process without Ray, for debugging.",
)
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help=SET_HELP)
@click.option("--overwrite", is_flag=True, help="Replace an existing store made by a different spec.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def submit(job, local, address, executor, overrides, overwrite, quiet):
    """Run JOB (a YAML job file) and write its store.

    Shards of the input set run as Ray tasks (on GPUs when the cluster has
    them); each writes its own region of the Zarr store and a commit marker.
    Re-running the same command resumes: committed shards are skipped.

    \b
    Examples:
      pipeline submit jobs/quickstart.yaml --local
      pipeline submit jobs/seed000.yaml --local --set inputs.n=20000
      RAY_ADDRESS=ray://head:10001 pipeline submit jobs/seed000.yaml
      pipeline submit jobs/quickstart.yaml --executor inline   # debug in-process
    """
    from .driver import submit as run_submit
    from .progress import RichProgress
    from .runner import make_executor
    from .spec import load_spec

    console = _console()
    try:
        spec = load_spec(job, overrides)
        runner = make_executor(executor, local=local, address=address)
        if executor == "ray":
            runner.start()
            console.print(f"[dim]executor: {runner.describe()}[/dim]")
        progress = None if quiet else RichProgress(console, unit=_unit(spec))
        summary = run_submit(spec, runner, overwrite=overwrite, progress=progress)
    except _bad_input_errors() as err:
        _fail(str(err))
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/yellow]: committed shards are kept; run the same command again to resume")
        sys.exit(EXIT_INTERRUPTED)
    ran = len(summary.done)
    if summary.skipped:
        console.print(f"resumed: {summary.skipped} shards were already committed")
    nonfinite = _nonfinite_warning(summary.path)
    if summary.failed:
        console.print(
            f"[bold red]{len(summary.failed)} of {summary.total} shards failed[/bold red] after retries; "
            f"see `pipeline status {summary.path}`; run the same command again to retry them"
        )
        first = next(iter(summary.failed.values()))
        console.print(f"first error (shard {first.shard_id}): {first.error}")
        if nonfinite:
            console.print(nonfinite)
        sys.exit(EXIT_FAILED_SHARDS)
    rate = f", {summary.samples_per_second:,.0f} {_unit(spec)}/s per task" if ran else ""
    click.echo(f"complete: {summary.path} ({ran} shards run{rate})")
    if nonfinite:
        console.print(nonfinite)


def _nonfinite_warning(path: str) -> str | None:
    """A warning line when committed shards hold NaN or Inf (the manifest counts them per shard), else None."""
    from .store import read_manifest

    manifest = read_manifest(path)
    if manifest is None or not manifest.num_rows:
        return None
    data = manifest.select(["status", "nonfinite"]).to_pydict()
    counts = [n for status, n in zip(data["status"], data["nonfinite"]) if status == "done" and n]
    if not counts:
        return None
    return (
        f"[bold yellow]warning:[/bold yellow] {sum(counts):,} non-finite values (NaN or Inf) in {len(counts)} of "
        f"{len(data['status'])} shards: they are what the function gives there; "
        f"see which arrays with `pipeline inspect {path}`, or find them with "
        f"`pipeline.open_results(\"{path}\")` and `isnull()`"
    )


@main.command()
@click.argument("job", type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help=SET_HELP)
@click.option("--deep/--no-deep", default=True, show_default=True,
              help="Also open input files, import the function and run it on two samples.")
def validate(job, overrides, deep):
    """Check JOB without running it or touching any store.

    Exits 0 when the job is valid, 2 with one line per problem otherwise.
    """
    from .spec import load_spec

    try:
        spec = load_spec(job, overrides)
        line = f"valid: {spec.name} ({spec.kind}), store {spec.store.path}"
        if deep:
            from .driver import prepare

            prepared = prepare(spec)
            line += "".join(f"\n  {part}" for part in prepared.summary.splitlines())
            line += (
                f"\n  {len(prepared.plan.shards)} shards of {prepared.plan.shard_size} {_unit(spec)}, "
                f"chunks of {prepared.plan.chunk_size}"
            )
    except _bad_input_errors() as err:
        _fail(str(err))
    click.echo(line)


@main.command()
def schema():
    """Print the JSON schema of job files (for editors and docs)."""
    from .spec import json_schema

    click.echo(json.dumps(json_schema(), indent=2))


@main.command()
@click.argument("store", type=click.Path(file_okay=False))
def inspect(store):
    """Print the arrays, shapes, dtypes, chunking, completeness and manifest of STORE."""
    from .report import inspect_store

    try:
        inspect_store(store, Console(highlight=False, width=None if sys.stdout.isatty() else 120))
    except _bad_input_errors() as err:
        _fail(str(err))


@main.command()
@click.argument("store", type=click.Path(file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the counts as JSON.")
def status(store, as_json):
    """Count done, pending and failed shards of STORE.

    Exit code 0 when the store is complete, 1 otherwise.
    """
    from .store import summarize

    try:
        counts = summarize(store)
    except _bad_input_errors() as err:
        _fail(str(err))
    if as_json:
        click.echo(json.dumps(counts))
    else:
        table = Table(title=f"{counts['name']}: {counts['path']}", show_edge=False)
        for key in ("complete", "shards", "done", "pending", "failed", "samples_done", "samples"):
            table.add_column(key)
        table.add_row(*(str(counts[k]) for k in ("complete", "shards", "done", "pending", "failed", "samples_done", "samples")))
        Console(highlight=False).print(table)
    sys.exit(0 if counts["complete"] else EXIT_FAILED_SHARDS)


if __name__ == "__main__":  # pragma: no cover
    main()
