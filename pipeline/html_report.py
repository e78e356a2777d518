"""``pipeline report STORE``: one self-contained HTML page of a store's pictures and tables.

Every figure is drawn with matplotlib's object API (``Figure``, no pyplot,
so no display is needed and a notebook's backend is left alone) and inlined
as a base64 PNG, so the page is one file to mail or open anywhere. What it
shows:

- any store: the shard timeline per worker and the throughput over time
  (from ``manifest.parquet``), and the counts of done / pending / failed shards;
- a derivative store: per-sample norms of every quantity (histograms and a
  table), and a map over the input grid when the inputs are a 2-D grid (a line
  over a 1-D one);
- a sweep store: the output fields of a few cases, each scalar output and
  sensitivity against each swept parameter, and a table of them.

Example:
    >>> write_report("results/quickstart.zarr", "quickstart.html")   # doctest: +SKIP
"""

from __future__ import annotations

import base64
import errno
import html
import io
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

MAX_SAMPLES = 200_000  # samples whose norms are computed (evenly strided beyond that)
SHOWN_CASES = 3  # cases whose output fields are drawn
#: cases drawn in a scatter plot (evenly strided beyond: 100,000 markers per panel took 1.2 s to draw each)
MAX_SCATTER_POINTS = 20_000
RANGE_BYTES = 64 * 2**20  # float64 bytes of one range of samples (cases) read at a time

#: says what the report reads now ("reading T: range 3 of 17"), for a spinner's text
Progress = Callable[[str], None]


def _silent(text: str) -> None:
    """The ``progress`` of a report nobody watches."""


@dataclass
class Section:
    """One part of the page: a title, figures (PNG bytes with captions), tables (header + rows) and notes."""

    title: str
    figures: list[tuple[str, bytes]] = field(default_factory=list)
    tables: list[tuple[list[str], list[list[Any]]]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return buffer.getvalue()


def _figure(width: float = 7.0, height: float = 3.6, **grid):
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), layout="constrained")
    return figure, figure.subplots(**grid) if grid else figure.add_subplot()


def _fmt(value: Any) -> str:
    if isinstance(value, (float, np.floating)):
        return "nan" if not np.isfinite(value) else f"{value:.6g}"
    return str(value)


# ------------------------------------------------------------------ any store


def manifest_section(path: str | Path, progress: Progress = _silent) -> Section:
    """Counts, the shard timeline per worker and the throughput over time, from the manifest."""
    from .store import read_manifest, summarize

    progress("reading the manifest")
    counts = summarize(path)
    section = Section("Shards")
    unit = counts["unit"]
    section.tables.append(
        (
            ["complete", "shards", "done", "pending", "failed", f"{unit} done", unit],
            [
                [
                    counts["complete"],
                    counts["shards"],
                    counts["done"],
                    counts["pending"],
                    counts["failed"],
                    counts["samples_done"],
                    counts["samples"],
                ]
            ],
        )
    )
    manifest = read_manifest(path)
    rows = manifest.to_pylist() if manifest is not None else []
    timed = [r for r in rows if r["status"] == "done" and r.get("started") and r.get("finished")]
    if not timed:
        section.notes.append(
            "no timed shards in the manifest yet (a store written before shards recorded their "
            "start and end, or one no shard has committed in)"
        )
        return section
    t0 = min(r["started"] for r in timed)
    workers = sorted({r.get("worker") or r["host"] for r in timed})
    figure, axes = _figure(8.0, 0.9 + 0.35 * len(workers))
    for row in timed:
        y = workers.index(row.get("worker") or row["host"])
        axes.barh(
            y,
            row["finished"] - row["started"],
            left=row["started"] - t0,
            height=0.7,
            color="tab:blue",
            edgecolor="white",
        )
        if len(timed) <= 60:
            axes.text(
                row["started"] - t0 + (row["finished"] - row["started"]) / 2,
                y,
                str(row["shard_id"]),
                ha="center",
                va="center",
                fontsize=7,
                color="white",
            )
    axes.set_yticks(range(len(workers)), workers)
    axes.set_xlabel("seconds since the first shard started")
    axes.set_title("shard timeline per worker (number: shard id)")
    section.figures.append(("shard timeline", _png(figure)))

    ends = sorted(timed, key=lambda r: r["finished"])
    finished = np.array([r["finished"] - t0 for r in ends])
    done = np.cumsum([r["stop"] - r["start"] for r in ends])
    figure, (left, right) = _figure(9.0, 3.2, ncols=2)
    left.step(np.r_[0.0, finished], np.r_[0, done], where="post")
    left.set_xlabel("seconds")
    left.set_ylabel(f"{unit} done")
    left.set_title("progress")
    right.plot(finished, [r["samples_per_second"] for r in ends], "o", ms=4)
    right.set_xlabel("seconds (shard end)")
    right.set_ylabel(f"{unit}/s per shard")
    right.set_ylim(bottom=0)
    right.set_title("throughput")
    section.figures.append(("throughput over time", _png(figure)))
    wall = max(r["finished"] for r in timed) - t0
    task_seconds = sum(r["seconds"] for r in timed)
    section.tables.append(
        (
            ["workers", "wall seconds", "task seconds", f"{unit}/s overall", "median shard seconds", "max attempts"],
            [
                [
                    len(workers),
                    round(wall, 3),
                    round(task_seconds, 3),
                    round(sum(r["stop"] - r["start"] for r in timed) / wall, 1) if wall > 0 else 0.0,
                    round(float(np.median([r["seconds"] for r in timed])), 3),
                    max(r["attempts"] for r in rows),
                ]
            ],
        )
    )
    add_worker_table(section, timed)
    for row in rows:
        if row["status"] == "failed":
            section.notes.append(f"shard {row['shard_id']} failed: {row['error']}")
    return section


