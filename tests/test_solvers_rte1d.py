"""rte1d against the seed's straightforward implementation (tests/reference_rte1d.py)."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch

from pipeline.solvers import get_solver, solve
from pipeline.solvers.rte1d import initial_profiles, time_grid
from reference_rte1d import reference_solve_batch, seed_cases, seed_grid

F64 = torch.float64


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Pin torch to one thread here: these problems are small, and on a shared 2-core
    machine a second OpenMP thread waiting on a busy core makes them 10x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def max_relative_error(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return float(((ours - ref).abs() / ref.abs()).max())


def seed_case_scalars(dtype=F64) -> dict[str, torch.Tensor]:
    """The seed's cases c = 1..4 written with rte1d's scalar profile parameters."""
    c = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=dtype)
    return {
        "T0_mean": 1 + c.sin(),
        "T0_amplitude": torch.full_like(c, 0.1),
        "T0_phase": c.sin(),
        "sigma_mean": 1 + c.sin(),
        "sigma_amplitude": torch.full_like(c, 0.1),
        "sigma_phase": (c + 1).sin(),
    }


@pytest.fixture(scope="module")
def seed_reference():
    x = seed_grid(400, dtype=F64)
    T0, sigma = seed_cases(x)
    E, T = reference_solve_batch(T0, sigma)
    return T0, sigma, E, T


def test_seed_cases_match_reference_float64(seed_reference):
    T0, sigma, E_ref, T_ref = seed_reference
    out = solve("rte1d", {"T0": T0, "sigma": sigma})
    assert out["E"].shape == out["T"].shape == (4, 50, 400)
    assert out["E"].dtype == F64
    assert max_relative_error(out["E"], E_ref) <= 1e-6
    assert max_relative_error(out["T"], T_ref) <= 1e-6
    # the physics actually moved: a test that compared initial states would pass trivially
    assert float((T_ref[:, -1] - T_ref[:, 0]).abs().max()) > 1e-2


def test_scalar_parameters_reproduce_the_seed_cases(seed_reference):
    T0, sigma, E_ref, T_ref = seed_reference
    params = seed_case_scalars()
    options = get_solver("rte1d").validate_options({})
    full = {**params, "T0_wavenumber": torch.ones(4, dtype=F64), "sigma_wavenumber": torch.ones(4, dtype=F64)}
    T0_gen, sigma_gen = initial_profiles(full, options)
    torch.testing.assert_close(T0_gen, T0, rtol=1e-13, atol=0)
    torch.testing.assert_close(sigma_gen, sigma, rtol=1e-13, atol=0)
    out = solve("rte1d", params)  # wavenumbers left to their default 1
    assert max_relative_error(out["E"], E_ref) <= 1e-6
    assert max_relative_error(out["T"], T_ref) <= 1e-6


def test_other_shape_and_constants_match_reference():
    torch.manual_seed(0)
    nx, cases = 64, 5
    T0 = 0.5 + torch.rand(cases, nx, dtype=F64)
    sigma = 0.2 + 2 * torch.rand(cases, nx, dtype=F64)
    options = dict(nx=nx, n_angles=4, L=2.0, CFL=0.5, t_end=0.7, save_every=3, a=1.5, c=0.8, cv=2.0)
    out = solve("rte1d", {"T0": T0, "sigma": sigma}, **options)
    E_ref, T_ref = reference_solve_batch(
        T0, sigma, a=1.5, c=0.8, cv=2.0, L=2.0, CFL=0.5, Nvx=4, t=0.7, save_every=3
    )
    assert out["E"].shape == E_ref.shape
    assert max_relative_error(out["E"], E_ref) <= 1e-6
    assert max_relative_error(out["T"], T_ref) <= 1e-6


def test_float32_close_to_float32_reference(seed_reference):
    T0, sigma, _, _ = seed_reference
    T0, sigma = T0.float(), sigma.float()
    E_ref, T_ref = reference_solve_batch(T0, sigma)
    out = solve("rte1d", {"T0": T0, "sigma": sigma})
    assert out["E"].dtype == torch.float32
    assert max_relative_error(out["E"], E_ref) <= 2e-5
    assert max_relative_error(out["T"], T_ref) <= 2e-5


@pytest.mark.parametrize("chunk_size,block_cases", [(1, None), (3, None), (None, 1), (None, 3), (4, 3)])
def test_chunks_and_blocks_give_the_same_cases(chunk_size, block_cases):
    torch.manual_seed(1)
    params = {"T0": 0.8 + torch.rand(7, 32, dtype=F64), "sigma_mean": torch.linspace(0.5, 3, 7, dtype=F64)}
    options = dict(nx=32, t_end=0.5, save_every=4)
    whole = solve("rte1d", params, **options)
    parts = solve("rte1d", params, chunk_size=chunk_size, block_cases=block_cases, **options)
    for k in whole:
        torch.testing.assert_close(parts[k], whole[k], rtol=1e-14, atol=0)


def test_energy_is_conserved():
    """sum_x (E + rho cv T) is conserved: streaming telescopes on the periodic grid, exchange cancels.

    dI_k = -upwind flux difference + dt sigma (a c T^4/2 - I_k); summed with w_k
    (sum w_k = 2) the exchange is dt sigma (a c T^4 - E), and rho cv dT is
    dt sigma (E - a c T^4): equal and opposite in every cell. Only round-off
    remains (about 1e-15 per step in float64).
    """
    torch.manual_seed(2)
    nx = 48
    T0 = 0.5 + torch.rand(3, nx, dtype=F64)
    sigma = 0.5 + 3 * torch.rand(3, nx, dtype=F64)
    a, c, rho, cv = 1.3, 0.9, 2.0, 0.7
    out = solve("rte1d", {"T0": T0, "sigma": sigma}, nx=nx, t_end=2.0, save_every=5, a=a, c=c, rho=rho, cv=cv)
    E0 = a * c * T0**4  # sum_k w_k (a c T0^4 / 2), sum w_k = 2
    total0 = (E0 + rho * cv * T0).sum(-1)
    total = (out["E"] + rho * cv * out["T"]).sum(-1)  # [cases, saves]
    assert float(((total - total0[:, None]).abs() / total0[:, None]).max()) < 1e-12
    # radiation and matter did exchange energy, so the check is not vacuous
    radiation = out["E"].sum(-1)
    assert float(((radiation - E0.sum(-1)[:, None]).abs() / total0[:, None]).max()) > 1e-2
    # and the wrong heat capacity (the seed's cv alone) is not conserved
    wrong = (out["E"] + cv * out["T"]).sum(-1)
    assert float(((wrong - (E0 + cv * T0).sum(-1)[:, None]).abs()).max()) > 1e-3


def test_description_matches_outputs_without_running():
    s = get_solver("rte1d")
    assert s.outputs({}) == {"E": (("time", "x"), (50, 400)), "T": (("time", "x"), (50, 400))}
    options = dict(nx=40, t_end=0.3, save_every=7)
    described = s.outputs(options)
    coords = s.coords(options)
    out = solve("rte1d", {"T0_mean": torch.tensor([1.0, 2.0])}, **options)
    for name, (dims, shape) in described.items():
        assert out[name].shape == (2, *shape)
        for dim, size in zip(dims, shape):
            assert coords[dim].shape == (size,)
    dx, dt, n_steps, saves = time_grid(s.validate_options(options))
    assert n_steps == int(0.3 / (0.8 * (1.0 / 40)))  # the seed: dx = L / N, dt = CFL * dx
    np.testing.assert_allclose(coords["time"], (saves + 1) * dt)
    np.testing.assert_allclose(coords["x"], (np.arange(40) + 0.5) / 40)
    params = s.parameters({"nx": 40})
    assert params["T0"].shape == (40,) and params["T0"].kind == "profile"
    assert params["sigma_mean"].default == 1.0 and params["sigma_mean"].kind == "scalar"
    assert "T0_mean" in params["T0"].excludes


def test_seed_time_grid():
    _, dt, n_steps, saves = time_grid(get_solver("rte1d").validate_options({}))
    assert n_steps == int(1.0 / (0.8 * (1 / 400)))  # the seed's Nt
    assert len(saves) == 50
    assert math.isclose(dt, 0.002)


def test_unbatched_profile_is_broadcast():
    T0 = 1 + 0.1 * torch.sin(2 * math.pi * (torch.arange(32, dtype=F64) + 0.5) / 32)
    out = solve("rte1d", {"T0": T0, "sigma_mean": torch.tensor([1.0, 2.0], dtype=F64)}, nx=32, t_end=0.5, save_every=2)
    assert out["T"].shape[0] == 2
    assert not torch.equal(out["T"][0], out["T"][1])


@pytest.mark.parametrize(
    "options,words",
    [
        ({"nxx": 10}, ["unknown option 'nxx'", "known options", "nx"]),
        ({"nx": 2}, ["nx=2", "nx >= 4"]),
        ({"n_angles": 7}, ["n_angles=7", "even"]),
        ({"CFL": 1.5}, ["CFL=1.5", "CFL <= 1"]),
        ({"t_end": 1e-5}, ["t_end=1e-05", "increase t_end"]),
        ({"save_every": 0}, ["save_every=0", ">= 1"]),
        ({"cv": -1.0}, ["cv=-1.0", "> 0"]),
        ({"compile": "yes"}, ["compile='yes'", "'auto'"]),
    ],
)
def test_option_errors_name_the_option_value_and_fix(options, words):
    with pytest.raises(ValueError) as err:
        get_solver("rte1d").validate_options(options)
    for word in words:
        assert word in str(err.value)


def test_parameter_errors():
    with pytest.raises(ValueError, match=r"'T0' \(profile\) has shape \(4, 399\).*\(cases, 400\)"):
        solve("rte1d", {"T0": torch.ones(4, 399)})
    with pytest.raises(ValueError, match="cannot be given together"):
        solve("rte1d", {"T0": torch.ones(4, 400), "T0_mean": torch.ones(4)})
    with pytest.raises(ValueError, match="unknown parameter 'T0mean'.*accepts"):
        solve("rte1d", {"T0mean": torch.ones(4)})
    with pytest.raises(ValueError, match="different numbers of cases"):
        solve("rte1d", {"T0_mean": torch.ones(4), "sigma_mean": torch.ones(3)})


def test_compiled_step_matches_eager():
    torch.manual_seed(3)
    params = {"T0": 0.8 + torch.rand(5, 32, dtype=F64), "sigma": 0.5 + torch.rand(5, 32, dtype=F64)}
    eager = solve("rte1d", params, nx=32, t_end=0.5, compile=False)
    compiled = solve("rte1d", params, nx=32, t_end=0.5, compile=True)
    for k in eager:
        torch.testing.assert_close(compiled[k], eager[k], rtol=1e-12, atol=0)


def final_mean_temperature(params, **options):
    return solve("rte1d", params, **options)["T"][:, -1].mean(-1)


@pytest.mark.parametrize("chunk_size", [None, 2])
def test_forward_sensitivities_match_finite_differences(chunk_size):
    """torch.func.jvp through solve (the lead's sweep sensitivities) vs central differences."""
    options = dict(nx=32, t_end=0.5, save_every=5, chunk_size=chunk_size)
    base = {"T0_mean": torch.tensor([0.8, 1.2, 1.6], dtype=F64), "sigma_mean": torch.tensor([0.5, 1.0, 4.0], dtype=F64)}
    for p in base:
        def along(value, p=p):
            return final_mean_temperature({**base, p: value}, **options)

        value, tangent = torch.func.jvp(along, (base[p],), (torch.ones_like(base[p]),))
        eps = 1e-6
        fd = (along(base[p] + eps) - along(base[p] - eps)) / (2 * eps)
        torch.testing.assert_close(value, along(base[p]), rtol=1e-13, atol=0)
        torch.testing.assert_close(tangent, fd, rtol=1e-6, atol=1e-9)
        assert float(tangent.abs().min()) > 1e-5  # a real dependence, not zeros


def test_reverse_mode_gradient_and_differentiable_path_values():
    torch.manual_seed(4)
    T0 = (0.8 + torch.rand(2, 16, dtype=F64)).requires_grad_()
    sigma = 0.5 + torch.rand(2, 16, dtype=F64)
    options = dict(nx=16, t_end=0.3, save_every=3)
    out = solve("rte1d", {"T0": T0, "sigma": sigma}, **options)
    plain = solve("rte1d", {"T0": T0.detach(), "sigma": sigma}, **options)  # the in-place path
    for k in out:
        torch.testing.assert_close(out[k].detach(), plain[k], rtol=1e-13, atol=0)
    (grad,) = torch.autograd.grad(out["E"][:, -1].sum(), T0)
    direction = torch.randn_like(T0)
    eps = 1e-6

    def energy(T):
        return solve("rte1d", {"T0": T, "sigma": sigma}, **options)["E"][:, -1].sum()

    fd = (energy(T0.detach() + eps * direction) - energy(T0.detach() - eps * direction)) / (2 * eps)
    torch.testing.assert_close((grad * direction).sum(), fd, rtol=1e-6, atol=0)
