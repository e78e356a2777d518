"""Compact results (``pipeline.encoding``): packed, selected and 16-bit arrays read back whole.

References are independent: torch.func.hessian / jacrev in float64 of the
same MLP, never the engine. Rounding errors are checked against what the
store says it measured, and against the dtype's own unit roundoff.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
from click.testing import CliRunner

from pipeline import encoding
from pipeline.cli import main
from pipeline.driver import submit
from pipeline.models import build_function
from pipeline.runner import InlineExecutor
from pipeline.sources import read_inputs
from pipeline.spec import SpecError, validate_spec
from pipeline.store import open_results

N = 150
UNIT_ROUNDOFF = {"float16": 2.0**-11, "bfloat16": 2.0**-8}


def job(tmp_path, store=None, chunk=32, shard=64, quantities=("value", "jacobian", "hessian", "d3"), **extra):
    data = {
        "schema_version": 1,
        "name": "compact",
        "function": {"kind": "mlp", "in_features": 3, "hidden": [16], "out_features": 4, "activation": "tanh"},
        "inputs": {"kind": "uniform", "n": N, "shape": [3], "seed": 1},
        "quantities": list(quantities),
        "store": {"path": str(tmp_path / "out.zarr"), "chunk_size": chunk, **(store or {})},
        "execution": {"shard_size": shard},
        **extra,
    }
    return validate_spec(data)


@pytest.fixture(scope="module")
def reference():
    """value, jacobian, hessian, d3 of the job's MLP in float64 by torch.func (no pipeline engine)."""
    spec = job(Path("/nonexistent"))
    fn = build_function(spec.function, torch.float64, "cpu")
    x = torch.as_tensor(read_inputs(spec.inputs, 0, N), dtype=torch.float64)
    hessian = torch.vmap(torch.func.hessian(fn))(x)
    d3 = torch.vmap(torch.func.jacfwd(torch.func.hessian(fn)))(x)
    with torch.no_grad():
        return {
            "value": fn(x).numpy(),
            "jacobian": torch.vmap(torch.func.jacrev(fn))(x).numpy(),
            "hessian": hessian.numpy(),
            "d3": d3.numpy(),
        }


def stated(ds, name):
    return json.loads(ds[name].attrs["stored_as"])


@pytest.mark.parametrize("chunk,shard", [(32, 64), (50, 150)])
def test_packed_symmetric_tensors_read_back_whole(tmp_path, reference, chunk, shard):
    spec = job(tmp_path, {"encoding": {"hessian": {"packed": True}, "d3": {"packed": True}}}, chunk, shard)
    submit(spec, InlineExecutor())
    ds = open_results(spec.store.path)
    stored = xr.open_zarr(spec.store.path)  # what plain xarray sees: the unique entries only
    assert stored.hessian.shape == (N, 4, 6) and stored.d3.shape == (N, 4, 10)  # C(4,2), C(5,3) of 9, 27
    for name in ("value", "jacobian", "hessian", "d3"):
        assert ds[name].shape == reference[name].shape
        np.testing.assert_allclose(ds[name].values, reference[name], rtol=2e-4, atol=2e-5)
    # lazy: indexing reads and unpacks only what is asked for, in any order of the input axes
    part = ds.hessian.isel(sample=slice(7, 11), input=2).values
    np.testing.assert_allclose(part, reference["hessian"][7:11, :, 2], rtol=2e-4, atol=2e-5)
    np.testing.assert_array_equal(ds.d3.values[:, :, 0, 1, 2], ds.d3.values[:, :, 2, 0, 1])
    # plain xarray users: encoding.decode gives the same full tensors
    np.testing.assert_array_equal(encoding.decode(stored).hessian.values, ds.hessian.values)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_16_bit_storage_error_is_measured_and_within_the_roundoff(tmp_path, reference, dtype):
    spec = job(
        tmp_path,
        {"dtype": dtype, "encoding": {"hessian": {"packed": True}}},
        32,
        96,
        quantities=("value", "jacobian", "hessian"),
    )
    submit(spec, InlineExecutor())
    ds = open_results(spec.store.path)
    raw = xr.open_zarr(spec.store.path)
    assert str(raw.jacobian.dtype) == ("float16" if dtype == "float16" else "uint16")
    for name in ("value", "jacobian", "hessian"):
        assert ds[name].dtype == np.float32
        error = stated(ds, name)["rounding_error"]
        scale = np.abs(reference[name]).max()
        measured = np.abs(ds[name].values - reference[name]).max() / scale
        # the store's stated error (on the driver's check samples) is the dtype's rounding, as is ours here
        assert 0 < error["max_error_relative_to_max"] <= UNIT_ROUNDOFF[dtype]
        assert measured <= UNIT_ROUNDOFF[dtype] + 1e-5  # + float32 compute error


