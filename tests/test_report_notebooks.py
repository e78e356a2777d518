"""The example notebooks run end to end, and `pipeline report` pages hold the figures and the store's numbers.

Both run on small stores made here: a 20 x 15 grid of jobs/grid.yaml and a
5 x 4 x 2 grid of jobs/sweep.yaml with the sensitivities of
jobs/sensitivities.yaml added. Each notebook runs in one kernel (nbclient).
"""

from __future__ import annotations

import html
import os
import re
from pathlib import Path

import numpy as np
import pytest
import zarr
from click.testing import CliRunner

from pipeline.cli import main
from pipeline.driver import submit
from pipeline.html_report import build_report
from pipeline.runner import InlineExecutor
from pipeline.spec import load_spec
from pipeline.store import summarize

ROOT = Path(__file__).resolve().parents[1]
GRID = ["inputs.axes.0.num=20", "inputs.axes.1.num=15", "store.chunk_size=100", "execution.shard_size=100"]
SWEEP = [
    "sweep.axes.T0_mean.num=5",
    "sweep.axes.T0_mean.high=1.5",
    "sweep.axes.sigma_mean.num=4",
    "sweep.axes.sigma_mean.high=2.0",
    "solver.options.nx=100",
    "solver.options.save_every=20",
    "solver.options.t_end=0.2",
    "store.chunk_size=8",
    "execution.shard_size=8",
    "sensitivities={outputs: {T_final: {output: T, index: -1, reduce: mean}}, wrt: [T0_mean, sigma_mean]}",
]


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    folder = tmp_path_factory.mktemp("stores")
    grid = load_spec(ROOT / "jobs/grid.yaml", [*GRID, f"store.path={folder / 'grid.zarr'}"])
    sweep = load_spec(ROOT / "jobs/sweep.yaml", [*SWEEP, f"store.path={folder / 'sweep.zarr'}"])
    assert submit(grid, InlineExecutor()).complete and submit(sweep, InlineExecutor()).complete
    return {"grid": grid.store.path, "sweep": sweep.store.path}


def run_notebook(name: str, store: str, figures: Path, monkeypatch) -> str:
    """Execute notebooks/<name> on ``store`` in one kernel; returns everything its cells printed."""
    nbclient = pytest.importorskip("nbclient")
    import nbformat

    monkeypatch.setenv("PIPELINE_NOTEBOOK_STORE", store)
    monkeypatch.setenv("PIPELINE_NOTEBOOK_FIGURES", str(figures))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    notebook = nbformat.read(ROOT / "notebooks" / name, as_version=4)
    nbclient.NotebookClient(
        notebook, timeout=180, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}
    ).execute()
    return "".join(
        out.get("text", "")
        for cell in notebook.cells
        if cell.cell_type == "code"
        for out in cell.get("outputs", [])
        if out.get("output_type") == "stream"
    )


def test_derivative_notebook_runs_and_its_derivative_matches_finite_differences(stores, tmp_path, monkeypatch):
    printed = run_notebook("derivatives.ipynb", stores["grid"], tmp_path, monkeypatch)
    assert sorted(p.name for p in tmp_path.glob("*.png")) == ["derivative_map.png", "norm_histograms.png"]
    gap = float(re.search(r"largest gap inside the grid: (\S+)", printed).group(1))
    # du/dx0 of the store against central differences of its values on a 20-point axis: O(h^2) apart
    assert gap < 1e-3


def test_sweep_notebook_runs_and_its_sensitivities_match_finite_differences(stores, tmp_path, monkeypatch):
    printed = run_notebook("sweep.ipynb", stores["sweep"], tmp_path, monkeypatch)
    assert sorted(p.name for p in tmp_path.glob("*.png")) == [
        "fields.png",
        "outputs_vs_parameters.png",
        "sensitivities.png",
    ]
    gap = float(re.search(r"largest relative gap (\S+)", printed).group(1))
    assert gap < 1e-2


def tables(page: str) -> list[list[list[str]]]:
    """Every table of the page as rows of cell texts (the header row first)."""
    found = []
    for table in re.findall(r"<table>(.*?)</table>", page, flags=re.S):
        rows = re.findall(r"<tr>(.*?)</tr>", table, flags=re.S)
        found.append([[html.unescape(c) for c in re.findall(r"<t[hd]>(.*?)</t[hd]>", row)] for row in rows])
    return found


def table_with(page: str, first_header: str) -> dict[str, list[str]]:
    table = next(t for t in tables(page) if t[0][0] == first_header)
    return {row[0]: row for row in table[1:]}


