"""Human-readable summaries of a store (what `pipeline inspect` prints)."""

from __future__ import annotations

import time
import warnings

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .live import error_line
from .storage import zarr_target
from .store import read_attributes, read_manifest, summarize


def inspect_store(path: str, console: Console) -> None:
    """Print the store's arrays, completeness and a manifest summary."""
    import zarr

    attrs = read_attributes(path)
    counts = summarize(path)
    state = "[green]complete[/green]" if counts["complete"] else "[yellow]incomplete[/yellow]"
    console.print(f"[bold]{attrs.get('name', '?')}[/bold] ({attrs.get('kind', '?')}) at {path}: {state}")
    console.print(
        f"spec hash {attrs.get('spec_hash')}, created {attrs.get('created')}, "
        f"torch {attrs.get('versions', {}).get('torch')}, zarr {attrs.get('versions', {}).get('zarr')}"
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        group = zarr.open_group(zarr_target(path), mode="r", use_consolidated=False)
        table = Table(title="arrays", show_edge=False)
        for column in ("name", "dims", "shape", "dtype", "chunks", "stored"):
            table.add_column(column)
        for name, array in sorted(group.arrays(), key=lambda item: item[0]):
            dims = getattr(array.metadata, "dimension_names", None) or ()
            table.add_row(
                name,
                ", ".join(dims),
                str(tuple(array.shape)),
                shown_dtype(array),
                str(tuple(array.chunks)),
                human_size(array.nbytes_stored()),
            )
    console.print(table)
    console.print(
        f"shards: {counts['done']} done, {counts['pending']} pending, {counts['failed']} failed "
        f"of {counts['shards']} ({counts['samples_done']:,} of {counts['samples']:,} {counts['unit']})"
    )
    manifest = read_manifest(path)
    if manifest is not None and manifest.num_rows:
        data = manifest.to_pydict()
        done = [i for i, s in enumerate(data["status"]) if s == "done"]
        if done:
            rates = [data["samples_per_second"][i] for i in done]
            seconds = sum(data["seconds"][i] for i in done)
            methods = sorted({data["method"][i] for i in done if data["method"][i]})
            devices = sorted({data["device"][i] for i in done if data["device"][i]})
            console.print(
                f"manifest: {seconds:.1f} task-seconds, {min(rates):,.0f}-{max(rates):,.0f} {counts['unit']}/s per shard, "
                f"methods {methods}, devices {devices}, non-finite values {sum(data['nonfinite'][i] for i in done)}, "
                f"max attempts {max(data['attempts'])}"
            )
            _print_timeline(console, data, done)
        _print_nonfinite(console, path, data)
        failed = [i for i, status in enumerate(data["status"]) if status == "failed"]
        for i in failed:
            console.print(f"[red]shard {data['shard_id'][i]} failed:[/red] {escape(error_line(data['error'][i]))}")
        if failed:
            console.print(f"full tracebacks: pipeline inspect {path} --shard {data['shard_id'][failed[0]]}")


def _print_timeline(console: Console, data: dict, done: list[int]) -> None:
    """One line: the worker processes, their busy share and the per-shard overhead (``pipeline.timeline``)."""
    import statistics

    from .timeline import describe_overhead, worker_timeline_columns

    if not {"worker", "started", "finished"} <= set(data):  # a store written before shards recorded them
        return
    timed = [i for i in done if data["finished"][i]]  # 0.0: written before shards recorded their times
    workers = worker_timeline_columns(
        [data["worker"][i] or data["host"][i] for i in timed],
        [data["started"][i] for i in timed],
        [data["finished"][i] for i in timed],
        [data["seconds"][i] for i in timed],
    )
    if not workers:
        return
    shares = [w.busy_share for w in workers]
    low, high = f"{min(shares):.0%}", f"{max(shares):.0%}"
    plural = "es" if len(workers) != 1 else ""
    median = statistics.median(data["seconds"][i] for i in timed)
    console.print(
        f"workers: {len(workers)} process{plural}, busy {low if low == high else f'{low}-{high}'} of their span; "
        f"{describe_overhead(workers, median)}"
    )


def inspect_shard(path: str, shard_id: int, console: Console) -> None:
    """Print one shard: range, status, attempts, and every recorded failed attempt with its full traceback."""
    from .live import read_attempt_errors
    from .store import StoreError, attempt_count, read_marker, read_plan

    read_attributes(path)  # a pipeline store, or a StoreError saying what it is
    shards = {s.id: s for s in read_plan(path)}
    if shard_id not in shards:
        raise StoreError(f"--shard {shard_id}: {path} has shards 0 to {len(shards) - 1}; pick one of them")
    shard = shards[shard_id]
    row = None
    manifest = read_manifest(path)
    if manifest is not None:
        data = manifest.to_pylist()
        row = next((r for r in data if r["shard_id"] == shard_id), None)
    marker = read_marker(path, shard_id)  # one file (one GET), not every shard's marker
    status = "done" if marker else (row["status"] if row else "pending")
    console.print(
        f"[bold]shard {shard_id}[/bold] [{shard.start}, {shard.stop}) of {path}: {status}, "
        f"{attempt_count(path, shard_id)} attempts"
    )
    if marker:
        console.print(
            f"committed on {marker.host} ({marker.device}) in {marker.seconds:.2f} s, "
            f"{marker.samples_per_second:,.0f}/s, method {marker.method}, checksum {marker.checksum}"
        )
    errors = read_attempt_errors(path, shard_id)
    for error in errors:
        when = time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(error.get("t", 0)))
        console.print(
            f"\n[red]attempt {error.get('attempt')} failed[/red] on {error.get('host')} "
            f"(pid {error.get('pid')}) at {when}: {escape(error_line(error.get('traceback', '')))}"
        )
        console.print(escape(error.get("traceback", "").rstrip()), markup=True)
    if not errors and row and row.get("error"):
        console.print(f"\n[red]error[/red]:\n{escape(row['error'])}")


