"""The ``pipeline`` command line: turns errors into messages and exit codes, no logic.

Exit codes: 0 done, 1 the run finished with failed shards, 2 bad input (job
file, function, input files, store path), 130 interrupted.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click
from rich.console import Console
from rich.markup import escape

from .errors import BadInput, ClusterLost, StorageDown

EXIT_FAILED_SHARDS = 1
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130
STATUS_IDS_SHOWN = 10  # shard ids `pipeline status` lists per state

SET_HELP = "Override a job-file value, e.g. --set inputs.n=1000 (repeatable; the value is YAML)."


def _console() -> Console:
    return Console(stderr=True, highlight=False, soft_wrap=True)


def _is_remote(path: str) -> bool:
    from .storage import is_remote

    return is_remote(path)


def _store_location(store: str) -> str:
    """A store argument as a job file names it: a URL as given, a local path made absolute."""
    return store if _is_remote(store) else str(Path(store).absolute())


def _check_readable(store: str) -> None:
    """For a URL STORE: a missing bucket, an unreachable endpoint or refused credentials, said as such (BadInput)."""
    from .store import check_readable  # lazily: `pipeline --help` imports no zarr

    check_readable(store)


def _unit(spec) -> str:
    """What one row of the job is called: a sweep runs cases, a derivative job samples."""
    from .kinds import kind_of

    return kind_of(spec).unit


def _fail(message: str, code: int = EXIT_BAD_INPUT) -> None:
    # the message is plain text: its square brackets ("[a, b", "shard 1 [8, 16)") are not rich markup
    _console().print(f"[bold red]error:[/bold red] {escape(message)}", markup=True)
    sys.exit(code)


def _store_argument(ctx, param, value: str) -> str:
    """STORE as given, with a ``file://`` URL as its plain path (what ``store.path`` accepts, these read too)."""
    from .storage import local_path

    return local_path(value)