def test_selected_entries_and_outputs(tmp_path, reference):
    entries = [[0, 0], [2, 1]]
    spec = job(
        tmp_path,
        {
            "encoding": {
                "hessian": {"entries": entries},
                "value": {"outputs": [3, 1]},
                "jacobian": {"entries": [[2]], "outputs": [0]},
            }
        },
        quantities=("value", "jacobian", "hessian"),
    )
    submit(spec, InlineExecutor())
    ds = open_results(spec.store.path)
    ref = reference["hessian"]
    np.testing.assert_allclose(
        ds.hessian.values, np.stack([ref[:, :, 0, 0], ref[:, :, 2, 1]], -1), rtol=2e-4, atol=2e-5
    )
    assert ds.hessian.dims == ("sample", "output", "hessian_entry")
    assert ds.hessian_i1.values.tolist() == [0, 2] and ds.hessian_i2.values.tolist() == [0, 1]
    np.testing.assert_allclose(ds.value.values, reference["value"][:, [3, 1]], rtol=1e-5, atol=1e-6)
    assert ds.value_output.values.tolist() == [3, 1]
    np.testing.assert_allclose(ds.jacobian.values, reference["jacobian"][:, [0]][..., [2]], rtol=1e-4, atol=1e-6)


def test_laplacian_without_the_hessian(tmp_path, reference):
    spec = job(tmp_path, quantities=("laplacian",))
    submit(spec, InlineExecutor())
    ds = open_results(spec.store.path)
    assert "hessian" not in ds
    np.testing.assert_allclose(
        ds.laplacian.values, np.trace(reference["hessian"], axis1=-2, axis2=-1), rtol=2e-4, atol=2e-5
    )


def test_zarr_shards_and_codec_level(tmp_path, reference):
    spec = job(
        tmp_path,
        {"shards": 2, "compression": "zstd", "compression_level": 9, "encoding": {"hessian": {"packed": True}}},
        32,
        64,
        quantities=("value", "hessian"),
    )
    submit(spec, InlineExecutor())
    meta = json.loads((Path(spec.store.path) / "hessian" / "zarr.json").read_text())
    codec = meta["codecs"][0]
    assert codec["name"] == "sharding_indexed" and codec["configuration"]["chunk_shape"][0] == 32
    assert meta["chunk_grid"]["configuration"]["chunk_shape"][0] == 64
    assert {c["name"]: c.get("configuration") for c in codec["configuration"]["codecs"]}["zstd"]["level"] == 9
    objects = sorted(p.name for p in (Path(spec.store.path) / "hessian" / "c").iterdir())
    assert objects == ["0", "1", "2"]  # 150 samples in objects of 64
    np.testing.assert_allclose(open_results(spec.store.path).hessian.values, reference["hessian"], rtol=2e-4, atol=2e-5)


