"""open_results: labelled, lazy, warning-free datasets; store.chunks; axis names from the job file."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import zarr

import pipeline
from pipeline.driver import open_store, prepare, submit
from pipeline.runner import InlineExecutor
from pipeline.spec import SpecError, load_spec
from pipeline.store import StoreError

ROOT = Path(__file__).resolve().parents[1]
GRID = ["inputs.axes.0.num=12", "inputs.axes.1.num=5", "store.chunk_size=20", "execution.shard_size=20"]


def grid_spec(tmp_path, *more):
    return load_spec(ROOT / "jobs/grid.yaml", [*GRID, f"store.path={tmp_path / 'grid.zarr'}", *more])


@pytest.fixture(scope="module")
def grid_store(tmp_path_factory):
    spec = grid_spec(tmp_path_factory.mktemp("grid"))
    assert submit(spec, InlineExecutor()).complete
    return spec


def test_complete_store_opens_labelled_and_lazy_without_warnings(grid_store):
    import dask.array
    import xarray as xr

    path = grid_store.store.path
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = pipeline.open_results(path, require_complete=True)
        plain = xr.open_zarr(path)  # plain xarray warns nothing either
    assert isinstance(ds.value.data, dask.array.Array) and isinstance(plain.value.data, dask.array.Array)
    assert list(ds.output.values) == ["u", "v", "w"]
    assert list(ds.input.values) == ["x0", "x1"] and list(ds.input_d2.values) == ["x0", "x1"]
    np.testing.assert_array_equal(ds.sample.values, np.arange(60))
    assert "inputs" in ds.coords and {"x0", "x1"} <= set(ds.coords)
    raw = zarr.open_group(path, mode="r")
    np.testing.assert_array_equal(ds.x0.values, raw["inputs"][:, 0])
    np.testing.assert_array_equal(ds.value.sel(output="v").values, raw["value"][:, 1])
    np.testing.assert_array_equal(
        ds.hessian.sel(output="w", input="x1", input_d2="x0").values, raw["hessian"][:, 2, 1, 0]
    )


def test_unstack_grid_gives_the_grid_axes(grid_store):
    ds = pipeline.open_results(grid_store.store.path)
    grid = pipeline.unstack_grid(ds)
    np.testing.assert_allclose(grid.x0.values, np.linspace(0, 1, 12))
    np.testing.assert_allclose(grid.x1.values, np.linspace(-1, 1, 5))
    assert grid.value.dims == ("output", "x0", "x1")
    # point (i, j) of the grid is flat sample i * 5 + j (C order)
    raw = zarr.open_group(grid_store.store.path, mode="r")
    np.testing.assert_array_equal(grid.value.sel(output="u").isel(x0=7, x1=3).values, raw["value"][7 * 5 + 3, 0])
    np.testing.assert_allclose(grid.inputs.isel(x0=7, x1=3).values, [np.linspace(0, 1, 12)[7], 0.5], rtol=1e-6)


def test_store_being_written_opens_without_warnings_and_require_complete_refuses(tmp_path):
    import xarray as xr

    spec = grid_spec(tmp_path)
    open_store(prepare(spec))  # the template, as a running job leaves it before any shard commits
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = pipeline.open_results(spec.store.path)
        xr.open_zarr(spec.store.path)
    assert not ds.attrs["complete"] and bool(ds.value.isnull().all())
    with pytest.raises(StoreError, match="not complete"):
        pipeline.open_results(spec.store.path, require_complete=True)


def test_axis_chunks_make_one_output_a_fraction_of_the_reads(tmp_path):
    """store.chunks: {output: 4} on 32 outputs: sel(output=k) reads 1/8 of the value chunks (counted)."""
    from zarr.storage import LocalStore

    spec = grid_spec(
        tmp_path,
        "function.output_names=null",
        "function.out_features=32",
        "store.chunks={output: 4}",
        "quantities=[value, jacobian]",
    )
    assert submit(spec, InlineExecutor()).complete
    meta = json.loads((Path(spec.store.path) / "value" / "zarr.json").read_text())
    assert meta["chunk_grid"]["configuration"]["chunk_shape"] == [20, 4]
    read: list[str] = []
    original = LocalStore.get

    async def counting_get(self, key, *a, **k):
        read.append(key)
        return await original(self, key, *a, **k)

    ds = pipeline.open_results(spec.store.path)
    LocalStore.get = counting_get
    try:
        one = ds.value.sel(output=13).values
        chunks_one = {k for k in read if k.startswith("value/c/")}
        read.clear()
        whole = ds.value.values
        chunks_all = {k for k in read if k.startswith("value/c/")}
    finally:
        LocalStore.get = original
    assert len(chunks_all) == 3 * 8 and len(chunks_one) == 3  # 3 sample chunks x 8 output chunks
    np.testing.assert_array_equal(one, whole[:, 13])


def test_bad_axis_names_and_chunks_are_refused_before_any_store(tmp_path):
    with pytest.raises(SpecError, match=r"function.output_names: 2 names for 3 outputs"):
        prepare(grid_spec(tmp_path, "function.output_names=[a, b]"))
    with pytest.raises(SpecError, match=r"function.input_names: \['value'\] cannot name coordinates"):
        prepare(grid_spec(tmp_path, "function.input_names=[value, x]"))
    with pytest.raises(SpecError, match=r"store.chunks.outputs: no array of this job has an axis 'outputs'"):
        prepare(grid_spec(tmp_path, "store.chunks={outputs: 4}"))
    assert not (tmp_path / "grid.zarr").exists()


def test_names_and_axis_chunks_do_not_change_the_spec_hash(tmp_path):
    plain = grid_spec(tmp_path, "function.output_names=null", "function.input_names=null")
    assert grid_spec(tmp_path, "store.chunks={output: 2}").spec_hash() == plain.spec_hash()


def test_set_indexes_lists_and_reads_yaml_numbers(tmp_path):
    spec = grid_spec(tmp_path, "inputs.axes.1.num=1e1", "inputs.axes.-1.high=2")
    assert spec.inputs.axes[1].num == 10 and spec.inputs.axes[1].high == 2.0
    with pytest.raises(SpecError, match=r"inputs.axes has 2 items, so index 5 is out of range; use 0..1"):
        grid_spec(tmp_path, "inputs.axes.5.num=3")
    with pytest.raises(SpecError, match=r"inputs.axes is a list, so the next key must be an index"):
        grid_spec(tmp_path, "inputs.axes.num=3")
    assert load_spec(ROOT / "jobs/quickstart.yaml", ["inputs.shape=[2]", "inputs.n=2.5e3"]).inputs.n == 2500


def test_open_results_masks_uncommitted_shards_without_reading_a_marker(grid_store, tmp_path, monkeypatch):
    """The committed samples come from the plan and the markers' names: no marker file is read (one GET each in a bucket)."""
    import shutil

    from pipeline import store

    path = tmp_path / "copy.zarr"
    shutil.copytree(grid_store.store.path, path)
    store.uncommit_shards(path, [1])  # samples 20-39 of 60
    read: list[int] = []
    original = store.read_marker
    monkeypatch.setattr(store, "read_marker", lambda p, i: read.append(i) or original(p, i))
    ds = pipeline.open_results(path)
    assert read == []
    expected = np.ones(60, dtype=bool)
    expected[20:40] = False
    np.testing.assert_array_equal(ds.committed.values, expected)
    assert not ds.attrs["complete"] and bool(ds.value.isel(sample=slice(20, 40)).isnull().all())
    assert not bool(ds.value.isel(sample=slice(0, 20)).isnull().any())