class _Commands(click.Group):
    """The ``pipeline`` group: Ctrl-C in a command that reads a store is one line and exit 130.

    Click would print ``Aborted!`` and exit 1, which a script cannot tell from a
    failure. ``submit`` says more (what it kept) and leaves by itself first.
    """

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            _console().print("\n[yellow]interrupted[/yellow]")
            sys.exit(EXIT_INTERRUPTED)


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
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
      pipeline report results/quickstart.zarr     # an HTML page of pictures: results/quickstart.html
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
@click.option(
    "--local",
    is_flag=True,
    help="Start a local Ray sized to this machine, listening on 127.0.0.1 only (no cluster needed; RAY_ADDRESS is then ignored).",
)
@click.option(
    "--address",
    default=None,
    metavar="HOST:PORT",
    help=(
        "Ray cluster to join: HOST:6379 (from a node), ray://HOST:10001 (the Ray client) or auto (a head on this "
        "machine); default $RAY_ADDRESS. Its token is read from ~/.ray/auth_token or $RAY_AUTH_TOKEN."
    ),
)
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
@click.option("--quiet", "-q", is_flag=True, help="No progress bar (Ray's own logging is off unless -v).")
@click.option("--verbose", "-v", is_flag=True, help="Show Ray's own logging and the workers' output.")
@click.option(
    "--dry-run",
    is_flag=True,
    help="Print the plan (shards, bytes to write) and a time estimate from a probe chunk on this CPU; "
    "write nothing, start no Ray.",
)
@click.option(
    "--progress-interval",
    type=click.FloatRange(min=0),
    default=None,
    metavar="SECONDS",
    help="When the output is not a terminal (ray job logs, a pipe, CI): seconds between plain progress "
    "lines  [default: $PIPELINE_PROGRESS_INTERVAL, else 10]",
)
@click.option(
    "--repair",
    is_flag=True,
    help="First verify the existing store (as `pipeline verify` does) and un-commit the damaged "
    "shards, so that this run recomputes them.",
)
@click.option(
    "--accept-changed-code",
    is_flag=True,
    help="Resume even though the function's or solver's module changed since the store was made "
    "(after fixing a bug that made shards fail); each shard's marker records the code it ran under.",
)
def submit(
    job,
    local,
    address,
    executor,
    overrides,
    overwrite,
    quiet,
    verbose,
    dry_run,
    progress_interval,
    repair,
    accept_changed_code,
):
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
      pipeline submit jobs/seed000.yaml --dry-run          # plan and time estimate, nothing written
      pipeline submit jobs/grid.yaml --set inputs.axes.0.num=10     # a list item by index
      pipeline submit jobs/quickstart.yaml --set inputs.n=1e3 --set "quantities=[value, jacobian]"
      pipeline submit jobs/quickstart.yaml --local --repair    # recompute what `pipeline verify` finds damaged
    """
    from .spec import load_spec

    if local and address:
        raise click.UsageError(
            f"--local and --address {address} contradict each other: --local starts a Ray on this machine, "
            "--address joins a running cluster; pass only one of them"
        )
    if repair and overwrite:
        raise click.UsageError(
            "--repair and --overwrite contradict each other: --overwrite recomputes every "
            "shard anyway; pass only one of them"
        )
    _submit_spec(
        lambda: load_spec(job, overrides),
        local=local,
        address=address,
        executor=executor,
        overwrite=overwrite,
        quiet=quiet,
        repair=repair,
        accept_changed_code=accept_changed_code,
        job=job,
        verbose=verbose,
        dry_run=dry_run,
        progress_interval=progress_interval,
    )


def _submit_spec(
    load,
    *,
    local,
    address,
    executor,
    overwrite,
    quiet,
    repair=False,
    accept_changed_code=False,
    job=None,
    verbose=False,
    dry_run=False,
    progress_interval=None,
):
    """What `pipeline submit` does once it knows how to load the spec (``verify --repair`` reuses it).

    ``driver.submit`` runs the job (prepare, lock, repair, start, run,
    finalize); this builds its callbacks and turns the outcome into lines and
    an exit code.
    """
    from .runner import sigterm_as_interrupt

    sigterm_as_interrupt()  # any executor (Ray sets it again after ray.init): SIGTERM finalizes as Ctrl-C does, exit 130
    console = _console()

    def note(text: str) -> None:
        console.print(f"[yellow]note[/yellow]: {escape(text)}")

    def started(description: str) -> None:
        console.print(f"[dim]executor: {escape(description)}[/dim]")

    spec = None
    try:
        spec = load()  # first: a Ctrl-C from here on names the store it leaves (verify --repair has un-committed)
        # imported here: torch takes seconds to import, and a Ctrl-C meanwhile is "interrupted" (130), not click's
        # "Aborted!" (1)
        from .driver import prepare
        from .driver import submit as run_submit
        from .progress import make_progress
        from .runner import make_executor

        if dry_run:  # nothing written, no Ray: the plan and a time estimate only
            from .dry_run import dry_run as plan_only

            prepared = prepare(spec, note)
            click.echo(f"dry run: {spec.name} ({spec.kind}), store {spec.store.path}")
            for line in plan_only(prepared).lines():
                click.echo(f"  {line}")
            return
        runner = make_executor(executor, local=local, address=address)
        runner.verbose = verbose
        runner.notify = note
        summary = run_submit(
            spec,
            runner,
            job=job,
            overwrite=overwrite,
            accept_changed_code=accept_changed_code,
            repair=(lambda path: _uncommit_damaged(path, console)) if repair else None,
            on_started=None if quiet or executor != "ray" else started,  # inline says nothing of itself
            progress=None if quiet else make_progress(console, unit=_unit(spec), interval=progress_interval),
            notify=note,
        )
    except BadInput as err:
        _fail(str(err))
    except ClusterLost as err:
        _console().print(f"[bold red]error:[/bold red] {escape(str(err))}", markup=True)
        # Ray's exit hooks wait on the lost cluster (a minute and more): the store is finalized and
        # its lock gone, so nothing is left to do but leave
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(EXIT_FAILED_SHARDS)
    except StorageDown as err:  # the run stopped on a storage outage: the store is as finalized as it could be
        _fail(str(err), EXIT_FAILED_SHARDS)
    except KeyboardInterrupt:
        if spec is not None and (Path(spec.store.path).exists() or _is_remote(spec.store.path)):
            console.print(
                "\n[yellow]interrupted[/yellow]: committed shards are kept; run the same command again to resume"
            )
        else:
            console.print("\n[yellow]interrupted[/yellow] before any store was written")
        # Ray's exit hooks take seconds more, past the grace `ray job stop` (3 s) or a scheduler gives
        # before its SIGKILL; the store is finalized and its lock gone, so leave now (its Ray goes with us)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(EXIT_INTERRUPTED)
    from .live import error_line

    ran = summary.ran
    if summary.skipped:
        console.print(
            f"resumed: {summary.skipped} shard{' was' if summary.skipped == 1 else 's were'} already committed"
        )
    nonfinite = _nonfinite_warning(summary.path)
    if summary.failed:
        # results that break the job's rules (NonFiniteError, StoredOverflowError) come back the same when rerun
        rejected = all(
            any(name in (result.error or "") for name in ("NonFiniteError", "StoredOverflowError"))
            for result in summary.failed.values()
        )
        console.print(
            f"[bold red]{len(summary.failed)} of {summary.total} shards failed[/bold red]"
            + ("; " if rejected else " after retries; ")
            + escape(f"see `pipeline status {summary.path}`")
            + ("" if rejected else "; run the same command again to retry them")
        )
        first = next(iter(summary.failed.values()))
        console.print(  # the error's own text: "[batch, 3]" is not console markup
            escape(
                f"first error (shard {first.shard_id}): {error_line(first.error)} "
                f"(traceback: pipeline inspect {summary.path} --shard {first.shard_id})"
            )
        )
        if any("StoredOverflowError" in (result.error or "") for result in summary.failed.values()):
            console.print(
                "the stored dtype cannot hold some results (float16: |x| <= 65504, bfloat16: |x| <= 3.4e38; these "
                "shards are not retried and not committed): store them as float32, or float16 ones as bfloat16 "
                "(store.dtype, or store.encoding.<name>.dtype for one array), and submit again with --overwrite "
                "(the stored dtype is part of the results)"
            )
        from .errors import STORAGE_FULL_MESSAGES

        if any(text in (result.error or "") for result in summary.failed.values() for text in STORAGE_FULL_MESSAGES):
            unstarted = summary.total - summary.skipped - summary.ran - len(summary.failed)
            console.print(
                f"the disk of {summary.path} is full (or over its quota), so "
                + (f"the other {unstarted} shards were not started; " if unstarted else "")
                + "free space there (`pipeline submit --dry-run` says how much the job writes), then run the same "
                "command again (it resumes)"
            )
        from .storage import says_no_credentials

        if any(says_no_credentials(result.error) for result in summary.failed.values()):
            console.print(
                f"the workers found no credentials for {summary.path} (this process did): give every Ray node "
                "the same variables (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL, ...) or an "
                "instance role, or put them in store.storage_options, which travel with the job's tasks and "
                "are never recorded; then run the same command again"
            )
        if nonfinite:
            console.print(nonfinite)
        sys.exit(EXIT_FAILED_SHARDS)
    rate = f", {summary.samples_per_second:,.0f} {_unit(spec)}/s per task" if ran else ""
    click.echo(f"complete: {summary.path} ({ran} shard{'' if ran == 1 else 's'} run{rate})")
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
        f'`pipeline.open_results("{path}")` and `isnull()`'
    )


@main.command()
@click.argument("job", type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help=SET_HELP)
@click.option(
    "--deep/--no-deep",
    default=True,
    show_default=True,
    help="Also open input files, import the function and run it on two samples.",
)
@click.option(
    "--overwrite",
    is_flag=True,
    help="Check as `submit --overwrite` would: an existing store at store.path is to be replaced, not resumed.",
)
@click.option(
    "--accept-changed-code",
    is_flag=True,
    help="Check as `submit --accept-changed-code` would: a store whose function or solver module changed resumes.",
)
def validate(job, overrides, deep, overwrite, accept_changed_code):
    """Check JOB without running it or touching any store.

    Exits 0 when the job is valid, 2 with one line per problem otherwise
    (naming the key, the bad value and the fix). An existing store at
    store.path is checked as `submit` would resume it (the same spec, the
    same input files and code); --overwrite checks a replacement instead.

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

            console = _console()
            prepared = prepare(spec, lambda text: console.print(f"[yellow]note[/yellow]: {escape(text)}"))
            line += "".join(f"\n  {part}" for part in prepared.summary.splitlines())
            if not overwrite:
                from .driver import check_resumable

                resumes = check_resumable(spec, accept_changed_code=accept_changed_code)
                line += f"\n  {resumes}" if resumes else ""
            line += (
                f"\n  {len(prepared.plan.shards)} shard{'' if len(prepared.plan.shards) == 1 else 's'} of "
                f"{min(prepared.plan.shard_size, prepared.plan.n)} {_unit(spec)}, "
                f"chunks of {prepared.plan.chunk_size}"
                f"\n  results: {human_size(prepared.plan.result_bytes())} before compression"
            )
    except BadInput as err:
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
@click.argument("store", type=click.Path(file_okay=False), callback=_store_argument)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print the same facts as JSON: attributes, arrays, shard counts, manifest summary, failed shards.",
)
@click.option(
    "--shard",
    "shard_id",
    type=int,
    default=None,
    metavar="N",
    help="Show one shard instead: its range, status, attempts and the full traceback of each failed one.",
)
def inspect(store, as_json, shard_id):
    """Print the arrays, shapes, dtypes, chunking, completeness and manifest of STORE.

    Also prints the error of every failed shard, one line each; --shard N
    prints shard N's attempts with their full tracebacks.

    STORE is a folder or a URL (s3://bucket/results/x.zarr, gs://, az://), read
    with the environment's credentials and endpoint (AWS_PROFILE or
    AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL, ...).

    \b
    Examples:
      pipeline inspect results/quickstart.zarr
      pipeline inspect results/sweep.zarr
      pipeline inspect results/sweep.zarr --shard 3   # why shard 3 failed: every attempt's traceback
      pipeline inspect results/sweep.zarr --json | jq .arrays   # for scripts
    """
    from .report import inspect_shard, inspect_store, store_facts

    if as_json:
        try:
            _check_readable(store)
            click.echo(json.dumps(store_facts(store), indent=2, default=str))
        except BadInput as err:
            _fail(str(err))
        return
    try:
        _check_readable(store)
        console = Console(highlight=False, width=None if sys.stdout.isatty() else 120)
        if shard_id is not None:
            inspect_shard(store, shard_id, console)
        else:
            inspect_store(store, console)
    except BadInput as err:
        _fail(str(err))