NONFINITE_ROWS = 20  # shards listed by `inspect` with their non-finite counts


def shown_dtype(array) -> str:
    """The Zarr dtype of a store array, and for bfloat16 (stored as its ``uint16`` bits) what it holds."""
    from .encoding import ATTRIBUTE

    enc = array.attrs.get(ATTRIBUTE) or {}  # a Zarr array's attributes: a dict (decode reads xarray's JSON text)
    return "bfloat16 (as uint16)" if enc.get("dtype") == "bfloat16" else str(array.dtype)


def nonfinite_counts(path: str, manifest: dict | None = None) -> dict[int, dict[str, int]]:
    """``{shard: {array: count}}`` of the committed shards holding NaN or Inf.

    From the store's ``manifest`` (``read_manifest(path).to_pydict()``, the markers' records as of the last
    finalize) for the shards it has as done, from the commit markers for the others (it lags the markers after
    an interrupt): one listing, and a read (a GET in a bucket) only per commit the manifest lacks.
    """
    import json

    from .store import committed_ids, read_marker

    recorded: dict[int, tuple[int, str]] = {}
    if manifest:
        rows = zip(manifest["shard_id"], manifest["status"], manifest["nonfinite"], manifest["nonfinite_by_array"])
        recorded = {shard: (count, by_array) for shard, status, count, by_array in rows if status == "done"}
    found = {}
    for shard_id in sorted(committed_ids(path)):
        if shard_id in recorded:
            nonfinite, by_array = recorded[shard_id]
        else:
            record = read_marker(path, shard_id)
            if record is None:  # un-committed since it was listed
                continue
            nonfinite, by_array = record.nonfinite, record.nonfinite_by_array
        if nonfinite:
            found[shard_id] = json.loads(by_array) if by_array else {"(arrays not recorded)": nonfinite}
    return found


def _print_nonfinite(console: Console, path: str, manifest: dict | None = None) -> None:
    counts = nonfinite_counts(path, manifest)
    if not counts:
        return
    arrays = sorted({name for per in counts.values() for name in per})
    totals = {name: sum(per.get(name, 0) for per in counts.values()) for name in arrays}
    console.print(
        "non-finite values (NaN or Inf) by array: "
        + ", ".join(f"{name} {totals[name]:,}" for name in arrays)
        + f", in {len(counts)} shards"
    )
    table = Table(title="non-finite values by shard", show_edge=False)
    table.add_column("shard")
    for name in arrays:
        table.add_column(name)
    for shard_id, per in list(counts.items())[:NONFINITE_ROWS]:
        table.add_row(str(shard_id), *(f"{per.get(name, 0):,}" for name in arrays))
    console.print(table)
    if len(counts) > NONFINITE_ROWS:
        console.print(f"... and {len(counts) - NONFINITE_ROWS} more shards")


def human_size(nbytes: float) -> str:
    """``420800000`` -> ``'401.3 MiB'`` (bytes as a number; whole bytes below 1 KiB)."""
    if nbytes < 1024:
        return f"{nbytes:.0f} B"
    for unit in ("KiB", "MiB", "GiB"):
        nbytes /= 1024
        if nbytes < 1024:
            return f"{nbytes:.1f} {unit}"
    return f"{nbytes / 1024:.1f} TiB"