def codecs_of(path, name):
    """``{codec name: configuration}`` of a store array's chunks (inside the sharding codec, if any)."""
    codecs = json.loads((Path(path) / name / "zarr.json").read_text())["codecs"]
    if codecs[0]["name"] == "sharding_indexed":
        codecs = codecs[0]["configuration"]["codecs"]
    return {c["name"]: c.get("configuration") for c in codecs}


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("chunk,shard,shards", [(32, 64, None), (50, 150, 3)])
def test_16_bit_arrays_get_zstd_over_the_whole_chunk_and_read_back_bit_exact(tmp_path, dtype, chunk, shard, shards):
    quantities = ("value", "jacobian", "hessian")
    store = {
        "encoding": {"hessian": {"packed": True, "dtype": dtype}, "jacobian": {"dtype": dtype}},
        **({"shards": shards} if shards else {}),
    }
    spec = job(tmp_path, store, chunk, shard, quantities=quantities)  # compression: auto, the default
    old = job(tmp_path / "lz4", {**store, "compression": "lz4"}, chunk, shard, quantities=quantities)
    assert spec.store.compression == "auto"
    submit(spec, InlineExecutor())
    submit(old, InlineExecutor())
    for name, per_sample in (("jacobian", 4 * 3), ("hessian", 4 * 6)):
        codecs = codecs_of(spec.store.path, name)
        assert list(codecs) == ["bytes", "blosc", "crc32c"]
        assert codecs["blosc"] == {
            "typesize": 2,
            "cname": "zstd",
            "clevel": 2,
            "shuffle": "shuffle",
            "blocksize": chunk * per_sample * 2,
        }  # one block: the whole chunk
        assert codecs_of(old.store.path, name)["blosc"]["cname"] == "lz4"
    value = codecs_of(spec.store.path, "value")["blosc"]  # float32 arrays keep lz4
    assert (value["cname"], value["clevel"], value["shuffle"], value["typesize"]) == ("lz4", 5, "shuffle", 4)
    assert value == codecs_of(old.store.path, "value")["blosc"]
    # the same stored bits as lz4's store: raw through plain xarray, decoded, and through open_results
    raw, raw_old = xr.open_zarr(spec.store.path), xr.open_zarr(old.store.path)
    for name in quantities:
        assert raw[name].dtype == raw_old[name].dtype
        assert raw[name].values.tobytes() == raw_old[name].values.tobytes()
        assert encoding.decode(raw)[name].values.tobytes() == open_results(spec.store.path)[name].values.tobytes()
        assert (
            open_results(spec.store.path)[name].values.tobytes() == open_results(old.store.path)[name].values.tobytes()
        )


@pytest.mark.parametrize(
    "store,key",
    [
        ({"encoding": {"hessian": {"entries": [[0, 3]]}}}, "store.encoding.hessian.entries"),
        ({"encoding": {"hessian": {"entries": [[0]]}}}, "store.encoding.hessian.entries"),
        ({"encoding": {"jacobian": {"packed": True}}}, "store.encoding.jacobian.packed"),
        ({"encoding": {"value": {"outputs": [9]}}}, "store.encoding.value.outputs"),
        ({"encoding": {"laplacian": {"packed": True}}}, "store.encoding.laplacian"),
        ({"shards": 3}, "store.shards"),
        ({"compression": "lz4", "compression_level": 12}, "store.compression_level"),
        ({"compression_level": 9}, "store.compression_level"),  # auto: lz4 and zstd, no one level
        ({"dtype": "float8"}, "store.dtype"),
        ({"encoding": {"d2": {"dtype": "float16"}}}, "store.encoding.d2: the store keeps 'd2' as 'hessian'"),
    ],
)
def test_bad_encodings_exit_2_naming_the_key(tmp_path, store, key):
    spec = {
        "schema_version": 1,
        "name": "bad",
        "function": {"kind": "mlp", "in_features": 3, "hidden": [8], "out_features": 4},
        "inputs": {"kind": "uniform", "n": 64, "shape": [3]},
        "quantities": ["value", "jacobian", "hessian"],
        "store": {"path": str(tmp_path / "bad.zarr"), "chunk_size": 16, **store},
        "execution": {"shard_size": 32},
    }
    (tmp_path / "bad.yaml").write_text(json.dumps(spec))
    result = CliRunner().invoke(main, ["submit", str(tmp_path / "bad.yaml"), "--local", "--quiet"])
    assert result.exit_code == 2, result.output
    assert key in result.output
    assert not (tmp_path / "bad.zarr").exists() and not list(tmp_path.glob(".bad.zarr*"))