def test_derivative_report_holds_its_figures_and_the_store_numbers(stores):
    page = build_report(stores["grid"])
    images = re.findall(r"<img alt='([^']*)' src='data:image/png;base64,", page)
    assert images == ["shard timeline", "throughput over time", "norm histograms", "maps over the grid"]
    counts = summarize(stores["grid"])
    shards = tables(page)[0]
    assert shards[1][:5] == ["True", str(counts["shards"]), str(counts["done"]), "0", "0"]
    # per worker process (inline: this one), its shards, and the per-shard overhead measured from the gaps
    workers = table_with(page, "worker (host:pid)")
    assert sum(int(row[1]) for row in workers.values()) == counts["done"]
    assert all(0 < float(row[4].rstrip("%")) <= 100 for row in workers.values())
    assert re.search(
        r"per-shard overhead [0-9.]+ ms = [0-9.]+% of the median shard of [0-9.]+ s \(the gap before a "
        r"shard on its worker \+ its time outside its own work\)",
        page,
    )
    raw = zarr.open_group(stores["grid"], mode="r")
    norms = table_with(page, "quantity")
    for name in ("value", "jacobian", "hessian", "laplacian"):
        values = raw[name][:].astype(np.float64)
        norm = np.sqrt((values.reshape(len(values), -1) ** 2).sum(axis=1))
        shown = [float(v) for v in norms[name][5:8]]
        np.testing.assert_allclose(shown, [norm.min(), norm.mean(), norm.max()], rtol=1e-5)
        assert norms[name][3] == str(len(values)) and norms[name][4] == "0"


def test_sweep_report_from_the_command_is_one_file_with_its_figures_and_the_store_numbers(stores, tmp_path):
    out = tmp_path / "page.html"
    result = CliRunner().invoke(main, ["report", stores["sweep"], "-o", str(out)])
    assert result.exit_code == 0 and "wrote" in result.output, result.output
    page = out.read_text()
    assert not re.search(r"(src|href)=['\"](?!data:)", page)  # self-contained: nothing outside the file
    images = re.findall(r"<img alt='([^']*)' src='data:image/png;base64,", page)
    assert images[:2] == ["shard timeline", "throughput over time"]
    assert images[2:] == ["E of cases [0, 20, 39]", "T of cases [0, 20, 39]", "scatter"]
    raw = zarr.open_group(stores["sweep"], mode="r")
    outputs = table_with(page, "output")
    for name in ("E", "T"):
        values = raw[name][:].astype(np.float64)
        np.testing.assert_allclose(
            [float(v) for v in outputs[name][4:7]], [values.min(), values.mean(), values.max()], rtol=1e-5
        )
    scalars = table_with(page, "quantity")
    assert set(scalars) == {"T_final", "dT_final_dT0_mean", "dT_final_dsigma_mean"}
    for name, row in scalars.items():
        values = raw[name][:].astype(np.float64)
        np.testing.assert_allclose([float(v) for v in row[3:6]], [values.min(), values.mean(), values.max()], rtol=1e-5)


def test_a_report_that_cannot_be_written_there_says_to_use_o(stores, tmp_path):
    # a reader without write access to the store's folder (or bucket) got the storage's OSError traceback
    where = Path("/sys/pipeline-report.html")  # refused even to root, as a read-only folder is to a reader
    try:
        where.write_text("")
        pytest.skip("/sys is writable here")
    except OSError:
        pass
    result = CliRunner().invoke(main, ["report", stores["sweep"], "-o", str(where)])
    assert result.exit_code == 2, result.output
    assert f"cannot write the report to {where}" in result.output and "-o FILE.html" in result.output
    assert "Traceback" not in result.output


def test_report_refuses_a_path_that_is_not_a_store(tmp_path):
    bad = CliRunner().invoke(main, ["report", str(tmp_path / "nothing.zarr")])
    assert bad.exit_code == 2 and "not a pipeline store" in bad.output
    assert os.listdir(tmp_path) == []


def test_sample_norms_of_a_big_store_read_only_the_chunks_they_use(stores, monkeypatch):
    """Beyond max_samples, whole chunks evenly spaced: a strided selection would read every chunk (counted)."""
    from zarr.storage import LocalStore

    import pipeline
    from pipeline import html_report
    from pipeline.html_report import sample_norms

    monkeypatch.setattr(html_report, "RANGE_BYTES", 1)  # one chunk per range
    ds = pipeline.open_results(stores["grid"])  # 300 samples in chunks of 100
    read: list[str] = []
    original = LocalStore.get

    async def counting_get(self, key, *a, **k):
        read.append(key)
        return await original(self, key, *a, **k)

    LocalStore.get = counting_get
    try:
        norms = sample_norms(ds, "hessian", max_samples=200)
    finally:
        LocalStore.get = original
    assert sorted({k for k in read if k.startswith("hessian/c/")}) == ["hessian/c/0/0/0/0", "hessian/c/2/0/0/0"]
    stored = zarr.open_group(stores["grid"], mode="r")["hessian"]
    values = np.concatenate([stored[:100], stored[200:]]).astype(np.float64)
    np.testing.assert_allclose(norms, np.sqrt((values.reshape(200, -1) ** 2).sum(axis=1)))


class _Recording:
    """A lazy backend array over ``data`` that records the case ranges read."""

    def __init__(self, data: np.ndarray) -> None:
        self.data, self.shape, self.dtype, self.cases = data, data.shape, data.dtype, []

    def __getitem__(self, key):
        from xarray.core import indexing

        return indexing.explicit_indexing_adapter(key, self.shape, indexing.IndexingSupport.OUTER, self._raw)

    def _raw(self, key):
        self.cases.append(len(np.arange(self.shape[0])[key[0]]))
        return self.data[np.ix_(*(np.arange(n)[k] for n, k in zip(self.shape, key)))]


