"""Sweep jobs end to end: case tables -> shards of cases -> solver -> store with case coordinates.

References: seed 004's solver re-implemented as written (tests/reference_rte1d.py),
the heat equation's analytic solution, and float64 finite differences.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from reference_rte1d import reference_solve_batch, seed_grid

from pipeline.driver import prepare, submit
from pipeline.runner import InlineExecutor
from pipeline.spec import SpecError, validate_spec
from pipeline.store import open_results

SMALL_RTE = {"nx": 32, "n_angles": 4, "t_end": 0.5, "save_every": 5}


def sweep_spec(tmp_path, sweep, solver=None, **extra):
    data = {
        "schema_version": 1,
        "name": "sw",
        "kind": "sweep",
        "solver": solver or {"name": "rte1d", "options": SMALL_RTE, "dtype": "float64"},
        "sweep": sweep,
        "store": {"path": str(tmp_path / "sweep.zarr"), "chunk_size": 2},
        "execution": {"shard_size": 4, "retries": 0},
        **extra,
    }
    return validate_spec(data)


def rte_reference(T0_mean, sigma_mean, T0_phase, amplitude=0.1, options=SMALL_RTE):
    x = seed_grid(options["nx"])
    T0 = torch.stack([m * (1 + amplitude * torch.sin(2 * math.pi * x + p)) for m, p in zip(T0_mean, T0_phase)])
    sigma = torch.stack([s * (1 + amplitude * torch.sin(2 * math.pi * x)) for s in sigma_mean])
    return reference_solve_batch(
        T0, sigma, Nvx=options["n_angles"], t=options["t_end"], save_every=options["save_every"]
    )


def test_rte_grid_sweep_matches_the_seed_solver(tmp_path, executor):
    spec = sweep_spec(
        tmp_path,
        {
            "kind": "grid",
            "axes": {"T0_mean": [0.8, 1.6], "sigma_mean": {"low": 0.5, "high": 2.0, "num": 3}, "T0_phase": [0.0, 1.0]},
        },
        fixed={"T0_amplitude": 0.1, "sigma_amplitude": 0.1},
    )
    summary = submit(spec, executor)
    assert summary.complete and summary.ran == 3  # 12 cases, 4 per shard
    ds = open_results(spec.store.path, require_complete=True)
    assert ds.T.dims == ("case", "time", "x") and ds.T.shape == (12, 4, 32)
    for name in ("T0_mean", "sigma_mean", "T0_phase", "T0_amplitude", "x", "time"):
        assert name in ds.coords, name
    E, T = rte_reference(
        torch.tensor(ds.T0_mean.values), torch.tensor(ds.sigma_mean.values), torch.tensor(ds.T0_phase.values)
    )
    np.testing.assert_allclose(ds.T.values, T.numpy(), rtol=1e-10)
    np.testing.assert_allclose(ds.E.values, E.numpy(), rtol=1e-10)
    np.testing.assert_allclose(ds.x.values, seed_grid(32).numpy())
    # the grid is the cartesian product, last axis fastest
    np.testing.assert_array_equal(ds.T0_phase.values, [0.0, 1.0] * 6)
    np.testing.assert_array_equal(ds.T0_mean.values, [0.8] * 6 + [1.6] * 6)
    cases = pq.read_table(f"{spec.store.path}/cases.parquet").to_pydict()
    assert cases["case"] == list(range(12)) and np.allclose(cases["sigma_mean"], ds.sigma_mean.values)


@pytest.mark.parametrize(
    "sweep, n",
    [
        ({"kind": "zip", "values": {"T0_mean": [1.0, 1.2, 1.4], "sigma_mean": [0.5, 0.7, 0.9]}}, 3),
        ({"kind": "random", "n": 5, "ranges": {"T0_mean": [0.5, 2.0]}, "seed": 1}, 5),
        (
            {
                "kind": "lhs",
                "n": 6,
                "ranges": {"T0_mean": [0.5, 1.5], "sigma_mean": {"low": 0.1, "high": 2, "scale": "log"}},
            },
            6,
        ),
        # T0_mean <= 1.6 with sigma_mean <= 2: inside rte1d's stability limit for any scramble (as the grid test's corner)
        ({"kind": "sobol", "n": 4, "ranges": {"T0_mean": [0.5, 1.6], "sigma_mean": [0.5, 2.0]}}, 4),
        (
            {
                "kind": "product",
                "sweeps": [
                    {"kind": "grid", "axes": {"T0_mean": [1.0, 1.5]}},
                    {"kind": "zip", "values": {"sigma_mean": [0.5, 1.0, 1.5]}},
                ],
            },
            6,
        ),
    ],
    ids=["zip", "random", "lhs", "sobol", "product"],
)
def test_every_sweep_kind_runs_and_records_its_cases(tmp_path, sweep, n):
    from pipeline.sweeps import make_cases

    spec = sweep_spec(tmp_path, sweep)
    assert submit(spec, InlineExecutor()).complete
    ds = open_results(spec.store.path)
    expected = make_cases(sweep)
    assert ds.sizes["case"] == n
    for name, values in expected.items():
        np.testing.assert_allclose(ds[name].values, values)
    phase = np.zeros(n)
    E, T = rte_reference(
        torch.tensor(ds.T0_mean.values),
        torch.tensor(ds.sigma_mean.values if "sigma_mean" in ds else np.ones(n)),
        torch.tensor(phase),
    )
    np.testing.assert_allclose(ds.T.values, T.numpy(), rtol=1e-10)
    np.testing.assert_allclose(ds.E.values, E.numpy(), rtol=1e-10)


def test_parquet_table_of_cases(tmp_path):
    pq.write_table(
        pa.table({"T0_mean": [1.0, 1.5, 1.2], "sigma_mean": [1.0, 2.0, 3.0], "note": ["a", "b", "c"]}),
        tmp_path / "cases.parquet",
    )
    spec = sweep_spec(
        tmp_path, {"kind": "parquet", "path": str(tmp_path / "cases.parquet"), "columns": ["T0_mean", "sigma_mean"]}
    )
    submit(spec, InlineExecutor())
    ds = open_results(spec.store.path)
    np.testing.assert_allclose(ds.sigma_mean.values, [1.0, 2.0, 3.0])


def test_a_case_table_inside_a_product_is_found_from_any_directory(tmp_path, monkeypatch):
    # a nested Parquet path stayed relative (the top-level one was made absolute): the store's recorded spec, and
    # the same command from another directory, pointed at a file that was not there
    import yaml

    from pipeline.spec import load_spec
    from pipeline.store import read_attributes

    job_dir = tmp_path / "project"
    job_dir.mkdir()
    pq.write_table(pa.table({"T0_mean": [1.0, 1.5]}), job_dir / "cases.parquet")
    sweep = {
        "kind": "product",
        "sweeps": [{"kind": "parquet", "path": "cases.parquet"}, {"kind": "grid", "axes": {"sigma_mean": [0.5, 1.0]}}],
    }
    job = job_dir / "job.yaml"
    job.write_text(yaml.safe_dump(sweep_spec(tmp_path, sweep).model_dump(mode="json", exclude_none=True)))
    monkeypatch.chdir(job_dir)
    spec = load_spec(job)
    assert spec.sweep.sweeps[0].path == str(job_dir / "cases.parquet")
    monkeypatch.chdir(tmp_path)
    assert submit(spec, InlineExecutor()).complete
    recorded = read_attributes(spec.store.path)["spec"]["sweep"]["sweeps"][0]["path"]
    assert recorded == str(job_dir / "cases.parquet")
    ds = open_results(spec.store.path)
    np.testing.assert_array_equal(ds.T0_mean.values, [1.0, 1.0, 1.5, 1.5])
    np.testing.assert_array_equal(ds.sigma_mean.values, [0.5, 1.0, 0.5, 1.0])


def test_heat_sweep_matches_the_analytic_solution(tmp_path, executor):
    spec = sweep_spec(
        tmp_path,
        {"kind": "grid", "axes": {"diffusivity": [0.05, 0.1, 0.2], "amplitude": [0.5, 1.0]}},
        solver={"name": "heat1d", "options": {"nx": 128, "t_end": 0.2, "n_saves": 4}, "dtype": "float64"},
    )
    submit(spec, executor)
    ds = open_results(spec.store.path)
    x, t = ds.x.values, ds.time.values
    D, A = ds.diffusivity.values[:, None, None], ds.amplitude.values[:, None, None]
    exact = A * np.exp(-D * (2 * np.pi) ** 2 * t[None, :, None]) * np.sin(2 * np.pi * x[None, None, :])
    assert np.abs(ds.u.values - exact).max() < 2e-3 * np.abs(exact).max()


def test_profiles_from_a_npy_file(tmp_path):
    # 5 cases in shards of 4 and blocks of 2: every shard and block reads its own profiles
    x = seed_grid(32)
    T0 = torch.stack([1 + 0.2 * torch.cos(2 * math.pi * x * k) for k in (1, 2, 3, 4, 5)])
    np.save(tmp_path / "T0.npy", T0.numpy())
    levels = [0.5, 1.0, 2.0, 3.0, 4.0]
    spec = sweep_spec(
        tmp_path,
        {"kind": "zip", "values": {"sigma_mean": levels}},
        profiles={"T0": {"kind": "npy", "path": str(tmp_path / "T0.npy")}},
        fixed={"sigma_amplitude": 0.0},
    )
    submit(spec, InlineExecutor())
    ds = open_results(spec.store.path)
    sigma = torch.tensor(levels, dtype=torch.float64)[:, None].expand(5, 32)
    E, T = reference_solve_batch(T0, sigma, Nvx=4, t=0.5, save_every=5)
    np.testing.assert_allclose(ds.T.values, T.numpy(), rtol=1e-10)
    np.testing.assert_allclose(ds.E.values, E.numpy(), rtol=1e-10)


@pytest.mark.parametrize(
    "swept, fixed", [({"T0_mean": [1.0, 2.0]}, {}), ({"sigma_mean": [1.0, 2.0]}, {"T0_amplitude": 0.1})]
)
def test_a_profile_with_the_scalars_it_replaces_is_refused_naming_the_keys(tmp_path, swept, fixed):
    # rte1d's T0 profile replaces T0_mean, T0_amplitude, ...: giving both was a traceback from the check of every case
    np.save(tmp_path / "T0.npy", np.ones((2, 32)))
    spec = sweep_spec(
        tmp_path,
        {"kind": "zip", "values": swept},
        profiles={"T0": {"kind": "npy", "path": str(tmp_path / "T0.npy")}},
        fixed=fixed,
    )
    clash = [name for name in (*swept, *fixed) if name.startswith("T0_")]
    with pytest.raises(
        SpecError, match=r"profiles\.T0: rte1d takes the profile T0 or the scalars " + re.escape(str(clash))
    ):
        prepare(spec)
    assert not (tmp_path / "sweep.zarr").exists()


def test_a_missing_profile_file_is_refused_naming_its_profiles_key(tmp_path):
    # the message named a derivative job's key: "profiles.T0: inputs.path: ... does not exist"
    spec = sweep_spec(
        tmp_path,
        {"kind": "zip", "values": {"sigma_mean": [1.0]}},
        profiles={"T0": {"kind": "npy", "path": str(tmp_path / "T0.npy")}},
    )
    with pytest.raises(SpecError, match=r"profiles\.T0\.path: .*T0\.npy does not exist") as caught:
        prepare(spec)
    assert "inputs." not in str(caught.value)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"solver": {"name": "rte2d"}}, "solver.name: unknown solver 'rte2d'"),
        ({"solver": {"name": "rte1d", "options": {"nxx": 3}}}, "solver.options:"),
        ({"sweep": {"kind": "grid", "axes": {"T0_meen": [1.0]}}}, "sweep: ['T0_meen'] are not parameters of rte1d"),
        ({"fixed": {"sigma_amp": 0.1}}, "fixed: ['sigma_amp'] are not parameters of rte1d"),
        ({"sweep": {"kind": "zip", "values": {"T0_mean": [1.0, 2.0], "sigma_mean": [1.0]}}}, "same length"),
    ],
)
def test_bad_sweeps_fail_before_any_store(tmp_path, change, message):
    base = {"kind": "grid", "axes": {"T0_mean": [1.0]}}
    spec = sweep_spec(tmp_path, change.get("sweep", base), solver=change.get("solver"), fixed=change.get("fixed", {}))
    with pytest.raises(SpecError, match=re.escape(message)):
        prepare(spec)
    assert not (tmp_path / "sweep.zarr").exists()


def test_sensitivities_match_finite_differences_of_the_seed_solver(tmp_path, executor):
    spec = sweep_spec(
        tmp_path,
        {"kind": "zip", "values": {"T0_mean": [0.8, 1.3, 1.1], "sigma_mean": [0.5, 1.0, 3.0]}},
        sensitivities={
            "outputs": {
                "Tf": {"output": "T", "index": -1, "reduce": "mean"},
                "Emax": {"output": "E", "index": 2, "reduce": "max"},
            }
        },
        fixed={"T0_phase": 0.0},
    )
    submit(spec, executor)
    ds = open_results(spec.store.path)
    T0_mean, sigma_mean = torch.tensor(ds.T0_mean.values), torch.tensor(ds.sigma_mean.values)
    phase = torch.zeros(3, dtype=torch.float64)

    def scalars(t0, s):
        E, T = rte_reference(t0, s, phase)
        return T[:, -1].mean(-1), E[:, 2].amax(-1)

    Tf, Emax = scalars(T0_mean, sigma_mean)
    np.testing.assert_allclose(ds.Tf.values, Tf.numpy(), rtol=1e-10)
    np.testing.assert_allclose(ds.Emax.values, Emax.numpy(), rtol=1e-10)
    h = 1e-6
    for name, (plus, minus) in {
        "T0_mean": (scalars(T0_mean + h, sigma_mean), scalars(T0_mean - h, sigma_mean)),
        "sigma_mean": (scalars(T0_mean, sigma_mean + h), scalars(T0_mean, sigma_mean - h)),
    }.items():
        for i, q in enumerate(("Tf", "Emax")):
            fd = (plus[i] - minus[i]) / (2 * h)
            np.testing.assert_allclose(ds[f"d{q}_d{name}"].values, fd.numpy(), rtol=1e-6, atol=1e-9, err_msg=q + name)
    assert "dTf_dT0_phase" not in ds  # fixed parameters are not differentiated


def test_sensitivities_with_profiles_match_finite_differences(tmp_path):
    # T0 profiles from a file, sigma from swept scalars: d(mean final T)/d sigma_mean per case
    x = seed_grid(32)
    T0 = torch.stack([1 + 0.2 * torch.cos(2 * math.pi * x * k) for k in (1, 2, 3)])
    np.save(tmp_path / "T0.npy", T0.numpy())
    levels = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64)
    spec = sweep_spec(
        tmp_path,
        {"kind": "zip", "values": {"sigma_mean": levels.tolist()}},
        profiles={"T0": {"kind": "npy", "path": str(tmp_path / "T0.npy")}},
        fixed={"sigma_amplitude": 0.0},
        sensitivities={"outputs": {"Tf": {"output": "T", "index": -1, "reduce": "mean"}}},
    )
    submit(spec, InlineExecutor())
    ds = open_results(spec.store.path)

    def Tf(sigma_level):
        _, T = reference_solve_batch(T0, sigma_level[:, None].expand(3, 32), Nvx=4, t=0.5, save_every=5)
        return T[:, -1].mean(-1)

    h = 1e-6
    np.testing.assert_allclose(ds.Tf.values, Tf(levels).numpy(), rtol=1e-10)
    fd = (Tf(levels + h) - Tf(levels - h)) / (2 * h)
    np.testing.assert_allclose(ds.dTf_dsigma_mean.values, fd.numpy(), rtol=1e-6, atol=1e-9)
    assert [name for name in ds.data_vars if name.startswith("dTf_")] == ["dTf_dsigma_mean"]


def test_sensitivity_of_an_unknown_output_is_refused(tmp_path):
    spec = sweep_spec(
        tmp_path,
        {"kind": "zip", "values": {"T0_mean": [1.0]}},
        sensitivities={"outputs": {"q": {"output": "Temperature"}}},
    )
    with pytest.raises(SpecError, match=r"sensitivities\.outputs\.q\.output: 'Temperature' is not an output"):
        prepare(spec)


@pytest.mark.parametrize("wrt", ["sigma_meen", "T0"])
def test_sensitivities_wrt_a_name_not_in_a_parquet_table_is_refused_naming_the_key(tmp_path, wrt):
    # a Parquet table's columns are unknown to the job's own check: this was "solver: running rte1d on the
    # first case failed: ValueError: rte1d_jvp: tangent ..."
    pq.write_table(pa.table({"sigma_mean": [1.0, 2.0]}), tmp_path / "cases.parquet")
    np.save(tmp_path / "T0.npy", np.ones((2, 32)))
    spec = sweep_spec(
        tmp_path,
        {"kind": "parquet", "path": str(tmp_path / "cases.parquet")},
        profiles={"T0": {"kind": "npy", "path": str(tmp_path / "T0.npy")}},
        sensitivities={"outputs": {"q": {"output": "T"}}, "wrt": [wrt]},
    )
    message = f"sensitivities.wrt: ['{wrt}'] are not swept parameters; choose from ['sigma_mean']"
    with pytest.raises(SpecError, match=re.escape(message)):
        prepare(spec)


def test_sensitivities_of_a_solver_without_its_own_jvp(tmp_path):
    """heat1d has no jvp_fn: torch.func.jvp through solve; reference: d/dD of A exp(-D k^2 t) sin(k x)."""
    spec = sweep_spec(
        tmp_path,
        {"kind": "zip", "values": {"diffusivity": [0.05, 0.1], "amplitude": [0.5, 2.0]}},
        solver={"name": "heat1d", "options": {"nx": 128, "t_end": 0.2, "n_saves": 4}, "dtype": "float64"},
        sensitivities={"outputs": {"peak": {"output": "u", "index": -1, "reduce": "max"}}},
    )
    submit(spec, InlineExecutor())
    ds = open_results(spec.store.path)
    k, t = 2 * np.pi, ds.time.values[-1]
    D, A = ds.diffusivity.values, ds.amplitude.values
    peak = A * np.exp(-D * k**2 * t) * np.sin(k * ds.x.values).max()
    np.testing.assert_allclose(ds.peak.values, peak, rtol=2e-3)
    np.testing.assert_allclose(ds.dpeak_ddiffusivity.values, -(k**2) * t * peak, rtol=2e-3)
    np.testing.assert_allclose(ds.dpeak_damplitude.values, peak / A, rtol=2e-3)


def test_a_stiff_case_stops_the_job_before_any_store_exists(tmp_path):
    # case 5 of the grid (T0_mean=2, sigma_mean=4) is past rte1d's stability limit at nx=32
    spec = sweep_spec(tmp_path, {"kind": "grid", "axes": {"T0_mean": [1.0, 2.0], "sigma_mean": [0.5, 1.0, 4.0]}})
    with pytest.raises(
        SpecError,
        match=r"sweep: case 5 \(T0_mean=2, sigma_mean=4\) cannot be solved as asked\. "
        r"rte1d: 1 of 6 cases are too stiff .* raise nx to at least 100",
    ):
        submit(spec, InlineExecutor())
    assert not (tmp_path / "sweep.zarr").exists()
    # the option to run anyway is there, and then every case is solved
    relaxed = sweep_spec(
        tmp_path,
        {"kind": "grid", "axes": {"T0_mean": [1.0, 2.0], "sigma_mean": [0.5, 1.0, 4.0]}},
        solver={"name": "rte1d", "options": {**SMALL_RTE, "stability_check": False}, "dtype": "float64"},
    )
    assert submit(relaxed, InlineExecutor()).complete


def test_a_rewritten_case_table_stops_the_resume_but_performance_options_do_not(tmp_path):
    from pipeline.store import StoreError, read_markers

    table = tmp_path / "cases.parquet"
    pq.write_table(pa.table({"T0_mean": [1.0, 1.5, 1.2, 1.1, 1.3], "sigma_mean": [1.0, 2.0, 3.0, 1.0, 2.0]}), table)
    spec = sweep_spec(tmp_path, {"kind": "parquet", "path": str(table)})
    submit(spec, InlineExecutor())
    (tmp_path / "sweep.zarr" / "_shards" / "1.json").unlink()  # the last shard is to be run again
    faster = {**SMALL_RTE, "compile": False, "block_cases": 1, "stability_check": False}
    summary = submit(
        sweep_spec(
            tmp_path,
            {"kind": "parquet", "path": str(table)},
            solver={"name": "rte1d", "options": faster, "dtype": "float64"},
        ),
        InlineExecutor(),
    )
    assert summary.complete and summary.skipped == 1 and summary.ran == 1
    (tmp_path / "sweep.zarr" / "_shards" / "1.json").unlink()
    pq.write_table(pa.table({"T0_mean": [1.0, 1.5, 1.2, 1.1, 1.4], "sigma_mean": [1.0, 2.0, 3.0, 1.0, 2.0]}), table)
    with pytest.raises(StoreError, match=f"sweep.path: {table} changed since the store was created"):
        submit(spec, InlineExecutor())
    assert sorted(read_markers(spec.store.path)) == [0]


@pytest.mark.parametrize("index", [99, 4, -5])
def test_a_sensitivity_index_out_of_range_is_refused_naming_the_key(tmp_path, index):
    # SMALL_RTE saves T at 4 times: indices -4..3
    spec = sweep_spec(
        tmp_path,
        {"kind": "zip", "values": {"T0_mean": [1.0]}},
        sensitivities={"outputs": {"T_final": {"output": "T", "index": index}}},
    )
    with pytest.raises(
        SpecError,
        match=rf"sensitivities.outputs.T_final.index: {index} is out of range for output "
        r"'T', whose first axis 'time' has 4 entries; use an index from -4 to 3",
    ):
        prepare(spec)
    assert not (tmp_path / "sweep.zarr").exists()
    for ok in (3, -4, None):
        prepare(
            sweep_spec(
                tmp_path,
                {"kind": "zip", "values": {"T0_mean": [1.0]}},
                sensitivities={"outputs": {"T_final": {"output": "T", "index": ok}}},
            )
        )


def test_an_unstable_ftcs_case_stops_a_heat_sweep_before_any_store_exists(tmp_path):
    # nx 64 and FTCS's default dt = 0.2 dx^2: stable for D <= 2.5, so cases 2 and 3 are past the limit
    heat = {"name": "heat1d", "options": {"nx": 64, "t_end": 0.01, "n_saves": 2, "scheme": "ftcs"}, "dtype": "float64"}
    spec = sweep_spec(tmp_path, {"kind": "zip", "values": {"diffusivity": [0.1, 1.0, 3.0, 5.0]}}, solver=heat)
    with pytest.raises(
        SpecError,
        match=r"sweep: case 2 \(diffusivity=3\) cannot be solved as asked\. heat1d: "
        r"scheme='ftcs' is unstable for 2 of 4 cases, first case 2: max D dt / dx\^2 = "
        r"0.99\d* > 0.5 \(max diffusivity 5, .*\); set dt <= .* or use scheme='crank_nicolson'",
    ):
        submit(spec, InlineExecutor())
    assert not (tmp_path / "sweep.zarr").exists()
    # below the limit (and with Crank-Nicolson for any D) every case is solved
    assert submit(
        sweep_spec(tmp_path, {"kind": "zip", "values": {"diffusivity": [0.1, 1.0, 2.5]}}, solver=heat), InlineExecutor()
    ).complete
    cn = {**heat, "options": {**heat["options"], "scheme": "crank_nicolson"}}
    prepare(sweep_spec(tmp_path, {"kind": "zip", "values": {"diffusivity": [0.1, 5.0]}}, solver=cn))


@pytest.mark.parametrize("scheme", ["crank_nicolson", "ftcs"])
def test_a_negative_diffusivity_stops_a_heat_sweep_before_any_store_exists(tmp_path, scheme):
    # D < 0 is the backward heat equation: it was solved without a word, into profiles growing without bound
    heat = {"name": "heat1d", "options": {"nx": 16, "n_saves": 2, "scheme": scheme}, "dtype": "float64"}
    spec = sweep_spec(tmp_path, {"kind": "zip", "values": {"diffusivity": [0.1, 0.0, -0.1, -0.2]}}, solver=heat)
    with pytest.raises(
        SpecError,
        match=r"sweep: case 2 \(diffusivity=-0.1\) cannot be solved as asked\. heat1d: parameter diffusivity is "
        r"negative in 2 of 4 cases, first case 2 .*use diffusivity >= 0",
    ):
        submit(spec, InlineExecutor())
    assert not (tmp_path / "sweep.zarr").exists()


def test_workers_read_only_the_row_groups_of_their_cases(tmp_path, monkeypatch):
    """cases.parquet has row groups of whole shards; a block reads the groups covering its cases, no more."""
    import pipeline.store

    sweep = {"kind": "grid", "axes": {"T0_mean": [0.8, 1.2, 1.6], "sigma_mean": [0.5, 1.0, 1.5, 2.0]}}
    reference = sweep_spec(tmp_path / "whole", sweep)
    assert submit(reference, InlineExecutor()).complete
    assert pq.ParquetFile(f"{reference.store.path}/cases.parquet").metadata.num_row_groups == 1  # 12 cases: one group

    monkeypatch.setattr(pipeline.store, "TABLE_ROW_GROUP", 4)  # a group per 4-case shard
    reads = []
    original = pq.ParquetFile.read_row_groups

    def counting(self, row_groups, *args, **kwargs):
        reads.append(list(row_groups))
        return original(self, row_groups, *args, **kwargs)

    monkeypatch.setattr(pq.ParquetFile, "read_row_groups", counting)
    spec = sweep_spec(tmp_path / "grouped", sweep)
    assert submit(spec, InlineExecutor()).complete
    metadata = pq.ParquetFile(f"{spec.store.path}/cases.parquet").metadata
    assert metadata.num_row_groups == 3 and [metadata.row_group(i).num_rows for i in range(3)] == [4, 4, 4]
    # 3 shards of 4 cases in blocks of one 2-case chunk: each block reads its shard's group only
    assert sorted(map(tuple, reads)) == [(0,), (0,), (1,), (1,), (2,), (2,)], reads
    store = pipeline.store
    assert store.read_cases(spec.store.path, 5, 11)["sigma_mean"].tolist() == [1.0, 1.5, 2.0, 0.5, 1.0, 1.5]
    assert reads[-1] == [1, 2]
    whole, grouped = open_results(reference.store.path), open_results(spec.store.path)
    for name in ("T", "E", "T0_mean", "sigma_mean"):
        np.testing.assert_array_equal(grouped[name].values, whole[name].values)


def test_a_large_sweeps_case_parameters_are_written_in_few_chunk_files(tmp_path, monkeypatch):
    """The case parameters are written with the store, in chunks of PARAMETER_CHUNK_CASES cases (not chunk_size),
    and read back as the grid the job file describes (numpy's own linspace / product as the reference)."""
    import pipeline.plan
    from pipeline.driver import open_store

    monkeypatch.setattr(pipeline.plan, "PARAMETER_CHUNK_CASES", 96)  # 3 files of 96 (whole chunks of 2)
    T0, sigma = np.linspace(0.5, 2.0, 40), np.geomspace(0.1, 1.0, 6)
    axes = {
        "T0_mean": {"low": 0.5, "high": 2.0, "num": 40},
        "sigma_mean": {"low": 0.1, "high": 1.0, "num": 6, "scale": "log"},
    }
    sweep = {"kind": "grid", "axes": axes}
    spec = sweep_spec(tmp_path, sweep)
    open_store(prepare(spec))  # the store made, no shard run
    store = tmp_path / "sweep.zarr"
    files = sorted(p.name for p in (store / "T0_mean" / "c").iterdir())
    assert files == ["0", "1", "2"], files  # 240 cases: 96 + 96 + 48, where chunk_size 2 made 120 files
    assert len(list((store / "T" / "c").glob("*"))) == 0  # results: nothing until shards run
    ds = open_results(store)
    grid_T0, grid_sigma = np.meshgrid(T0, sigma, indexing="ij")
    np.testing.assert_allclose(ds["T0_mean"].values, grid_T0.ravel(), rtol=1e-12)
    np.testing.assert_allclose(ds["sigma_mean"].values, grid_sigma.ravel(), rtol=1e-12)
    import zarr

    group = zarr.open_group(str(store), mode="r")
    assert group["T"].chunks[0] == 2 and group["T0_mean"].chunks == (96,)


def test_the_sweep_store_benchmark_runs(tmp_path):
    """bench/sweep_store.py at a small size: both ways of making the store give the same parameters (it asserts)."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, str(root / "bench/sweep_store.py"), "--cases", "128", "--repeats", "1"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [line.split("|") for line in done.stdout.splitlines() if line.startswith("| 128 |")]
    assert len(rows) == 2, done.stdout  # the check of every case, then the store
    assert rows[1][3].strip() == "10" and rows[1][5].strip() == "5", rows  # parameter files: before, ours


def test_the_check_of_every_case_in_blocks_names_a_stiff_case_by_its_number_in_the_sweep(tmp_path, monkeypatch):
    """Blocks of 64 cases (CHECK_NUMBERS patched): the case named is the stiffest of the first block holding a
    stiff case, numbered in the sweep, as stability_factors over every case at once (the reference) finds it;
    the message says which cases the count covers."""
    import pipeline.kinds.sweep
    from pipeline.solvers.rte1d import DEFAULT_OPTIONS, initial_profiles, stability_factors

    monkeypatch.setattr(pipeline.kinds.sweep, "CHECK_NUMBERS", 64 * 32)  # nx=32: 64 cases per block
    T0 = np.linspace(0.5, 2.5, 100)
    sigma = np.array([0.5, 1.0, 4.0])
    spec = sweep_spec(tmp_path, {"kind": "grid", "axes": {"T0_mean": T0.tolist(), "sigma_mean": sigma.tolist()}})
    grid_T0, grid_sigma = (g.ravel() for g in np.meshgrid(T0, sigma, indexing="ij"))
    from pipeline.solvers import get_solver
    from pipeline.solvers.rte1d import PROFILE_DEFAULTS

    full = {
        f"{p}_{k}": torch.full((300,), v, dtype=torch.float64)
        for p in ("T0", "sigma")
        for k, v in PROFILE_DEFAULTS.items()
    }  # every case's profile, as rte1d documents its defaults
    full["T0_mean"], full["sigma_mean"] = torch.tensor(grid_T0), torch.tensor(grid_sigma)
    options = get_solver("rte1d").validate_options({**DEFAULT_OPTIONS, **SMALL_RTE})
    factors = stability_factors(*initial_profiles(full, options), options)
    first_bad = int(torch.nonzero(factors > 1.5)[0])
    start = first_bad // 64 * 64
    stiff = start + int(factors[start : start + 64].argmax())
    bad = int((factors[start : start + 64] > 1.5).sum())
    assert start >= 64 and factors.max() > factors[stiff]  # past the first block; a stiffer case lies further on
    with pytest.raises(
        SpecError,
        match=rf"sweep: case {stiff} \(.* rte1d: {bad} of 64 cases are too stiff .*"
        rf"\(counted in cases {start}-{start + 63} of 300: the check stops",
    ):
        prepare(spec)
    assert not (tmp_path / "sweep.zarr").exists()


@pytest.mark.parametrize("direct", [True, False])
def test_the_case_parameters_follow_store_direct_writes(tmp_path, monkeypatch, direct):
    """The parameters' chunk files are written past the page cache only where the store allows it."""
    import pipeline.chunk_files
    from pipeline.driver import open_store

    asked = []
    original = pipeline.chunk_files.chunk_writer

    def spy(array, direct=True):
        asked.append(direct)
        return original(array, direct=direct)

    monkeypatch.setattr(pipeline.chunk_files, "chunk_writer", spy)
    spec = sweep_spec(
        tmp_path,
        {"kind": "grid", "axes": {"T0_mean": [0.8, 1.2]}},
        store={"path": str(tmp_path / "sweep.zarr"), "chunk_size": 2, "direct_writes": direct},
    )
    open_store(prepare(spec))
    assert asked and set(asked) == {direct}, asked
    np.testing.assert_array_equal(open_results(tmp_path / "sweep.zarr")["T0_mean"].values, [0.8, 1.2])


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("sweep.axes.T0_mean.low=.nan", "sweep.axes.T0_mean: low and high must be finite"),
        ("sweep.axes.T0_phase=[]", "sweep.axes.T0_phase: expected a non-empty flat list"),
    ],
)
def test_a_bad_case_table_names_the_job_file_key_not_the_sweep_kind(tmp_path, override, key):
    from click.testing import CliRunner

    from pipeline.cli import main

    job = Path(__file__).resolve().parents[1] / "jobs" / "sweep.yaml"
    args = ["validate", str(job), "--set", f"store.path={tmp_path / 's.zarr'}", "--set", override]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 2 and key in result.output, result.output  # was `sweep grid.axes.T0_mean`
    assert list(tmp_path.iterdir()) == []


def test_unstack_grid_on_a_sweep_names_the_unstack_that_works(tmp_path):
    """A grid sweep is not a grid of inputs: the message gives the set_index/unstack call, which works."""
    import pipeline

    spec = sweep_spec(
        tmp_path,
        {"kind": "grid", "axes": {"diffusivity": [0.05, 0.1, 0.2], "amplitude": [0.5, 1.0]}},
        solver={"name": "heat1d", "options": {"nx": 8, "t_end": 0.1, "n_saves": 2}, "dtype": "float64"},
    )
    assert submit(spec, InlineExecutor()).complete
    ds = open_results(spec.store.path)
    with pytest.raises(ValueError, match=r"set_index\(case=\['diffusivity', 'amplitude'\]\)\.unstack\('case'\)"):
        pipeline.unstack_grid(ds)
    grid = ds.set_index(case=["diffusivity", "amplitude"]).unstack("case")
    assert grid.u.sizes["diffusivity"] == 3 and grid.u.sizes["amplitude"] == 2
    np.testing.assert_array_equal(grid.u.sel(diffusivity=0.1, amplitude=1.0).values, ds.u.isel(case=3).values)
