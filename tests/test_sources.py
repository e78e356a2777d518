"""Input sources: values depend on the sample index only, files are read per range."""

from __future__ import annotations

import itertools

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
    return np.concatenate([read_inputs(spec, a, b) for a, b in itertools.pairwise(bounds)])


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


@pytest.mark.parametrize("scramble", [True, False])
def test_sobol_inputs_are_a_function_of_the_sample_index_only(scramble):
    """A shard starting at sample k gets points k..k+n of the whole sequence, for any shard sizes."""
    spec = SobolInputs(kind="sobol", n=300, shape=(2, 2), low=-2, high=3, seed=4, scramble=scramble)
    whole = read_inputs(spec, 0, 300)
    for size in (1, 7, 64, 100, 299):
        shards = [read_inputs(spec, a, min(a + size, 300)) for a in range(0, 300, size)]
        np.testing.assert_array_equal(np.concatenate(shards), whole)
    if not scramble:  # the unscrambled sequence's known first points (van der Corput, then Joe-Kuo dimension 2, ...)
        unit = (whole[:4].reshape(4, 4) + 2) / 5
        np.testing.assert_allclose(unit[:, 0], [0, 0.5, 0.75, 0.25])
        np.testing.assert_allclose(unit[:, 1], [0, 0.5, 0.25, 0.75])


def test_sobol_inputs_refuse_more_points_than_the_generator_has():
    with pytest.raises(ValueError, match=r"at most 2\*\*30"):
        SobolInputs(kind="sobol", n=2**30 + 1, shape=(2,))


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
    with pytest.raises(InputError, match=r"inputs\.n"):
        describe_inputs(spec.model_copy(update={"n": 101}))


def test_zarr_inputs(tmp_path):
    data = np.arange(60, dtype=np.float32).reshape(30, 2)
    group = zarr.open_group(str(tmp_path / "s.zarr"), mode="w")
    group.create_array("inputs", data=data, chunks=(7, 2))
    spec = ZarrInputs(kind="zarr", path=str(tmp_path / "s.zarr"))
    assert describe_inputs(spec).n == 30
    np.testing.assert_array_equal(read_inputs(spec, 5, 20), data[5:20])
    with pytest.raises(InputError, match=r"inputs\.array: 'nope'.*inputs"):
        describe_inputs(spec.model_copy(update={"array": "nope"}))
    with pytest.raises(InputError, match="does not exist"):
        describe_inputs(spec.model_copy(update={"path": str(tmp_path / "missing.zarr")}))


def test_zarr_inputs_from_a_bfloat16_result_array_are_its_values_not_its_bits(tmp_path):
    from pipeline.encoding import ATTRIBUTE, from_bfloat16_bits, to_bfloat16_bits

    values = np.array([[-0.0473, 0.0727], [1.5, -3.25], [2.0e3, 7.0]], dtype=np.float32)
    group = zarr.open_group(str(tmp_path / "s.zarr"), mode="w")
    group.create_array("jacobian", data=to_bfloat16_bits(values))  # how a pipeline store keeps bfloat16
    group["jacobian"].attrs[ATTRIBUTE] = {"dtype": "bfloat16"}
    spec = ZarrInputs(kind="zarr", path=str(tmp_path / "s.zarr"), array="jacobian")
    np.testing.assert_array_equal(read_inputs(spec, 1, 3), from_bfloat16_bits(to_bfloat16_bits(values))[1:])


def test_parquet_reads_only_needed_row_groups(tmp_path):
    table = pa.table({"a": np.arange(100.0), "b": np.arange(100.0) * 2, "c": np.zeros(100)})
    pq.write_table(table, tmp_path / "x.parquet", row_group_size=16)
    spec = ParquetInputs(kind="parquet", path=str(tmp_path / "x.parquet"), columns=["b", "a"])
    assert describe_inputs(spec).shape == (2,)
    got = read_inputs(spec, 30, 70)
    np.testing.assert_array_equal(got, np.stack([np.arange(30.0, 70) * 2, np.arange(30.0, 70)], 1))
    with pytest.raises(InputError, match="column 'z'"):
        describe_inputs(spec.model_copy(update={"columns": ["z"]}))


