"""Input sources: values depend on the sample index only, files are read per range."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import zarr

from pipeline.sources import InputError, describe_inputs, read_inputs
from pipeline.spec import GridInputs, NormalInputs, NpyInputs, ParquetInputs, SobolInputs, UniformInputs, ZarrInputs


def pieces(spec, n, cuts):
    bounds = [0, *cuts, n]
    return np.concatenate([read_inputs(spec, a, b) for a, b in zip(bounds, bounds[1:])])


@pytest.mark.parametrize(
    "spec",
    [
        UniformInputs(kind="uniform", n=10000, shape=(2, 3), low=-2, high=5, seed=4),
        NormalInputs(kind="normal", n=10000, shape=(3,), mean=1, std=2, seed=1),
        SobolInputs(kind="sobol", n=10000, shape=(2,), seed=2),
    ],
    ids=["uniform", "normal", "sobol"],
)
def test_generated_inputs_do_not_depend_on_how_they_are_split(spec):
    whole = read_inputs(spec, 0, spec.n)
    assert whole.shape == (spec.n, *spec.shape)
    np.testing.assert_array_equal(whole, pieces(spec, spec.n, [1, 4095, 4097, 8192, 9000]))
    np.testing.assert_array_equal(whole[5000:7000], read_inputs(spec, 5000, 7000))


def test_uniform_range_and_moments():
    x = read_inputs(UniformInputs(kind="uniform", n=50000, shape=(1,), low=2, high=4), 0, 50000)
    assert x.min() >= 2 and x.max() < 4
    assert abs(x.mean() - 3) < 0.02


def test_normal_moments_and_seed():
    spec = NormalInputs(kind="normal", n=50000, shape=(1,), mean=1, std=2, seed=0)
    x = read_inputs(spec, 0, 50000)
    assert abs(x.mean() - 1) < 0.05 and abs(x.std() - 2) < 0.05
    other = read_inputs(spec.model_copy(update={"seed": 1}), 0, 100)
    assert not np.allclose(x[:100], other)


def test_sobol_matches_torch_engine():
    spec = SobolInputs(kind="sobol", n=64, shape=(3,), low=-1, high=1, seed=5)
    engine = torch.quasirandom.SobolEngine(3, scramble=True, seed=5)
    expected = -1 + 2 * engine.draw(64, dtype=torch.float64).numpy()
    np.testing.assert_allclose(read_inputs(spec, 0, 64), expected)


def test_grid_is_the_cartesian_product():
    spec = GridInputs(kind="grid", axes=[{"low": 0, "high": 1, "num": 3}, {"low": -1, "high": 1, "num": 5}])
    assert describe_inputs(spec).n == 15
    a, b = np.meshgrid(np.linspace(0, 1, 3), np.linspace(-1, 1, 5), indexing="ij")
    expected = np.stack([a.ravel(), b.ravel()], axis=1)
    np.testing.assert_allclose(read_inputs(spec, 0, 15), expected)
    np.testing.assert_allclose(read_inputs(spec, 4, 11), expected[4:11])


def test_npy_is_memory_mapped_and_sliced(tmp_path):
    data = np.random.default_rng(0).normal(size=(100, 2, 2))
    np.save(tmp_path / "x.npy", data)
    spec = NpyInputs(kind="npy", path=str(tmp_path / "x.npy"))
    assert describe_inputs(spec).shape == (2, 2)
    np.testing.assert_array_equal(read_inputs(spec, 10, 30), data[10:30])
    with pytest.raises(InputError, match="inputs.n"):
        describe_inputs(spec.model_copy(update={"n": 101}))


def test_zarr_inputs(tmp_path):
    data = np.arange(60, dtype=np.float32).reshape(30, 2)
    group = zarr.open_group(str(tmp_path / "s.zarr"), mode="w")
    group.create_array("inputs", data=data, chunks=(7, 2))
    spec = ZarrInputs(kind="zarr", path=str(tmp_path / "s.zarr"))
    assert describe_inputs(spec).n == 30
    np.testing.assert_array_equal(read_inputs(spec, 5, 20), data[5:20])
    with pytest.raises(InputError, match="inputs.array: 'nope'.*inputs"):
        describe_inputs(spec.model_copy(update={"array": "nope"}))
    with pytest.raises(InputError, match="does not exist"):
        describe_inputs(spec.model_copy(update={"path": str(tmp_path / "missing.zarr")}))


def test_parquet_reads_only_needed_row_groups(tmp_path):
    table = pa.table({"a": np.arange(100.0), "b": np.arange(100.0) * 2, "c": np.zeros(100)})
    pq.write_table(table, tmp_path / "x.parquet", row_group_size=16)
    spec = ParquetInputs(kind="parquet", path=str(tmp_path / "x.parquet"), columns=["b", "a"])
    assert describe_inputs(spec).shape == (2,)
    got = read_inputs(spec, 30, 70)
    np.testing.assert_array_equal(got, np.stack([np.arange(30.0, 70) * 2, np.arange(30.0, 70)], 1))
    with pytest.raises(InputError, match="column 'z'"):
        describe_inputs(spec.model_copy(update={"columns": ["z"]}))