@main.command()
@click.argument("store", type=click.Path(file_okay=False), callback=_store_argument)
@click.option(
    "-o",
    "--output",
    "out",
    type=click.Path(dir_okay=False),
    default=None,
    help="HTML file or URL to write (default: the store's path with .html, e.g. results/quickstart.html; "
    "for a URL store, beside it in the bucket).",
)
def report(store, out):
    """Write a self-contained HTML page of STORE's pictures and tables (figures inline, one file).

    Any store: the shard timeline per worker and the throughput over time.
    A derivative store: per-sample norms of each quantity and, for grid
    inputs, maps over the grid. A sweep: output fields of a few cases and the
    outputs / sensitivities against the swept parameters. Needs matplotlib
    (pip install 'pipeline[notebook]').

    STORE is a folder or a URL (s3://bucket/results/x.zarr, gs://, az://), read
    with the environment's credentials and endpoint (AWS_PROFILE or
    AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL, ...).

    \b
    Examples:
      pipeline report results/quickstart.zarr            # writes results/quickstart.html
      pipeline report results/sweep.zarr -o sweep.html
    """
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        _fail("pipeline report draws with matplotlib, which is not installed; pip install 'pipeline[notebook]'")
    from .html_report import write_report

    try:
        _check_readable(store)
        with _console().status(f"reading {escape(store)} and drawing its report...") as spinner:  # a terminal only

            def say(text: str) -> None:  # what is read now: "reading T: range 3 of 17"
                spinner.update(f"report of {escape(store)}: {escape(text)}")

            written = write_report(store, out, progress=say)
    except BadInput as err:
        _fail(str(err))
    click.echo(f"wrote {written}")


