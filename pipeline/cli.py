"""The ``pipeline`` command line: turns errors into messages and exit codes, no logic.

Exit codes: 0 done, 1 the run finished with failed shards, 2 bad input (job
file, function, input files, store path), 130 interrupted.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

EXIT_FAILED_SHARDS = 1
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130
STATUS_IDS_SHOWN = 10  # shard ids `pipeline status` lists per state

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
    """Batched derivatives and PDE parameter sweeps on Ray, written to Zarr + Parquet.

    A job file has one of two kinds: a derivative job (the default; a torch
    function, an input set, the quantities per sample: value, jacobian,
    hessian, ...) or a sweep (kind: sweep; a PDE solver run over a table of
    parameter cases). Every command below works for both.

    \b
    Typical session:
      pipeline validate jobs/quickstart.yaml      # check a job file, touch nothing
      pipeline submit jobs/quickstart.yaml --local
      pipeline inspect results/quickstart.zarr    # arrays, chunks, manifest
    \b
    A parameter sweep:
      pipeline submit jobs/sweep.yaml --local
      pipeline status results/sweep.zarr          # done / pending / failed shards
    \b
    In a notebook:
      import pipeline; ds = pipeline.open_results("results/quickstart.zarr")
    """


@main.command()
@click.argument("job", type=click.Path(dir_okay=False))
@click.option("--local", is_flag=True,
              help="Start a local Ray sized to this machine (no cluster needed; RAY_ADDRESS is then ignored).")
@click.option("--address", default=None, metavar="HOST:PORT",
              help="Ray cluster to join, HOST:6379 or ray://HOST:10001 (default: $RAY_ADDRESS).")
@click.option(
    "--executor",
    type=click.Choice(["ray", "inline"]),
    default="ray",
    show_default=True,
    help="'inline' runs every shard in this process without Ray, for debugging.",
)
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help=SET_HELP)
@click.option(
    "--overwrite",
    is_flag=True,
    help="Replace an existing pipeline store at store.path instead of resuming it (any other existing "
    "path is never deleted).",
)
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
    from .driver import prepare
    from .driver import submit as run_submit
    from .lock import store_lock
    from .progress import RichProgress
    from .runner import make_executor
    from .spec import load_spec

    if local and address:
        raise click.UsageError(
            f"--local and --address {address} contradict each other: --local starts a Ray on this machine, "
            "--address joins a running cluster; pass only one of them"
        )
    console = _console()
    spec = None
    try:
        spec = load_spec(job, overrides)
        prepared = prepare(spec)  # bad input stops here, before Ray starts
        with store_lock(spec.store.path):  # and so does a second driver of the same store
            runner = make_executor(executor, local=local, address=address)
            if executor == "ray":
                runner.notify = lambda note: console.print(f"[yellow]note[/yellow]: {note}")
                runner.start()
                console.print(f"[dim]executor: {runner.describe()}[/dim]")
            progress = None if quiet else RichProgress(console, unit=_unit(spec))
            summary = run_submit(spec, runner, overwrite=overwrite, progress=progress, prepared=prepared,
                                 notify=lambda note: console.print(f"[yellow]note[/yellow]: {note}"))
    except _bad_input_errors() as err:
        _fail(str(err))
    except KeyboardInterrupt:
        if spec is not None and Path(spec.store.path).exists():
            console.print("\n[yellow]interrupted[/yellow]: committed shards are kept; run the same command again "
                          "to resume")
        else:
            console.print("\n[yellow]interrupted[/yellow] before any store was written")
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

    Exits 0 when the job is valid, 2 with one line per problem otherwise
    (naming the key, the bad value and the fix).

    \b
    Examples:
      pipeline validate jobs/quickstart.yaml
      pipeline validate jobs/sweep.yaml --set sweep.axes.T0_mean.num=4
      pipeline validate my_job.yaml --no-deep     # the file only: no inputs read, no import
    """
    from .spec import load_spec

    try:
        spec = load_spec(job, overrides)
        line = f"valid: {spec.name} ({spec.kind}), store {spec.store.path}"
        if deep:
            from .driver import prepare
            from .report import human_size

            prepared = prepare(spec)
            line += "".join(f"\n  {part}" for part in prepared.summary.splitlines())
            line += (
                f"\n  {len(prepared.plan.shards)} shards of {prepared.plan.shard_size} {_unit(spec)}, "
                f"chunks of {prepared.plan.chunk_size}"
                f"\n  results: {human_size(prepared.plan.result_bytes())} before compression"
            )
    except _bad_input_errors() as err:
        _fail(str(err))
    click.echo(line)


@main.command()
def schema():
    """Print the JSON schema of job files, both kinds (for editors and docs).

    \b
    Examples:
      pipeline schema > job.schema.json
      # then in a YAML file, for editors with the YAML language server:
      # yaml-language-server: $schema=job.schema.json
    """
    from .spec import json_schema

    click.echo(json.dumps(json_schema(), indent=2))


@main.command()
@click.argument("store", type=click.Path(file_okay=False))
def inspect(store):
    """Print the arrays, shapes, dtypes, chunking, completeness and manifest of STORE.

    Also prints the error of every failed shard.

    \b
    Examples:
      pipeline inspect results/quickstart.zarr
      pipeline inspect results/sweep.zarr
    """
    from .report import inspect_store

    try:
        inspect_store(store, Console(highlight=False, width=None if sys.stdout.isatty() else 120))
    except _bad_input_errors() as err:
        _fail(str(err))


@main.command()
@click.argument("store", type=click.Path(file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the counts as JSON.")
def status(store, as_json):
    """Count done, pending and failed shards of STORE and list the ids of the unfinished ones.

    Exit code 0 when the store is complete, 1 otherwise (`pipeline inspect`
    shows the errors of failed shards; submitting the job again finishes them).

    \b
    Examples:
      pipeline status results/quickstart.zarr
      pipeline status results/sweep.zarr --json   # counts and every shard id, for scripts
    """
    from .store import summarize

    try:
        counts = summarize(store)
    except _bad_input_errors() as err:
        _fail(str(err))
    if as_json:
        click.echo(json.dumps(counts))
    else:
        unit = counts["unit"]  # a sweep counts cases, a derivative job samples
        table = Table(title=f"{counts['name']}: {counts['path']}", show_edge=False)
        keys = ("complete", "shards", "done", "pending", "failed", "samples_done", "samples")
        for key in keys:
            table.add_column(key.replace("samples", unit))
        table.add_row(*(str(counts[k]) for k in keys))
        out = Console(highlight=False, soft_wrap=True)
        out.print(table)
        for state in ("failed", "pending"):
            ids = counts[f"{state}_shards"]
            if ids:
                more = f" and {len(ids) - STATUS_IDS_SHOWN} more (--json lists all)" if len(ids) > STATUS_IDS_SHOWN else ""
                out.print(f"{state} shards: {', '.join(map(str, ids[:STATUS_IDS_SHOWN]))}{more}")
        if counts["failed_shards"]:
            out.print(f"their errors: pipeline inspect {counts['path']}")
        if not counts["complete"]:
            out.print("run the job again to finish them: committed shards are kept")
    sys.exit(0 if counts["complete"] else EXIT_FAILED_SHARDS)


if __name__ == "__main__":  # pragma: no cover
    main()