def test_store_left_incomplete_by_a_failed_shard_still_opens_without_warnings(tmp_path):
    """A run that ends with a failed shard records itself in ``runs``; the store stays consolidated."""
    import xarray as xr

    spec = grid_spec(
        tmp_path,
        "inputs.axes.1={low: -1, high: 1, num: 5}",
        f"function={{kind: import, target: 'user_fns:sqrt_first', python_path: ['{ROOT / 'tests'}']}}",
        "function.output_names=null",
        "function.input_names=null",
        "quantities=[value]",
        "execution.on_nonfinite=fail",
        "execution.retries=0",
        "inputs.axes.0={low: -1, high: 1, num: 12}",
    )
    summary = submit(spec, InlineExecutor())
    assert not summary.complete and summary.failed
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = xr.open_zarr(spec.store.path)
    assert ds.value.shape == (60, 1) and len(pipeline.open_results(spec.store.path).attrs["runs"]) == 1
    with pytest.raises(StoreError, match="not complete"):
        pipeline.open_results(spec.store.path, require_complete=True)


def test_a_store_whose_shards_were_uncommitted_still_opens_without_warnings(tmp_path):
    """`verify --repair` / `submit --repair` un-commit shards and clear ``complete``: that dropped the consolidated
    metadata too, so xarray.open_zarr warned until the repair's run finished."""
    import xarray as xr

    from pipeline.store import uncommit_shards

    spec = grid_spec(tmp_path)
    assert submit(spec, InlineExecutor()).complete
    uncommit_shards(spec.store.path, [0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = xr.open_zarr(spec.store.path)
    assert not ds.attrs["complete"] and not pipeline.open_results(spec.store.path).committed.values.all()


def reference_derivatives(spec, inputs):
    """value, jacobian, hessian of the job's MLP in float64 by the plain autograd loop (tests/references.py)."""
    import torch
    from references import autograd_loop

    from pipeline.models import build_function

    fn = build_function(spec.function, torch.float64)
    return [t.numpy() for t in autograd_loop(fn, torch.as_tensor(np.asarray(inputs, np.float64)), 2)]


@pytest.fixture(scope="module")
def selected_store(tmp_path_factory):
    """The grid job (outputs u, v, w; inputs x0, x1) storing chosen outputs and entries."""
    encoding = (
        "store.encoding={value: {outputs: [2, 0]}, jacobian: {entries: [[1]], outputs: [1]},"
        " hessian: {entries: [[1, 0], [0, 0]]}}"
    )
    spec = grid_spec(tmp_path_factory.mktemp("selected"), encoding)
    assert submit(spec, InlineExecutor()).complete
    return spec


def test_selected_outputs_and_entries_are_labelled_with_the_names(selected_store):
    """`value_output` holds the names of the outputs kept, `hessian_i1`/`_i2` the input names (a MultiIndex on
    `hessian_entry`); the integer indices stay as `<axis>_index`; the values under a name are the values at its index."""
    ds = pipeline.open_results(selected_store.store.path, require_complete=True)
    value, jacobian, hessian = reference_derivatives(selected_store, ds.inputs.values)
    assert ds.value.dims == ("sample", "value_output")
    assert ds.value_output.values.tolist() == ["w", "u"] and ds.value_output_index.values.tolist() == [2, 0]
    for name, index in (("w", 2), ("u", 0)):
        np.testing.assert_allclose(ds.value.sel(value_output=name).values, value[:, index], rtol=1e-5, atol=1e-6)
    assert ds.jacobian.dims == ("sample", "jacobian_output", "jacobian_entry")
    assert ds.jacobian_output.values.tolist() == ["v"] and ds.jacobian_i1.values.tolist() == ["x1"]
    assert ds.jacobian_i1_index.values.tolist() == [1]
    np.testing.assert_allclose(
        ds.jacobian.sel(jacobian_output="v", jacobian_i1="x1").values, jacobian[:, 1, 1], rtol=1e-5, atol=1e-6
    )
    assert ds.hessian.dims == ("sample", "output", "hessian_entry")
    assert ds.hessian_i1.values.tolist() == ["x1", "x0"] and ds.hessian_i2.values.tolist() == ["x0", "x0"]
    assert ds.hessian_i1_index.values.tolist() == [1, 0] and ds.hessian_i2_index.values.tolist() == [0, 0]
    for i, j in ((1, 0), (0, 0)):
        got = ds.hessian.sel(output="v", hessian_i1=f"x{i}", hessian_i2=f"x{j}").values
        np.testing.assert_allclose(got, hessian[:, 1, i, j], rtol=1e-4, atol=1e-5)
    row = ds.hessian.sel(hessian_i2="x0")  # a partial key: the entries it matches, along the other input axis
    assert row.dims == ("sample", "output", "hessian_i1") and row.hessian_i1.values.tolist() == ["x1", "x0"]
    np.testing.assert_allclose(ds.x1.values, ds.inputs.values[:, 1])  # the inputs' own coordinates are untouched


def test_selected_axes_without_names_read_as_before(tmp_path):
    """No output_names / input_names: the selected axes keep their integer coordinates (old stores read the same)."""
    spec = grid_spec(
        tmp_path,
        "function.output_names=null",
        "function.input_names=null",
        "quantities=[value, hessian]",
        "store.encoding={value: {outputs: [2, 0]}, hessian: {entries: [[1, 0]]}}",
    )
    assert submit(spec, InlineExecutor()).complete
    ds = pipeline.open_results(spec.store.path)
    assert ds.value_output.values.tolist() == [2, 0] and ds.hessian_i1.values.tolist() == [1]
    assert "value_output_index" not in ds.coords and "hessian_i1_index" not in ds.coords


def test_packed_and_selected_outputs_unpack_to_named_axes(tmp_path):
    """A packed Hessian of chosen outputs reads back on `hessian_output` (names), `input`, `input_d2` (names)."""
    spec = grid_spec(
        tmp_path,
        "quantities=[value, hessian]",
        "store.encoding={hessian: {packed: true, outputs: [2, 1]}}",
    )
    assert submit(spec, InlineExecutor()).complete
    ds = pipeline.open_results(spec.store.path)
    _, _, hessian = reference_derivatives(spec, ds.inputs.values)
    assert ds.hessian.dims == ("sample", "hessian_output", "input", "input_d2")
    assert ds.hessian_output.values.tolist() == ["w", "v"] and ds.hessian_output_index.values.tolist() == [2, 1]
    assert ds.input_d2.values.tolist() == ["x0", "x1"] and list(ds.output.values) == ["u", "v", "w"]
    for name, index in (("w", 2), ("v", 1)):
        got = ds.hessian.sel(hessian_output=name, input="x0", input_d2="x1").values
        np.testing.assert_allclose(got, hessian[:, index, 0, 1], rtol=1e-4, atol=1e-5)
        np.testing.assert_array_equal(got, ds.hessian.sel(hessian_output=name, input="x1", input_d2="x0").values)


def test_report_grid_map_names_the_first_output_the_value_keeps(selected_store, monkeypatch):
    """value keeps outputs [2, 0] (w, u): the map shows output w, and its title said `output u` (the full axis')."""
    from matplotlib.axes import Axes

    from pipeline.html_report import grid_section

    titles: list[str] = []
    original = Axes.set_title
    monkeypatch.setattr(
        Axes, "set_title", lambda self, text, *a, **k: titles.append(text) or original(self, text, *a, **k)
    )
    assert grid_section(pipeline.open_results(selected_store.store.path), ["value"]) is not None
    assert titles == ["value, output w"]


def test_input_names_that_would_replace_a_selection_coordinate_are_refused(tmp_path):
    """`input_names: [hessian_i1, y]` made the input coordinate `hessian_i1` silently replace the entry coordinate."""
    from click.testing import CliRunner

    from pipeline.cli import main

    for names in ("[hessian_i1, y]", "[value_output, y]", "[hessian_i2_index, y]"):
        with pytest.raises(SpecError, match=r"function.input_names: \['\w+'\] cannot name coordinates .*rename them"):
            prepare(grid_spec(tmp_path, f"function.input_names={names}"))
    store = tmp_path / "grid.zarr"
    args = ["submit", ROOT / "jobs/grid.yaml", "--executor", "inline", "--set", f"store.path={store}"]
    args += ["--set", "function.input_names=[hessian_i1, y]", "--set", "store.encoding={hessian: {entries: [[1, 0]]}}"]
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 2 and "function.input_names: ['hessian_i1'] cannot name coordinates" in result.output
    assert not store.exists() and not list(tmp_path.iterdir())


def test_third_derivative_entries_are_a_multiindex_of_the_input_names(tmp_path):
    """d3 keeps entries (0, 1, 1), (1, 1, 0) of output v: `.sel` by three input names gives the float64 autograd value."""
    import torch
    from references import autograd_loop

    from pipeline.models import build_function

    spec = grid_spec(
        tmp_path,
        "quantities=[value, d3]",
        "store.encoding={d3: {entries: [[0, 1, 1], [1, 1, 0]], outputs: [1]}}",
    )
    assert submit(spec, InlineExecutor()).complete
    ds = pipeline.open_results(spec.store.path)
    fn = build_function(spec.function, torch.float64)
    d3 = autograd_loop(fn, torch.as_tensor(ds.inputs.values.astype(np.float64)), 3)[3].numpy()
    assert ds.d3.dims == ("sample", "d3_output", "d3_entry") and ds.d3_output.values.tolist() == ["v"]
    assert ds.d3_i3.values.tolist() == ["x1", "x0"] and ds.d3_i3_index.values.tolist() == [1, 0]
    for i, j, k in ((0, 1, 1), (1, 1, 0)):
        got = ds.d3.sel(d3_output="v", d3_i1=f"x{i}", d3_i2=f"x{j}", d3_i3=f"x{k}").values
        np.testing.assert_allclose(got, d3[:, 1, i, j, k], rtol=1e-4, atol=1e-6)