def test_stored_dtype_is_part_of_the_spec_hash(tmp_path):
    plain = job(tmp_path)
    assert job(tmp_path, {"dtype": "float16"}).spec_hash() != plain.spec_hash()
    assert job(tmp_path, {"compression": "zstd", "shards": 2}).spec_hash() == plain.spec_hash()
    assert job(tmp_path, {"compression": "lz4"}).spec_hash() == plain.spec_hash()
    with pytest.raises(SpecError, match=r"store\.encoding\.jacobian"):
        job(tmp_path, {"encoding": {"jacobian": {"dtype": "float16"}}}, quantities=("value",))


def test_a_sweep_stores_float16_with_its_error_stated(tmp_path):
    from pipeline.driver import prepare
    from pipeline.spec import load_spec

    root = Path(__file__).resolve().parents[1]
    spec = load_spec(root / "jobs/sweep.yaml", [*spec_overrides(tmp_path, "s.zarr"), "store.dtype=float16"])
    prepared = prepare(spec)
    encoded = {k: v["pipeline_encoding"] for k, v in prepared.array_attributes.items() if "pipeline_encoding" in v}
    assert encoded and all(e["dtype"] == "float16" for e in encoded.values())
    assert all(
        0 < e["rounding_error"]["max_error_relative_to_max"] <= UNIT_ROUNDOFF["float16"] for e in encoded.values()
    )
    dtypes = {a.name: a.dtype for a in prepared.plan.arrays}
    assert dtypes[next(iter(encoded))] == "float16" and dtypes["T0_mean"] == "float64"  # case parameters kept
    reference = load_spec(root / "jobs/sweep.yaml", [*spec_overrides(tmp_path, "r.zarr")])
    submit(reference, InlineExecutor())
    submit(spec, InlineExecutor(), prepared=prepared)
    ds, ref = open_results(spec.store.path), open_results(reference.store.path)
    for name in encoded:
        assert ds[name].dtype == np.float32
        scale = float(np.abs(ref[name].values).max())
        assert float(np.abs(ds[name].values - ref[name].values).max()) <= UNIT_ROUNDOFF["float16"] * scale
    np.testing.assert_array_equal(ds.T0_mean.values, ref.T0_mean.values)


def spec_overrides(tmp_path, store):
    return [
        "solver.options={nx: 64, n_angles: 4, t_end: 0.25, save_every: 5}",
        "sweep.axes={T0_mean: [1.0, 2.0], sigma_mean: [0.5, 1.0], T0_phase: [0.0]}",
        "store.chunk_size=2",
        "execution.shard_size=4",
        f"store.path={tmp_path / store}",
    ]


def steep_job(tmp_path, store, retries=2):
    """A grid whose first 256 samples (the driver's check) fit float16 and whose later ones do not."""
    return validate_spec(
        {
            "schema_version": 1,
            "name": "steep",
            "function": {"kind": "import", "target": "user_fns:steep", "python_path": [str(Path(__file__).parent)]},
            "inputs": {"kind": "grid", "axes": [{"low": 0, "high": 1, "num": 40}, {"low": 0, "high": 0.5, "num": 16}]},
            "quantities": ["value", "jacobian"],
            "derivatives": {"dtype": "float32"},
            "store": {"path": str(tmp_path / "steep.zarr"), "chunk_size": 32, **store},
            "execution": {"shard_size": 64, "retries": retries},
        }
    )