@main.command()
@click.argument("store", type=click.Path(file_okay=False), callback=_store_argument)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print the status as JSON: the counts, every shard id, state and driver (see below).",
)
def status(store, as_json):
    """Say whether STORE is running, stale, complete or incomplete, and count its shards.

    \b
    running     a `pipeline submit` holds the store now (its lock, or for
                a URL store its lease, is held):
                its host, pid, start time, command, shards done / running /
                pending / failed, samples/s and ETA (updated every few seconds)
    stale       the driver that ran the store is gone (killed, machine lost;
                for a URL store: its lease expired): run its command again
                to resume, committed shards are kept
    complete    every shard committed (never said of a store that an
                --overwrite is replacing)
    incomplete  failed or pending shards, no driver: submitting the job again
                finishes them (`pipeline inspect` shows the errors)

    \b
    Exit codes: 0 complete, 1 incomplete or stale, 3 running, 2 not a store
    (or a bucket it cannot read).

    STORE is a folder or a URL (s3://bucket/results/x.zarr, gs://, az://), read
    with the environment's credentials and endpoint (AWS_PROFILE or
    AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL, ...).

    \b
    --json prints one object: path, name, complete, shards, done, failed,
    pending, samples_done, samples, unit, failed_shards, pending_shards (the
    store on disk), state (as above) and driver: null, or host, pid, started,
    command, cwd, phase (starting, replacing, running, finalizing), replacing,
    updated, alive and progress (null before the first shard, else shards,
    shards_done, shards_running, shards_pending, shards_failed, samples,
    samples_done, samples_per_second, eta_seconds, elapsed_seconds, unit).

    \b
    Examples:
      pipeline status results/quickstart.zarr
      pipeline status results/sweep.zarr --json   # for scripts
      watch pipeline status results/sweep.zarr    # from another terminal while it runs
    """
    from .live import STATUS_EXIT_CODES, store_status
    from .report import print_status

    try:
        _check_readable(store)
        report = store_status(store)
    except BadInput as err:
        _fail(str(err))
    if as_json:
        click.echo(json.dumps(report))
    else:
        print_status(report, Console(highlight=False, soft_wrap=True), ids_shown=STATUS_IDS_SHOWN)
    sys.exit(STATUS_EXIT_CODES[report["state"]])


