"""Human-readable summaries of a store (what `pipeline inspect` prints)."""

from __future__ import annotations

import warnings

from rich.console import Console
from rich.table import Table

from .store import _target, read_attributes, read_manifest, summarize


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
        group = zarr.open_group(_target(path), mode="r", use_consolidated=False)
        table = Table(title="arrays", show_edge=False)
        for column in ("name", "dims", "shape", "dtype", "chunks", "stored"):
            table.add_column(column)
        for name in sorted(group.array_keys()):
            array = group[name]
            dims = getattr(array.metadata, "dimension_names", None) or ()
            table.add_row(
                name,
                ", ".join(dims),
                str(tuple(array.shape)),
                str(array.dtype),
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
        for i, status in enumerate(data["status"]):
            if status == "failed":
                console.print(f"[red]shard {data['shard_id'][i]} failed:[/red] {data['error'][i]}")


def human_size(nbytes: float) -> str:
    """``420800000`` -> ``'401.3 MiB'`` (bytes as a number; whole bytes below 1 KiB)."""
    if nbytes < 1024:
        return f"{nbytes:.0f} B"
    for unit in ("KiB", "MiB", "GiB"):
        nbytes /= 1024
        if nbytes < 1024:
            return f"{nbytes:.1f} {unit}"
    return f"{nbytes / 1024:.1f} TiB"