def store_facts(path: str) -> dict:
    """What `pipeline inspect` prints, as plain data (`pipeline inspect --json`)."""
    import zarr

    attrs = read_attributes(path)
    counts = summarize(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        group = zarr.open_group(zarr_target(path), mode="r", use_consolidated=False)
        arrays = []
        for name, array in sorted(group.arrays(), key=lambda item: item[0]):
            arrays.append(
                {
                    "name": name,
                    "dims": list(getattr(array.metadata, "dimension_names", None) or ()),
                    "shape": list(array.shape),
                    "dtype": str(array.dtype),
                    "chunks": list(array.chunks),
                    "stored_bytes": int(array.nbytes_stored()),
                }
            )
    facts = {
        "path": str(path),
        "name": attrs.get("name"),
        "kind": attrs.get("kind"),
        "complete": bool(attrs.get("complete")),
        "spec_hash": attrs.get("spec_hash"),
        "created": attrs.get("created"),
        "versions": attrs.get("versions", {}),
        "provenance": attrs.get("provenance"),
        "arrays": arrays,
        "shards": counts,
        "manifest": None,
        "failed": [],
    }
    manifest = read_manifest(path)
    if manifest is not None and manifest.num_rows:
        data = manifest.to_pydict()
        done = [i for i, s in enumerate(data["status"]) if s == "done"]
        facts["manifest"] = {
            "task_seconds": sum(data["seconds"][i] for i in done),
            "rate_min": min((data["samples_per_second"][i] for i in done), default=0.0),
            "rate_max": max((data["samples_per_second"][i] for i in done), default=0.0),
            "methods": sorted({data["method"][i] for i in done if data["method"][i]}),
            "devices": sorted({data["device"][i] for i in done if data["device"][i]}),
            "nonfinite": sum(data["nonfinite"][i] for i in done),
            "max_attempts": max(data["attempts"]),
        }
        facts["failed"] = [
            {"shard_id": data["shard_id"][i], "error": data["error"][i]}
            for i, s in enumerate(data["status"])
            if s == "failed"
        ]
    return facts


def print_status(status: dict, console: Console, ids_shown: int = 10) -> None:
    """What `pipeline status` prints: the driver running the store (or gone), then the shard counts."""
    from .live import describe

    state, driver = status["state"], status["driver"]
    unit = status["unit"]  # a sweep counts cases, a derivative job samples
    if state == "running":
        console.print(f"{status['name']}: {status['path']}")
        when = f", updated {driver['updated_seconds_ago']:.0f} s ago" if "updated_seconds_ago" in driver else ""
        command = f": {driver['command']}" if driver.get("command") else ""
        console.print(
            f"running: pid {driver.get('pid')} on {driver.get('host')}, since {driver.get('started')}{when}{command}"
        )
        if driver.get("progress"):
            console.print(f"progress: {describe(driver['progress'])}")
        elif driver.get("phase") == "replacing":
            console.print("replacing the store (--overwrite): its old results are being recomputed, it is not complete")
        else:
            console.print("starting: no shard has run yet")
        return
    table = Table(title=f"{status['name']}: {status['path']}", show_edge=False)
    keys = ("complete", "shards", "done", "pending", "failed", "samples_done", "samples")
    for key in keys:
        table.add_column(key.replace("samples", unit))
    table.add_row(*(str(status[k]) for k in keys))
    if state == "stale":
        updated = f", last update {driver.get('updated')}" if driver.get("updated") else ""
        what = (
            "an --overwrite of this store was interrupted; "
            if driver.get("replacing")
            else "committed shards are kept; "
        )
        console.print(
            f"stale: the driver of this store is gone (pid {driver.get('pid')} on {driver.get('host')}, "
            f"started {driver.get('started')}{updated}): {what}run its command again to resume"
        )
    console.print(table)
    for kind in ("failed", "pending"):
        ids = status[f"{kind}_shards"]
        if ids:
            more = f" and {len(ids) - ids_shown} more (--json lists all)" if len(ids) > ids_shown else ""
            console.print(f"{kind} shards: {', '.join(map(str, ids[:ids_shown]))}{more}")
    if status["failed_shards"]:
        console.print(f"their errors: pipeline inspect {status['path']}")
    if state == "stale" and driver.get("command"):
        console.print(f"resume: cd {driver.get('cwd', '.')} && {resume_command(driver)}")
    elif not status["complete"] and not status["failed_shards"] and not status["pending_shards"]:
        console.print(  # e.g. `ray job stop` while the driver was finalizing
            "every shard is committed but the store was not finalized (its driver stopped first): "
            "run the job again to finalize it; nothing is computed again"
        )
    elif not status["complete"]:
        console.print("run the job again to finish them: committed shards are kept")


def resume_command(driver: dict) -> str:
    """The stale driver's command, to run again: without ``--overwrite`` once the store was replaced.

    Run again as it was, an interrupted ``--overwrite`` would discard the
    shards it had committed since it replaced the store; one interrupted
    before the store was replaced (``replacing``) still has to replace it.

    Example:
        >>> resume_command({"command": "pipeline submit jobs/a.yaml --overwrite --local", "replacing": False})
        'pipeline submit jobs/a.yaml --local'
    """
    import shlex

    command = driver["command"]
    if driver.get("replacing"):
        return command
    try:
        words = shlex.split(command)
    except ValueError:
        return command
    kept = [w for w in words if w != "--overwrite"]
    return command if kept == words else shlex.join(kept)