def recorded(dataset, name: str):
    """``dataset`` with ``name`` read through a ``_Recording`` array (the ranges it was asked for)."""
    import xarray as xr
    from xarray.core import indexing

    variable = dataset[name].variable
    backend = type("Recorded", (_Recording, xr.backends.BackendArray), {})(variable.values)
    return dataset.assign({name: xr.Variable(variable.dims, indexing.LazilyIndexedArray(backend))}), backend


def test_sweep_report_reads_an_output_a_chunk_of_cases_at_a_time(stores, monkeypatch):
    """The NaN/min/mean/max table never holds a whole output array in memory (40 cases, chunks of 8)."""
    import pipeline
    from pipeline import html_report
    from pipeline.html_report import sweep_sections

    monkeypatch.setattr(html_report, "RANGE_BYTES", 1)  # one chunk per range
    ds, backend = recorded(pipeline.open_results(stores["sweep"]), "E")
    table = {row[0]: row for row in sweep_sections(ds)[0].tables[0][1]}
    assert backend.cases and max(backend.cases) <= ds.attrs["chunk_size"] == 8
    values = backend.data.astype(np.float64)
    np.testing.assert_allclose(table["E"][3:7], [0, values.min(), values.mean(), values.max()], rtol=1e-6)


def test_a_sweep_without_sensitivities_reads_each_output_once(stores, monkeypatch):
    """The table and the per-case mean at the last time come from one pass (the mean read every case again)."""
    import pipeline
    from pipeline import html_report
    from pipeline.html_report import sweep_sections

    monkeypatch.setattr(html_report, "RANGE_BYTES", 1)  # one chunk per range
    ds = pipeline.open_results(stores["sweep"])
    ds.attrs["sensitivities"] = []  # a sweep job without them
    ds, backend = recorded(ds, "T")
    sections = sweep_sections(ds)
    assert sum(backend.cases) == 3 + 40  # the three cases drawn, then every case once
    table = {row[0]: row for row in sections[1].tables[0][1]}
    last = backend.data[:, -1].astype(np.float64).mean(axis=1)  # [case, time, x]: each case's mean at the last time
    np.testing.assert_allclose(table["mean T"][1:], [40, 0, last.min(), last.mean(), last.max()], rtol=1e-6)


def test_sample_norms_of_a_store_that_fits_read_a_range_at_a_time(stores, monkeypatch):
    """Up to max_samples every sample is used, but never the whole quantity as float64 at once.

    300 samples in chunks of 100, a range of one chunk: reads of 100 samples (before: one read of 300;
    at 200,000 samples of 150 x 2 x 2 Hessians that one read held 960 MB).
    """
    import pipeline
    from pipeline import html_report
    from pipeline.html_report import sample_norms

    monkeypatch.setattr(html_report, "RANGE_BYTES", 1)  # one chunk per range
    ds, backend = recorded(pipeline.open_results(stores["grid"]), "hessian")
    norms = sample_norms(ds, "hessian")
    assert backend.cases == [100, 100, 100]
    values = backend.data.astype(np.float64)
    np.testing.assert_allclose(norms, np.sqrt((values.reshape(300, -1) ** 2).sum(axis=1)))


def test_grid_maps_read_each_quantity_a_range_of_whole_chunks_at_a_time(stores, monkeypatch):
    """The maps over the grid never hold a whole quantity in memory, nor read small chunks one by one.

    300 samples in chunks of 100; a range of at most 250 samples' float64 Hessians (12 numbers
    each) is two whole chunks: reads of 200 and 100 samples.
    """
    import pipeline
    from pipeline import html_report
    from pipeline.html_report import grid_section

    monkeypatch.setattr(html_report, "RANGE_BYTES", 250 * 12 * 8, raising=False)
    ds, backend = recorded(pipeline.open_results(stores["grid"]), "hessian")
    assert grid_section(ds, ["hessian"]) is not None
    assert backend.cases == [200, 100]


def test_sweep_scatter_draws_at_most_max_scatter_points_and_tables_every_case(stores, monkeypatch):
    """Drawing 100,000 markers per panel took seconds each: beyond MAX_SCATTER_POINTS every k-th case is drawn."""
    from matplotlib.collections import PathCollection

    import pipeline
    from pipeline import html_report
    from pipeline.html_report import sweep_sections

    monkeypatch.setattr(html_report, "MAX_SCATTER_POINTS", 10)  # 40 cases: every 4th drawn
    drawn: list[int] = []
    png = html_report._png

    def counting(figure):
        drawn.extend(
            len(c.get_offsets()) for axes in figure.axes for c in axes.collections if isinstance(c, PathCollection)
        )
        return png(figure)

    monkeypatch.setattr(html_report, "_png", counting)
    scatter = sweep_sections(pipeline.open_results(stores["sweep"]))[1]
    assert drawn and set(drawn) == {10}
    assert {row[1] for row in scatter.tables[0][1]} == {40}
    assert "the plots draw one case in 4 (10 of 40); the table is of every case" in scatter.notes