@pytest.mark.parametrize(
    "store,keys",
    [
        ({"dtype": "float16"}, {"value": "store.dtype", "jacobian": "store.dtype"}),
        ({"encoding": {"value": {"dtype": "float16"}}}, {"value": "store.encoding.value.dtype"}),
    ],
)
def test_a_float16_overflow_past_the_checked_samples_fails_its_shards_not_silently(tmp_path, store, keys):
    """Before, values past float16's range were stored as Inf, counted nowhere, and the job said complete."""
    spec = steep_job(tmp_path, store)
    summary = submit(spec, InlineExecutor())
    # the reference: the same grid and function in float64 numpy, as float32 then float16 (x0 = i / 39 by rows)
    x0, x1 = np.repeat(np.linspace(0, 1, 40), 16), np.tile(np.linspace(0, 0.5, 16), 40)
    exact = {"value": 2e5 * x0**4 + x1, "jacobian": 8e5 * x0**3}
    with np.errstate(over="ignore"):
        beyond = {name: np.isinf(values.astype(np.float32).astype(np.float16)) for name, values in exact.items()}
    beyond = {name: flags for name, flags in beyond.items() if name in keys}
    expected_failed = {s for s in range(10) if any(flags[s * 64 : (s + 1) * 64].any() for flags in beyond.values())}
    assert expected_failed and min(expected_failed) * 64 >= 256  # past the driver's check: only the shards see it
    assert not summary.complete and set(summary.failed) == expected_failed
    for shard_id, record in summary.failed.items():
        assert record.attempts == 1  # not retried: another attempt would store the same values
        rows = slice(shard_id * 64, (shard_id + 1) * 64)
        for name, key in keys.items():
            count = int(beyond[name][rows].sum())
            assert (f"{key}: {count} values of {name} beyond its range" in record.error) == bool(count), record.error
    ds = open_results(spec.store.path)
    for name in keys:
        stored = ds[name].values.reshape(640, -1)[:, 0]
        assert not np.isinf(stored).any()  # no Inf reached the store: failed shards read as NaN
        good = np.ones(640, bool)
        for shard_id in expected_failed:
            good[shard_id * 64 : (shard_id + 1) * 64] = False
        assert np.isnan(stored[~good]).all()
        np.testing.assert_allclose(stored[good], exact[name][good], rtol=2**-11, atol=1e-3)


def test_a_float16_overflow_in_the_checked_samples_names_the_key_the_user_set(tmp_path):
    spec_file = tmp_path / "steep.yaml"
    spec = steep_job(tmp_path, {"dtype": "float16"}).model_dump(mode="json")
    spec["inputs"]["axes"][0] = {"low": 0.9, "high": 1, "num": 40}  # overflows from the first sample on
    spec_file.write_text(json.dumps(spec))
    result = CliRunner().invoke(main, ["validate", str(spec_file)])
    assert result.exit_code == 2, result.output
    assert "store.dtype: float16 overflows for value" in result.output
    assert "store.dtype: float16 overflows for jacobian" in result.output  # every array that overflows
    assert "store.encoding.value.dtype: float16" not in result.output and "RuntimeWarning" not in result.output
    assert not (tmp_path / "steep.zarr").exists()


def test_16_bit_storage_of_operator_quantities_uses_the_jobs_operator_options(tmp_path):
    factor = [[1.0, 0.0], [0.5, 1.0], [0.0, 2.0]]
    quantities = ("hessian", "weighted_laplacian", "laplacian_estimate")
    options = {"factor": factor, "samples": 8, "seed": 3}
    spec = job(tmp_path, {"dtype": "float16"}, quantities=quantities, derivatives=options)
    submit(spec, InlineExecutor())  # the driver's rounding-error check computes them with the job's factor
    ds = open_results(spec.store.path)
    s = np.asarray(factor)
    exact = np.einsum("ij,noij->no", s @ s.T, ds.hessian.values.astype(np.float64))
    np.testing.assert_allclose(ds.weighted_laplacian.values, exact, rtol=2e-3, atol=2e-3)
    full = validate_spec({**spec.model_dump(mode="json"), "store": {**spec.store.model_dump(), "dtype": None}})
    full = full.model_copy(update={"store": full.store.model_copy(update={"path": str(tmp_path / "full.zarr")})})
    submit(full, InlineExecutor())
    reference = open_results(full.store.path).laplacian_estimate.values[:N]
    stated_error = stated(ds, "laplacian_estimate")["rounding_error"]["max_abs_error"]
    # the error stated is that of the job's own estimate (its samples and seed), not of another one
    assert np.abs(ds.laplacian_estimate.values - reference).max() == pytest.approx(stated_error, rel=1e-6)