def test_parquet_columns_must_be_numeric_and_without_nulls(tmp_path):
    pq.write_table(pa.table({"x": [1.0, 2.0, 3.0], "s": ["a", "b", "c"], "k": [1, 2, 3]}), tmp_path / "p.parquet")
    spec = ParquetInputs(kind="parquet", path=str(tmp_path / "p.parquet"), columns=["x", "s"])
    with pytest.raises(
        InputError, match=r"inputs.columns: column 's' .* has type string; choose numeric columns.*\['x', 'k'\]"
    ):
        describe_inputs(spec)
    assert describe_inputs(spec.model_copy(update={"columns": ["k", "x"]})).shape == (2,)  # integers are numeric
    pq.write_table(pa.table({"x": [1.0, None, 3.0], "y": [1.0, 2.0, 3.0]}), tmp_path / "n.parquet")
    spec = ParquetInputs(kind="parquet", path=str(tmp_path / "n.parquet"), columns=["y", "x"])
    with pytest.raises(InputError, match=r"inputs\.columns: column 'x' .* has 1 null value"):
        describe_inputs(spec)


@pytest.mark.parametrize("kind", ["parquet", "npy", "zarr"])
def test_file_inputs_of_the_wrong_format_are_refused_by_key(tmp_path, kind):
    np.save(tmp_path / "x.npy", np.ones((4, 2)))
    pq.write_table(pa.table({"a": [1.0, 2.0]}), tmp_path / "x.parquet")
    (tmp_path / "folder").mkdir()
    wrong = {"parquet": ["x.npy", "folder"], "npy": ["x.parquet", "folder"], "zarr": ["x.npy", "x.parquet", "folder"]}
    extra = {"parquet": {"columns": ["a"]}, "npy": {}, "zarr": {"array": "inputs"}}[kind]
    model = {"parquet": ParquetInputs, "npy": NpyInputs, "zarr": ZarrInputs}[kind]
    for name in wrong[kind]:
        spec = model(kind=kind, path=str(tmp_path / name), **extra)
        with pytest.raises(InputError, match=r"^inputs.path: .*" + name + r" (is not|is a directory)"):
            describe_inputs(spec)


@pytest.mark.filterwarnings("ignore:The data type")  # zarr: strings have no stable v3 spec yet
def test_zarr_array_of_strings_is_refused(tmp_path):
    group = zarr.open_group(str(tmp_path / "s.zarr"), mode="w")
    group.create_array("names", data=np.array(["a", "b", "c"]))
    with pytest.raises(InputError, match=r"inputs\.array: 'names' .* need a numeric array"):
        describe_inputs(ZarrInputs(kind="zarr", path=str(tmp_path / "s.zarr"), array="names"))


def _store_with_committed_shards(tmp_path, committed: int):
    """A real quickstart store (4 shards) of which only the first ``committed`` shards ran."""
    from pipeline.driver import finalize_store, pending_shards, prepare
    from pipeline.spec import load_spec
    from pipeline.tasks import run_shard

    path = tmp_path / "partial.zarr"
    spec = load_spec(
        "jobs/quickstart.yaml",
        ["inputs.n=400", f"store.path={path}", "store.chunk_size=100", "execution.shard_size=100"],
    )
    prepared = prepare(spec)
    shards, _ = pending_shards(prepared)
    for shard in shards[:committed]:
        run_shard(spec, shard, bytes_per_sample=prepared.plan.bytes_per_sample())
    assert finalize_store(path, prepared.plan) is (committed == len(shards))
    return path


def test_an_incomplete_pipeline_store_is_refused_as_input(tmp_path, monkeypatch):
    from pathlib import Path

    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    path = _store_with_committed_shards(tmp_path, 1)
    spec = ZarrInputs(kind="zarr", path=str(path), array="inputs")
    with pytest.raises(
        InputError,
        match=r"inputs.path: the store .* is not complete \(1 of 4 shards committed\)"
        r".*pipeline submit.*'quickstart'.*complete store",
    ):
        describe_inputs(spec)
    complete = _store_with_committed_shards(tmp_path / "full", 4)
    assert describe_inputs(spec.model_copy(update={"path": str(complete)})).n == 400