def _verify_with_progress(store: str, threads: int, quiet: bool):
    """``verify.verify_store`` with a progress bar on stderr (none with ``quiet``)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from .store import read_attributes
    from .verify import verify_store

    read_attributes(store)  # not a store: said before a progress bar starts (its end would leave a blank line)
    if quiet:
        return verify_store(store, threads=threads)
    with Progress(
        TextColumn("verify"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("shards"),
        TimeRemainingColumn(),
        console=_console(),
        transient=True,
    ) as bar:
        task = bar.add_task("verify", total=None)

        def advance(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        return verify_store(store, threads=threads, progress=advance)


def _uncommit_damaged(store: str, console: Console) -> list[int]:
    """Verify ``store`` (when it exists) and un-commit its damaged shards; their ids."""
    from .store import StoreError, is_pipeline_store
    from .verify import repair_store, summary_lines

    if not is_pipeline_store(store):
        return []
    report = _verify_with_progress(store, 4, quiet=False)
    for line in summary_lines(report):
        console.print(f"[yellow]damaged[/yellow] {escape(line)}")
    if report.unrepairable:
        raise StoreError(
            f"store.path: {store} has damaged arrays that no shard writes "
            f"({', '.join(sorted({p.array for p in report.unrepairable}))}); "
            "recompute the whole store with --overwrite"
        )
    damaged = repair_store(store, report)
    if damaged:
        console.print(
            f"repair: un-committed {len(damaged)} damaged shards ({', '.join(map(str, damaged[:20]))}"
            f"{' ...' if len(damaged) > 20 else ''}); this run recomputes them"
        )
    else:
        console.print(f"repair: every committed shard of {store} verified; nothing to recompute")
    return damaged


@main.command()
@click.argument("store", type=click.Path(file_okay=False), callback=_store_argument)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON (every problem, for scripts).")
@click.option(
    "--repair",
    is_flag=True,
    help="Un-commit the damaged shards and recompute them (runs the store's own job, as submit does).",
)
@click.option(
    "--threads",
    default=4,
    show_default=True,
    type=click.IntRange(1, 64),
    help="Chunks are read and checked by this many threads.",
)
@click.option("--local", is_flag=True, help="With --repair: start a local Ray sized to this machine.")
@click.option("--address", default=None, metavar="HOST:PORT", help="With --repair: the Ray cluster to join.")
@click.option(
    "--executor",
    type=click.Choice(["ray", "inline"]),
    default="ray",
    show_default=True,
    help="With --repair: 'inline' recomputes in this process without Ray.",
)
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def verify(store, as_json, repair, threads, local, address, executor, quiet):
    """Read every chunk of STORE and check each committed shard against its checksum.

    Each shard's checksum (CRC32C per array, recorded in its commit marker and
    the manifest when it committed) is recomputed from the chunks in the
    store. Reports missing, unreadable (a chunk whose crc32c no longer
    matches) and mismatching chunks by array and shard. Exit code 0 when
    everything matches, 1 when something is damaged (after --repair: 0 when
    the recomputed store is complete), 2 when STORE is not a pipeline store.
    Only committed shards are checked: while a driver still writes the store
    it says so (and --json has running: true).

    STORE is a folder or a URL (s3://bucket/results/x.zarr, gs://, az://), read
    with the environment's credentials and endpoint (AWS_PROFILE or
    AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL, ...).

    \b
    Examples:
      pipeline verify results/quickstart.zarr
      pipeline verify results/quickstart.zarr --json
      pipeline verify results/quickstart.zarr --repair --local   # recompute the damaged shards
      pipeline submit jobs/quickstart.yaml --local --repair      # the same, from the job file
    """
    from .lock import store_lock
    from .store import StoreError
    from .verify import repair_store, summary_lines

    if local and address:
        raise click.UsageError(f"--local and --address {address} contradict each other; pass only one of them")
    try:
        _check_readable(store)
        if not repair:
            report = _verify_with_progress(store, threads, quiet or as_json)
        else:
            from .spec import drop_redacted_storage_options, validate_spec
            from .store import read_attributes

            stored = read_attributes(store).get("spec")
            if not isinstance(stored, dict):
                _fail(
                    f"{store} records no job spec, so it cannot be recomputed; run its job file with "
                    "`pipeline submit JOB --repair`"
                )
            stored, dropped = drop_redacted_storage_options(stored)
            if dropped:
                _console().print(
                    f"note: the store's store.storage_options ({', '.join(dropped)}) were never recorded; the repair "
                    "uses this environment's credentials and endpoint on every node (or run `pipeline submit JOB "
                    "--set store.storage_options=... --repair`)"
                )
            spec = validate_spec(stored, f"{store} (its recorded spec)")
            spec = spec.model_copy(
                update={"store": spec.store.model_copy(update={"path": _store_location(store), "overwrite": False})}
            )
            if executor == "ray" and not local:  # a cluster out of reach stops the repair before it un-commits
                from .cluster import resolve_address
                from .runner import check_cluster, cluster_address

                source = "--address" if address else "RAY_ADDRESS"
                check_cluster(resolve_address(cluster_address(address), source), source)
            with store_lock(store, "pipeline verify --repair"):
                report = _verify_with_progress(store, threads, quiet or as_json)
                if report.unrepairable:
                    raise StoreError(
                        f"{store} has damaged arrays that no shard writes "
                        f"({', '.join(sorted({p.array for p in report.unrepairable}))}); "
                        "recompute the whole store with `pipeline submit JOB --overwrite`"
                    )
                damaged = repair_store(store, report)
    except BadInput as err:
        _fail(str(err))
    from .live import live_status

    state, driver = live_status(store) if not repair else ("idle", None)
    if as_json:
        click.echo(json.dumps({**report.to_json(), "running": state == "running"}))
    else:
        out = Console(highlight=False, soft_wrap=True)
        for line in summary_lines(report):
            out.print(line)
        verdict = "ok" if report.ok else f"damaged: {len(report.damaged_shards)} shards"
        out.print(
            f"{verdict}: {report.path}: {report.committed} of {report.shards} shards committed, "
            f"{report.chunks_read} chunks read"
        )
        if state == "running" and driver is not None and report.committed < report.shards:
            out.print(
                f"note: a driver is still writing this store (pid {driver.get('pid')} on {driver.get('host')}): "
                "the shards it has not committed yet were not checked; run verify again when it completes"
            )
        if report.unrepairable and not repair:  # no shard rewrites them: --repair would refuse
            out.print("recompute the whole store: pipeline submit JOB --overwrite")
        elif not report.ok and not repair:
            out.print(
                f"recompute the damaged shards: pipeline verify {store} --repair --local "
                "(or pipeline submit JOB --repair)"
            )
    if not repair:
        sys.exit(0 if report.ok else EXIT_FAILED_SHARDS)
    if damaged:
        _console().print(f"repair: un-committed shards {', '.join(map(str, damaged))}; recomputing them")
    _submit_spec(lambda: spec, local=local, address=address, executor=executor, overwrite=False, quiet=quiet)


if __name__ == "__main__":  # pragma: no cover
    main()