MAX_WORKER_ROWS = 32


def add_worker_table(section: Section, timed: list[dict]) -> None:
    """Per worker process: shards, busy and span seconds, the gaps between its shards (``timeline``); and the per-shard overhead."""
    from .timeline import describe_overhead, worker_timeline

    workers = worker_timeline(timed)
    rows = [
        [
            w.worker,
            w.shards,
            round(w.busy, 3),
            round(w.span, 3),
            f"{w.busy_share:.1%}",
            round(w.mean_gap * 1e3, 1),
            round(w.max_gap * 1e3, 1),
        ]
        for w in workers[:MAX_WORKER_ROWS]
    ]
    if len(workers) > MAX_WORKER_ROWS:
        rows.append([f"... and {len(workers) - MAX_WORKER_ROWS} more workers", "", "", "", "", "", ""])
    section.tables.append(
        (["worker (host:pid)", "shards", "busy s", "span s", "busy share", "mean gap ms", "max gap ms"], rows)
    )
    section.notes.append(describe_overhead(workers, float(np.median([r["seconds"] for r in timed]))))


# ----------------------------------------------------------- derivative store


def range_size(array, chunk: int) -> int:
    """Samples (cases) read at a time from ``array``: whole chunks, about ``RANGE_BYTES`` as float64, one at least.

    Small chunks are read many at a time: each read costs milliseconds beyond
    its bytes (3,125 chunks of 64 samples one by one: 170 s for four quantities).
    """
    per_row = 8 * math.prod(array.shape[1:])
    return chunk * max(1, RANGE_BYTES // (per_row * chunk))


def sampled_rows(n: int, chunk: int, max_samples: int = MAX_SAMPLES) -> list[slice]:
    """Row ranges of whole store chunks (``chunk`` samples), evenly spaced over ``n``, at most ``max_samples`` rows.

    Every row when they fit, in ranges of ``chunk`` rows (only one is read at a
    time: 200,000 Hessians of 150 x 2 x 2 are 960 MB as float64). A strided selection would read every chunk of the
    store for a fraction of its samples; these ranges read only the chunks
    they keep (at least one, cut to ``max_samples`` rows when a chunk is larger).

    >>> sampled_rows(10, 4, 100)
    [slice(0, 4, None), slice(4, 8, None), slice(8, 10, None)]
    >>> sampled_rows(100, 10, 30)
    [slice(0, 10, None), slice(40, 50, None), slice(90, 100, None)]
    """
    if n <= max_samples:
        return [slice(start, min(n, start + chunk)) for start in range(0, n, chunk)]
    chunks = -(-n // chunk)
    keep = max(1, min(chunks, max_samples // chunk))
    picked = [0] if keep == 1 else [i * (chunks - 1) // (keep - 1) for i in range(keep)]  # the first and last too
    return [slice(i * chunk, min(n, i * chunk + min(chunk, max_samples))) for i in picked]


def sample_norms(dataset, name: str, max_samples: int = MAX_SAMPLES, progress: Progress = _silent) -> np.ndarray:
    """The Frobenius norm of ``name`` per sample (over every other axis), for at most ``max_samples`` samples.

    Every sample up to ``max_samples``, beyond it the samples of whole chunks evenly spaced over the
    store (``sampled_rows``), read one range at a time (``range_size``): only those chunks are
    read, and only one range is in memory as float64. ``progress`` is told each range before it is read.
    """
    array = dataset[name]
    n = array.sizes["sample"]
    norms = []
    block = range_size(array, int(dataset.attrs.get("chunk_size") or n))
    ranges = sampled_rows(n, block, max_samples)
    for number, rows in enumerate(ranges, 1):
        progress(f"reading {name}: range {number} of {len(ranges)}")
        values = np.asarray(array.isel(sample=rows).values, dtype=np.float64)
        norms.append(np.sqrt(np.sum(values.reshape(values.shape[0], -1) ** 2, axis=1)))
    return np.concatenate(norms)


def derivative_sections(dataset, progress: Progress = _silent) -> list[Section]:
    """Norm histograms and table per quantity; a map over the input grid when the inputs are a grid.

    ``progress`` is told each range of samples before it is read.
    """
    quantities = [q for q in dataset.attrs.get("quantities", []) if q in dataset.data_vars]
    section = Section("Quantities: per-sample norms")
    rows = []
    figure, axes = _figure(3.2 * max(1, len(quantities)), 3.0, ncols=max(1, len(quantities)), squeeze=False)
    for axis, name in zip(axes[0], quantities):
        norms = sample_norms(dataset, name, progress=progress)
        finite = norms[np.isfinite(norms)]
        rows.append(
            [
                name,
                ", ".join(map(str, dataset[name].dims)),
                str(tuple(dataset[name].shape)),
                len(norms),
                int(len(norms) - len(finite)),
                *(float(f(finite)) if len(finite) else float("nan") for f in (np.min, np.mean, np.max)),
            ]
        )
        if len(finite):
            axis.hist(finite, bins=40, color="tab:orange")
        axis.set_title(f"|{name}| per sample")
        axis.set_xlabel("Frobenius norm")
    axes[0][0].set_ylabel("samples")
    section.tables.append(
        (["quantity", "dims", "shape", "samples used", "NaN samples", "min norm", "mean norm", "max norm"], rows)
    )
    section.figures.append(("norm histograms", _png(figure)))
    if dataset.sizes["sample"] > MAX_SAMPLES:
        section.notes.append(
            f"norms of evenly spaced runs of whole chunks of the store, {MAX_SAMPLES:,} samples at most "
            "(samples used: the table)"
        )
    sections = [section]
    grid = grid_section(dataset, quantities, progress)
    if grid is not None:
        sections.append(grid)
    return sections


def per_sample(array, chunk: int, first_output: bool = False, progress: Progress = _silent) -> np.ndarray:
    """Per sample: the Frobenius norm of ``array`` (or its first output's value), read a range at a time.

    Ranges of whole chunks (``range_size``): only one is in memory as float64, never the whole array.
    """
    parts = []
    step = range_size(array, chunk)
    starts = range(0, array.sizes["sample"], step)
    for number, start in enumerate(starts, 1):
        progress(f"reading {array.name} for the grid map: range {number} of {len(starts)}")
        values = np.asarray(array.isel(sample=slice(start, start + step)).values, dtype=np.float64)
        flat = values.reshape(values.shape[0], -1)
        parts.append(flat[:, 0] if first_output else np.sqrt(np.sum(flat**2, axis=1)))
    return np.concatenate(parts)


def grid_section(dataset, quantities, progress: Progress = _silent) -> Section | None:
    """Maps of the first output's value and of each quantity's norm over a 1-D or 2-D input grid."""
    from .labels import grid_axes

    axes_points = grid_axes(dataset.attrs)
    if axes_points is None or len(axes_points) > 2 or dataset.sizes["sample"] > 4_000_000:
        return None
    names = list(axes_points)
    shown = [q for q in quantities if q != "inputs"]
    section = Section(f"Over the input grid ({' x '.join(str(len(v)) for v in axes_points.values())})")
    figure, axes = _figure(3.6 * len(shown), 3.2, ncols=len(shown), squeeze=False)
    chunk = int(dataset.attrs.get("chunk_size") or dataset.sizes["sample"])
    for axis, name in zip(axes[0], shown):
        first = name == "value" and dataset[name].ndim == 2
        values = per_sample(dataset[name], chunk, first_output=first, progress=progress)
        title = f"|{name}|"
        if first:  # the first output the array holds: its own axis when store.encoding keeps chosen outputs
            outputs = dataset[name].dims[1]
            title = f"value, output {dataset[outputs].values[0] if outputs in dataset.coords else 0}"
        if len(names) == 2:  # the flat sample axis is the grid in C order (as labels.unstack_grid reads it)
            field = values.reshape(len(axes_points[names[0]]), len(axes_points[names[1]]))
            mesh = axis.pcolormesh(axes_points[names[1]], axes_points[names[0]], field, shading="auto", cmap="viridis")
            figure.colorbar(mesh, ax=axis)
            axis.set_xlabel(names[1])
            axis.set_ylabel(names[0])
        else:
            axis.plot(axes_points[names[0]], values)
            axis.set_xlabel(names[0])
        axis.set_title(title)
    section.figures.append(("maps over the grid", _png(figure)))
    return section


# ---------------------------------------------------------------- sweep store


def field_summary(array, chunk: int, progress: Progress = _silent, last_mean: bool = False):
    """NaN values, min, mean and max of a sweep output, read a range of whole chunks of cases at a time.

    Only one range (``range_size``) is in memory as float64, never the whole array.
    ``last_mean``: also each case's mean (NaN skipped, as xarray's) at the last
    index of its second axis (the last saved time), from the same reads;
    then ``(row, means)``.
    """
    nans, count, total, low, high = 0, 0, 0.0, np.inf, -np.inf
    means = []
    step = range_size(array, chunk)
    starts = range(0, array.sizes["case"], step)
    for number, start in enumerate(starts, 1):
        progress(f"reading {array.name}: range {number} of {len(starts)}")
        values = np.asarray(array.isel(case=slice(start, start + step)).values, dtype=np.float64)
        if last_mean:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # a case all NaN: its mean is NaN
                means.append(np.nanmean(values[:, -1].reshape(len(values), -1), axis=1))
        seen = values[~np.isnan(values)]
        nans += values.size - seen.size
        if seen.size:
            count, total = count + seen.size, total + float(seen.sum())
            low, high = min(low, float(seen.min())), max(high, float(seen.max()))
    row = [nans, low, total / count, high] if count else [nans, float("nan"), float("nan"), float("nan")]
    return (row, np.concatenate(means)) if last_mean else row


def sweep_sections(dataset, progress: Progress = _silent) -> list[Section]:
    """Output fields of a few cases; scalar outputs and sensitivities against the swept parameters.

    ``progress`` is told each range of cases before it is read.
    """
    attrs = dataset.attrs
    swept = [p for p in attrs.get("swept", []) if p in dataset.coords]
    outputs = [o for o in attrs.get("outputs", []) if o in dataset.data_vars]
    n = dataset.sizes["case"]
    cases = sorted({0, n // 2, n - 1})[:SHOWN_CASES]
    chunk = int(attrs.get("chunk_size") or n)
    fields = Section("Output fields")
    rows = []
    scalars = [s for s in attrs.get("sensitivities", []) if s in dataset.data_vars]
    last_means: dict[str, Any] = {}  # no sensitivities: each output's per-case mean at its last saved time
    for name in outputs:
        array = dataset[name]
        progress(f"reading {name} of cases {cases}")
        values = np.asarray(array.isel(case=cases).values, dtype=np.float64)
        other = [d for d in array.dims if d != "case"]
        figure, axes = _figure(3.4 * len(cases), 3.0, ncols=len(cases), squeeze=False)
        for axis, case, case_values in zip(axes[0], cases, values):
            label = ", ".join(f"{p}={float(dataset[p].values[case]):.3g}" for p in swept)
            if len(other) == 2:
                rows_dim, cols_dim = other
                step = max(1, case_values.shape[0] // 5)
                for i in range(0, case_values.shape[0], step):
                    t = dataset[rows_dim].values[i] if rows_dim in dataset.coords else i
                    axis.plot(
                        dataset[cols_dim].values if cols_dim in dataset.coords else np.arange(case_values.shape[1]),
                        case_values[i],
                        label=f"{rows_dim}={float(t):.3g}",
                    )
                axis.set_xlabel(cols_dim)
                axis.legend(fontsize=7)
            elif len(other) == 1:
                axis.plot(case_values)
                axis.set_xlabel(other[0])
            axis.set_title(f"{name}, case {case}\n{label}", fontsize=9)
        axes[0][0].set_ylabel(name)
        fields.figures.append((f"{name} of cases {cases}", _png(figure)))
        if not scalars and array.ndim >= 3:  # read once for the table and the means
            row, last_means[f"mean {name}"] = field_summary(array, chunk=chunk, progress=progress, last_mean=True)
        else:
            row = field_summary(array, chunk=chunk, progress=progress)
        rows.append([name, ", ".join(map(str, array.dims)), str(tuple(array.shape)), *row])
    fields.tables.append((["output", "dims", "shape", "NaN values", "min", "mean", "max"], rows))
    sections = [fields]
    summary = last_means if not scalars else {s: dataset[s] for s in scalars}
    if swept and summary:
        scatter = Section("Outputs against the swept parameters" + (" (sensitivities d<q>_d<p>)" if scalars else ""))
        figure, axes = _figure(
            3.8 * len(swept), 2.6 * len(summary), nrows=len(summary), ncols=len(swept), squeeze=False
        )
        table = []
        for i, (name, values) in enumerate(summary.items()):
            if not isinstance(values, np.ndarray):  # a sensitivity (a mean of the outputs is read above)
                progress(f"reading {name} of every case ({i + 1} of {len(summary)})")
            y = np.asarray(getattr(values, "values", values), dtype=np.float64)
            for j, parameter in enumerate(swept):
                x = np.asarray(dataset[parameter].values, dtype=np.float64)
                others = [p for p in swept if p != parameter]
                colour = np.asarray(dataset[others[0]].values, dtype=np.float64) if others else None
                drawn = slice(None, None, -(-len(y) // MAX_SCATTER_POINTS))  # the table still takes every case
                points = axes[i][j].scatter(
                    x[drawn], y[drawn], s=8, alpha=0.8, c=None if colour is None else colour[drawn], cmap="viridis"
                )
                if others:
                    figure.colorbar(points, ax=axes[i][j]).set_label(others[0], fontsize=8)
                if parameter.startswith("sigma") and x.min() > 0 and x.max() / x.min() > 20:
                    axes[i][j].set_xscale("log")
                axes[i][j].set_xlabel(parameter)
                axes[i][j].set_ylabel(name, fontsize=8)
            table.append(
                [name, len(y), int(np.isnan(y).sum()), float(np.nanmin(y)), float(np.nanmean(y)), float(np.nanmax(y))]
            )
        progress(f"drawing {len(summary)} x {len(swept)} scatter plots of {n:,} cases")
        scatter.figures.append(("scatter", _png(figure)))
        scatter.tables.append((["quantity", "cases", "NaN cases", "min", "mean", "max"], table))
        if n > MAX_SCATTER_POINTS:
            scatter.notes.append(
                f"the plots draw one case in {-(-n // MAX_SCATTER_POINTS)} "
                f"({len(range(0, n, -(-n // MAX_SCATTER_POINTS))):,} of {n:,}); the table is of every case"
            )
        sections.append(scatter)
    return sections


# ---------------------------------------------------------------------- page


def build_report(path: str | Path, progress: Progress = _silent) -> str:
    """The HTML page of a store (a string; ``write_report`` writes it); ``progress`` is told what is read now."""
    from .kinds import kind_of_store
    from .store import open_results, read_attributes

    progress("opening the store")
    attrs = read_attributes(path)
    dataset = open_results(path)
    sections = [manifest_section(path, progress)]
    sections += kind_of_store(attrs).report_sections(dataset, progress)
    progress("writing the page")
    return render(attrs, str(path), sections)


def render(attrs: dict[str, Any], path: str, sections: list[Section]) -> str:
    """Sections as one HTML page, figures inlined as base64 PNG."""
    escape = html.escape
    state = "complete" if attrs.get("complete") else "incomplete"
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>{escape(str(attrs.get('name', '?')))}: pipeline report</title>",
        "<style>body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}"
        "table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #ccc;padding:.25em .6em;"
        "text-align:right;font-size:.9em}th{background:#f3f3f3}img{max-width:100%;display:block;margin:.6em 0}"
        ".state-complete{color:#1a7f37}.state-incomplete{color:#b35900}code{background:#f3f3f3;padding:0 .2em}"
        "h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}.note{color:#666}</style></head><body>",
        f"<h1>{escape(str(attrs.get('name', '?')))} <small>({escape(str(attrs.get('kind', '?')))})</small></h1>",
        f"<p><code>{escape(path)}</code>: <b class='state-{state}'>{state}</b>, spec hash "
        f"<code>{escape(str(attrs.get('spec_hash')))}</code>, created {escape(str(attrs.get('created')))}, "
        f"report made {escape(time.strftime('%Y-%m-%d %H:%M:%S %Z'))}</p>",
    ]
    for section in sections:
        parts.append(f"<h2>{escape(section.title)}</h2>")
        for header, rows in section.tables:
            parts.append("<table><tr>" + "".join(f"<th>{escape(h)}</th>" for h in header) + "</tr>")
            for row in rows:
                parts.append("<tr>" + "".join(f"<td>{escape(_fmt(v))}</td>" for v in row) + "</tr>")
            parts.append("</table>")
        for caption, png in section.figures:
            data = base64.b64encode(png).decode()
            parts.append(f"<img alt='{escape(caption)}' src='data:image/png;base64,{data}'>")
        for note in section.notes:
            parts.append(f"<p class='note'>{escape(note)}</p>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(path: str | Path, out: str | Path | None = None, progress: Progress = _silent) -> str | Path:
    """Write the report of the store at ``path`` to ``out`` (default ``<store>.html`` beside it: in the bucket for
    a URL store); ``out`` may be a URL too. Returns where it was written.

    ``progress(text)`` is told what is read now ("reading T: range 3 of 17"), e.g. to update a spinner.
    """
    from . import storage

    store = str(path).rstrip("/")
    if out is None and storage.is_remote(store):
        out = storage.join(storage.parent(store), PurePosixPath(storage.basename(store)).with_suffix(".html").name)
    elif out is None:
        out = Path(storage.local_path(store)).with_suffix(".html")
    page = build_report(path, progress)
    try:
        if storage.is_remote(str(out)):
            storage.write_bytes(str(out), page.encode())
            return str(out)
        out = Path(storage.local_path(str(out)))
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(page)
        return out
    except OSError as err:  # a reader's credentials, a read-only folder or file system: the report goes elsewhere
        if not isinstance(err, PermissionError) and err.errno != errno.EROFS:
            raise
        raise storage.StorageError(
            f"cannot write the report to {out} ({getattr(err, 'strerror', None) or err}): write access there is "
            "refused; write it where you can with -o FILE.html (e.g. -o report.html)"
        ) from None