def test_a_float16_underflow_in_the_checked_samples_is_refused_not_stored(tmp_path):
    (tmp_path / "tiny_fns.py").write_text("import torch\n\ndef tiny(x):\n    return 1e-7 * torch.sin(x)\n")
    spec = {
        "schema_version": 1,
        "name": "tiny",
        "function": {"kind": "import", "target": "tiny_fns:tiny", "python_path": [str(tmp_path)]},
        "inputs": {"kind": "normal", "n": 100, "shape": [2]},
        "quantities": ["value", "jacobian"],
        "store": {
            "path": str(tmp_path / "tiny.zarr"),
            "chunk_size": 50,
            "encoding": {"jacobian": {"dtype": "float16"}},
        },
    }
    spec_file = tmp_path / "tiny.yaml"
    spec_file.write_text(json.dumps(spec))
    result = CliRunner().invoke(main, ["submit", str(spec_file), "--executor", "inline", "-q"])
    # every value below float16's smallest normal number: stored, they would be off by up to 100%
    assert result.exit_code == 2, result.output
    assert "store.encoding.jacobian.dtype: float16 underflows for jacobian" in result.output
    assert not (tmp_path / "tiny.zarr").exists()


def test_a_sweep_whose_later_case_overflows_float16_is_refused_before_any_store(tmp_path):
    # only the first case was checked: u_mean=1e5 was stored as inf, or failed its shard after the others ran
    from pipeline.driver import prepare

    spec = validate_spec(
        {
            "schema_version": 1,
            "name": "hot",
            "kind": "sweep",
            "solver": {"name": "heat1d", "options": {"nx": 16, "n_saves": 2}},
            "sweep": {"kind": "grid", "axes": {"u_mean": [0.0, 1.0, 1.0e5], "diffusivity": [0.1, 0.2]}},
            "store": {"path": str(tmp_path / "hot.zarr"), "chunk_size": 2, "dtype": "float16"},
        }
    )
    with pytest.raises(SpecError, match=r"store\.dtype: float16 overflows for u \(values beyond 65504 on 4 cases: "):
        prepare(spec)
    assert not (tmp_path / "hot.zarr").exists()
    fits = spec.model_copy(update={"store": spec.store.model_copy(update={"dtype": "bfloat16"})})
    stated = prepare(fits).array_attributes["u"]["pipeline_encoding"]["rounding_error"]
    assert stated["samples"] == 4 and 0 < stated["max_error_relative_to_max"] <= UNIT_ROUNDOFF["bfloat16"]


def test_inspect_says_a_uint16_array_holds_bfloat16(tmp_path):
    from click.testing import CliRunner

    from pipeline.cli import main

    spec = job(tmp_path, {"encoding": {"jacobian": {"dtype": "bfloat16"}}}, quantities=("value", "jacobian"))
    assert submit(spec, InlineExecutor()).complete
    shown = CliRunner().invoke(main, ["inspect", spec.store.path])
    assert shown.exit_code == 0, shown.output
    row = next(line for line in shown.output.splitlines() if line.lstrip().startswith("jacobian"))
    assert "bfloat16 (as uint16)" in row and "float32" in next(
        line for line in shown.output.splitlines() if line.lstrip().startswith("value")
    )
