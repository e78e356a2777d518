"""rte1d against the seed's straightforward implementation (tests/reference_rte1d.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from reference_rte1d import reference_solve_batch, seed_cases, seed_grid

from pipeline.solvers import UnsolvableCase, get_solver, solve
from pipeline.solvers.rte1d import initial_profiles, stability_factors, time_grid

F64 = torch.float64


# These problems are small: on a shared 2-core machine a second OpenMP thread
# waiting on a busy core makes them 10x slower.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


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
    E_ref, T_ref = reference_solve_batch(T0, sigma, a=1.5, c=0.8, cv=2.0, L=2.0, CFL=0.5, Nvx=4, t=0.7, save_every=3)
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
    params = {"T0": 0.8 + 0.4 * torch.rand(7, 32, dtype=F64), "sigma_mean": torch.linspace(0.5, 3, 7, dtype=F64)}
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
    _dx, dt, n_steps, saves = time_grid(s.validate_options(options))
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
        ({"t_end": 1e30}, ["t_end=1e+30", "more than 2**31", "a smaller t_end or a larger save_every"]),
        ({"t_end": 1e9, "nx": 32}, ["t_end=1000000000.0", "more than 2**31"]),
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
    with pytest.raises(ValueError, match=r"unknown parameter 'T0mean'.*accepts"):
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
    base = {"T0_mean": torch.tensor([0.8, 1.2, 1.6], dtype=F64), "sigma_mean": torch.tensor([0.5, 1.0, 1.5], dtype=F64)}
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
    T0 = (0.8 + 0.4 * torch.rand(2, 16, dtype=F64)).requires_grad_()
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


# -- forward sensitivities: hand-written tangents (rte1d_jvp, and torch.func.jvp through solve) --

TANGENT_OPTIONS = dict(nx=32, t_end=0.5, save_every=4)  # 20 steps, 5 saves
TANGENT_BASE = {  # three cases, every profile scalar away from its default
    "T0_mean": [0.8, 1.2, 1.6],
    "T0_amplitude": [0.1, 0.2, 0.05],
    "T0_wavenumber": [1.0, 2.0, 1.0],
    "T0_phase": [0.3, -0.5, 1.0],
    "sigma_mean": [0.5, 1.0, 1.5],
    "sigma_amplitude": [0.1, 0.3, 0.2],
    "sigma_wavenumber": [1.0, 1.0, 3.0],
    "sigma_phase": [0.0, 0.7, -1.2],
}


def tangent_base() -> dict[str, torch.Tensor]:
    return {k: torch.tensor(v, dtype=F64) for k, v in TANGENT_BASE.items()}


def reference_outputs(params: dict[str, torch.Tensor], options=TANGENT_OPTIONS) -> dict[str, torch.Tensor]:
    """The seed-style reference (tests/reference_rte1d.py) on profiles written out here, in float64."""
    nx = options["nx"]
    x = seed_grid(nx, dtype=F64)
    profiles = {}
    for p in ("T0", "sigma"):
        if p in params:
            profiles[p] = params[p]
        else:
            m, a, k, ph = (params[f"{p}_{q}"][:, None] for q in ("mean", "amplitude", "wavenumber", "phase"))
            profiles[p] = m * (1 + a * torch.sin(2 * math.pi * k * x + ph))
    E, T = reference_solve_batch(
        profiles["T0"], profiles["sigma"], t=options["t_end"], save_every=options["save_every"]
    )
    return {"E": E, "T": T}


def reference_central_difference(params, direction: dict[str, torch.Tensor], eps=1e-6, options=TANGENT_OPTIONS):
    """d outputs along ``direction`` by float64 central differences of the reference."""
    plus = reference_outputs({k: v + eps * direction[k] if k in direction else v for k, v in params.items()}, options)
    minus = reference_outputs({k: v - eps * direction[k] if k in direction else v for k, v in params.items()}, options)
    return {k: (plus[k] - minus[k]) / (2 * eps) for k in plus}


def assert_tangents_close(ours: dict[str, torch.Tensor], fd: dict[str, torch.Tensor]) -> None:
    for k in ("E", "T"):
        scale = float(fd[k].abs().max())
        assert scale > 1e-3, f"d{k} is ~0: the check would be vacuous"
        torch.testing.assert_close(ours[k], fd[k], rtol=1e-6, atol=1e-7 * scale)


def assert_same_tangents(ours: torch.Tensor, expected: torch.Tensor) -> None:
    """Equal up to round-off (summation order differs with the block and chunk sizes)."""
    torch.testing.assert_close(ours, expected, rtol=1e-11, atol=1e-13 * float(expected.abs().max()))


def jvp_through_solve(params, name, direction, **options):
    def along(value):
        out = solve("rte1d", {**params, name: value}, **options)
        return out["E"], out["T"]

    (E, T), (dE, dT) = torch.func.jvp(along, (params[name],), (direction,))
    return {"E": E, "T": T}, {"E": dE, "T": dT}


@pytest.mark.parametrize("name", ["T0_mean", "sigma_mean", "T0_phase"])
def test_scalar_parameter_tangents_match_reference_finite_differences(name):
    from pipeline.solvers.rte1d import rte1d_jvp

    params = tangent_base()
    direction = torch.tensor([1.0, -0.5, 2.0], dtype=F64)  # any per-case tangent, not only ones
    fd = reference_central_difference(params, {name: direction})
    values, tangents = jvp_through_solve(params, name, direction, **TANGENT_OPTIONS)
    assert_tangents_close(tangents, fd)
    out, d = rte1d_jvp(params, {name: direction[None]}, **TANGENT_OPTIONS)
    assert d["E"].shape == (1, 3, 5, 32)
    assert_tangents_close({k: v[0] for k, v in d.items()}, fd)
    plain = solve("rte1d", params, **TANGENT_OPTIONS)
    ref = reference_outputs(params)
    for k in plain:  # the primal values on both routes: the plain solve's, the reference's
        torch.testing.assert_close(values[k], plain[k], rtol=1e-13, atol=0)
        torch.testing.assert_close(out[k], plain[k], rtol=1e-13, atol=0)
        assert max_relative_error(out[k], ref[k]) <= 1e-12


@pytest.mark.parametrize("name", ["T0", "sigma"])
def test_profile_parameter_tangents_match_reference_finite_differences(name):
    from pipeline.solvers.rte1d import rte1d_jvp

    gen = torch.Generator().manual_seed(5)
    params = {
        "T0": 0.8 + torch.rand(3, 32, dtype=F64, generator=gen),
        "sigma": 0.5 + 2 * torch.rand(3, 32, dtype=F64, generator=gen),
    }
    direction = torch.randn(3, 32, dtype=F64, generator=gen)
    fd = reference_central_difference(params, {name: direction})
    _, tangents = jvp_through_solve(params, name, direction, **TANGENT_OPTIONS)
    assert_tangents_close(tangents, fd)
    _, d = rte1d_jvp(params, {name: direction[None]}, **TANGENT_OPTIONS)
    assert_tangents_close({k: v[0] for k, v in d.items()}, fd)


def test_several_directions_at_once_match_finite_differences():
    """k = 5 directions in one pass: one per parameter, a zero one, and a combined T0 + sigma one."""
    from pipeline.solvers.rte1d import rte1d_jvp

    params = tangent_base()
    ones, zeros = torch.ones(3, dtype=F64), torch.zeros(3, dtype=F64)
    gen = torch.Generator().manual_seed(6)
    mixed = torch.randn(3, 3, dtype=F64, generator=gen)
    directions = [  # dsigma is zero in rows 0, 2 and 3 (inside the range of rows that carry a dsigma)
        {"T0_mean": ones},
        {"sigma_mean": ones},
        {"T0_phase": ones},
        {},
        {"T0_amplitude": mixed[0], "sigma_phase": mixed[1], "sigma_wavenumber": mixed[2]},
    ]
    names = sorted({n for d in directions for n in d})
    tangents = {n: torch.stack([d.get(n, zeros) for d in directions]) for n in names}
    out, d = rte1d_jvp(params, tangents, **TANGENT_OPTIONS)
    assert d["T"].shape == (5, 3, 5, 32)
    for j, direction in enumerate(directions):
        if not direction:
            assert float(d["E"][j].abs().max()) == 0.0 and float(d["T"][j].abs().max()) == 0.0
            continue
        assert_tangents_close({k: v[j] for k, v in d.items()}, reference_central_difference(params, direction))
    only_T, d_T = rte1d_jvp(params, tangents, tangent_outputs=("T",), **TANGENT_OPTIONS)
    assert set(d_T) == {"T"}
    torch.testing.assert_close(d_T["T"], d["T"], rtol=0, atol=0)
    for name in out:  # the primal solution does not depend on which tangents are kept
        torch.testing.assert_close(only_T[name], out[name], rtol=0, atol=0)


@pytest.mark.parametrize("chunk_size,block_cases", [(2, None), (None, 2), (2, 1)])
def test_chunked_and_blocked_tangents(chunk_size, block_cases):
    from pipeline.solvers.rte1d import rte1d_jvp

    params = {k: torch.cat([v, v.flip(0)[:2]]) for k, v in tangent_base().items()}  # 5 cases
    direction = torch.linspace(0.5, 1.5, 5, dtype=F64)
    options = dict(TANGENT_OPTIONS, block_cases=block_cases)
    whole_values, whole = jvp_through_solve(params, "sigma_mean", direction, **TANGENT_OPTIONS)
    values, parts = jvp_through_solve(params, "sigma_mean", direction, chunk_size=chunk_size, **options)
    ones = torch.ones(5, dtype=F64)
    out, d = rte1d_jvp(
        params,
        {"sigma_mean": direction[None], "T0_mean": torch.stack([0 * ones, ones])[:1]},
        chunk_size=chunk_size,
        **options,
    )
    for k in whole:
        assert_same_tangents(parts[k], whole[k])
        assert_same_tangents(d[k][0], whole[k])
        torch.testing.assert_close(values[k], whole_values[k], rtol=1e-13, atol=0)
        torch.testing.assert_close(out[k], whole_values[k], rtol=1e-13, atol=0)
    fd = reference_central_difference(params, {"sigma_mean": direction})
    assert_tangents_close(parts, fd)


def test_dual_tensors_take_the_fast_tangents(monkeypatch):
    """forward_ad.make_dual and torch.func.jvp both run the hand-written tangents, not the out-of-place step."""
    from torch.autograd import forward_ad

    import pipeline.solvers.rte1d as rte1d

    params = tangent_base()
    direction = torch.tensor([0.3, 1.0, -2.0], dtype=F64)
    _, expected = jvp_through_solve(params, "T0_mean", direction, **TANGENT_OPTIONS)

    def refuse(*args, **kwargs):
        raise AssertionError("the out-of-place path ran")

    monkeypatch.setattr(rte1d, "_integrate_functional", refuse)
    with forward_ad.dual_level():
        dual = forward_ad.make_dual(params["T0_mean"], direction)
        out = solve("rte1d", {**params, "T0_mean": dual}, **TANGENT_OPTIONS)
        for k in out:
            assert_same_tangents(forward_ad.unpack_dual(out[k]).tangent, expected[k])
    jvp_through_solve(params, "T0_mean", direction, **TANGENT_OPTIONS)  # does not raise either


def test_other_transforms_still_differentiate_correctly():
    """Reverse mode, jacfwd (vmap over jvp) and jvp of jvp take the out-of-place path and agree."""
    params = tangent_base()
    direction = torch.tensor([1.0, 0.5, -1.0], dtype=F64)
    _, tangents = jvp_through_solve(params, "sigma_mean", direction, **TANGENT_OPTIONS)

    def final_T(sigma_mean):
        return solve("rte1d", {**params, "sigma_mean": sigma_mean}, **TANGENT_OPTIONS)["T"][:, -1].sum(-1)

    # the cases are independent, so the Jacobian is diagonal and its diagonal is the tangent of ones
    ones = torch.ones(3, dtype=F64)
    expected = jvp_through_solve(params, "sigma_mean", ones, **TANGENT_OPTIONS)[1]["T"][:, -1].sum(-1)
    jacobian = torch.func.jacfwd(final_T)(params["sigma_mean"])
    torch.testing.assert_close(torch.diagonal(jacobian), expected, rtol=1e-10, atol=0)
    m = params["sigma_mean"].clone().requires_grad_()
    (grad,) = torch.autograd.grad(final_T(m).sum(), m)
    torch.testing.assert_close(grad, expected, rtol=1e-10, atol=0)
    # second order: jvp of jvp against central differences of the (fast) first-order tangent
    eps = 1e-5

    def first(m):
        return torch.func.jvp(final_T, (m,), (direction,))[1]

    second = torch.func.jvp(first, (params["sigma_mean"],), (direction,))[1]
    fd = (first(params["sigma_mean"] + eps * direction) - first(params["sigma_mean"] - eps * direction)) / (2 * eps)
    torch.testing.assert_close(second, fd, rtol=1e-5, atol=1e-9)
    assert torch.allclose(first(params["sigma_mean"]), tangents["T"][:, -1].sum(-1), rtol=1e-12)


def test_tensor_without_tangent_inside_jvp_gives_the_values_and_zero_tangent():
    """A parameter wrapped by torch.func.jvp but detached carries no tangent: the fast route's jvp never
    runs, so solve must notice and compute the values itself (not return the unfilled outputs)."""
    params = tangent_base()
    plain = solve("rte1d", params, **TANGENT_OPTIONS)

    def detached(value):
        out = solve("rte1d", {**params, "T0_mean": value.detach()}, **TANGENT_OPTIONS)
        return out["E"], out["T"]

    (E, T), (dE, dT) = torch.func.jvp(detached, (params["T0_mean"],), (torch.ones(3, dtype=F64),))
    torch.testing.assert_close(E, plain["E"], rtol=1e-13, atol=0)
    torch.testing.assert_close(T, plain["T"], rtol=1e-13, atol=0)
    assert float(dE.abs().max()) == 0.0 and float(dT.abs().max()) == 0.0


def test_rte1d_jvp_errors():
    from pipeline.solvers.rte1d import rte1d_jvp

    params = tangent_base()
    with pytest.raises(ValueError, match="tangent for 'T0mean'"):
        rte1d_jvp(params, {"T0mean": torch.ones(1, 3)}, **TANGENT_OPTIONS)
    with pytest.raises(ValueError, match=r"tangent 'T0_mean' has shape \(3,\); expected \(k, 3\)"):
        rte1d_jvp(params, {"T0_mean": torch.ones(3)}, **TANGENT_OPTIONS)
    with pytest.raises(ValueError, match=r"tangent 'sigma' has shape \(2, 3, 31\); expected \(2, 3, 32\)"):
        rte1d_jvp(
            {"sigma": torch.ones(3, 32)},
            {"T0_mean": torch.ones(2, 3), "sigma": torch.ones(2, 3, 31)},
            **TANGENT_OPTIONS,
        )
    with pytest.raises(ValueError, match="tangent for 'T0_mean'"):  # T0 given as a profile: T0_mean is not used
        rte1d_jvp({"T0": torch.ones(3, 32)}, {"T0_mean": torch.ones(1, 3)}, **TANGENT_OPTIONS)
    with pytest.raises(ValueError, match="no tangents"):
        rte1d_jvp(params, {}, **TANGENT_OPTIONS)
    with pytest.raises(ValueError, match="tangent_outputs"):
        rte1d_jvp(params, {"T0_mean": torch.ones(1, 3)}, tangent_outputs=("I",), **TANGENT_OPTIONS)
    with pytest.raises(ValueError, match=r"CFL=1\.5"):
        rte1d_jvp(params, {"T0_mean": torch.ones(1, 3)}, CFL=1.5)


# -- stability of the explicit step --------------------------------------------------------


def test_stability_factor_follows_its_two_terms():
    # independent arithmetic: dt = CFL L / nx, nu_max = CFL * max|mu| of 8 Gauss-Legendre angles
    options = get_solver("rte1d").validate_options({"nx": 50, "a": 2.0, "cv": 0.5})
    dt = 0.8 / 50
    nu_max = 0.8 * float(np.abs(np.polynomial.legendre.leggauss(8)[0]).max())
    T0 = torch.tensor([[0.5] * 49 + [0.7], [0.1] * 50], dtype=F64)
    sigma = torch.tensor([[1.0] * 49 + [3.0], [11.0] * 50], dtype=F64)
    coupling = 4 * 2.0 * 1.0 * dt / (1.0 * 0.5) * np.array([3.0 * 0.7**3, 11.0 * 0.1**3])
    streaming = dt * np.array([3.0, 11.0]) / (1 - nu_max)
    expected = np.maximum(coupling, streaming)
    assert coupling[0] > streaming[0] and streaming[1] > coupling[1]  # each term decides one case
    np.testing.assert_allclose(stability_factors(T0, sigma, options).numpy(), expected, rtol=1e-12)


def test_stiff_cases_are_refused_with_the_fix_and_would_have_gone_wrong():
    params = {
        "T0_mean": torch.tensor([1.0, 1.0, 1.0], dtype=F64),
        "sigma_mean": torch.tensor([5.0, 45.0, 60.0], dtype=F64),
        "sigma_amplitude": torch.zeros(3, dtype=F64),
    }
    options = dict(nx=100, t_end=2.0, save_every=25)
    # factors 4 a c dt sigma T^3 / (rho cv) with dt = 0.008, T max 1.1: 0.21, 1.92, 2.56
    with pytest.raises(
        UnsolvableCase,
        match=r"2 of 3 cases are too stiff .* the stiffest, case 2, has stability "
        r"factor 2\.556 > 1\.5 .* raise nx to at least 171 ",
    ) as caught:
        solve("rte1d", params, **options)
    assert caught.value.case == 2
    # what the check prevents: past the limit the temperature leaves its initial range [0.9, 1.1] or overflows
    T = solve("rte1d", params, stability_check=False, **options)["T"]
    assert 0.9 - 1e-9 <= float(T[0].min()) and float(T[0].max()) <= 1.1 + 1e-9
    for case in (1, 2):
        values = T[case]
        assert not torch.isfinite(values).all() or float(values.min()) < 0.85 or float(values.max()) > 1.15
    # the suggested nx is enough for every case, and one less is not
    solve("rte1d", params, **{**options, "nx": 171})
    with pytest.raises(UnsolvableCase, match=r"1 of 3 .* factor 1\.504 > 1\.5"):
        solve("rte1d", params, **{**options, "nx": 170})


@pytest.mark.parametrize(
    "params",
    [
        {"T0": torch.tensor([[1.0] * 8, [1.0] * 7 + [math.inf]], dtype=F64)},  # an inf in a profile
        {"T0_mean": torch.tensor([1.0, 10.0], dtype=F64), "sigma_mean": torch.tensor([1.0, 1e308], dtype=F64)},
    ],
)
def test_a_case_with_an_infinite_stability_factor_is_refused_not_a_traceback(params):
    # the message's rounding and its suggested nx were math.ceil(inf): an OverflowError instead of UnsolvableCase
    from pipeline.solvers import check_cases

    with pytest.raises(
        UnsolvableCase, match=r"case 1, has stability factor inf > 1\.5 .* Fix: check T0 and sigma for nan or inf"
    ):
        check_cases("rte1d", params, nx=8)


def test_a_negative_opacity_is_refused_naming_the_case():
    # its stability factor is negative, so the check let it through, and the results grew to inf (a sweep only
    # warned of non-finite values)
    params = {"sigma_mean": torch.tensor([1.0, 1.0, -1.0], dtype=F64), "sigma_amplitude": torch.tensor([0.1, 1.0, 0.1])}
    with pytest.raises(
        UnsolvableCase, match=r"sigma is negative somewhere in 1 of 3 cases, first case 2 \(min sigma -1\.09\d\)"
    ):
        solve("rte1d", params, nx=16, t_end=2.0)
    with pytest.raises(UnsolvableCase, match=r"first case 0 .* use sigma_mean >= 0 and sigma_amplitude <= 1"):
        solve("rte1d", {"sigma_amplitude": torch.tensor([1.5], dtype=F64)}, nx=16)
    assert not torch.isfinite(solve("rte1d", params, nx=16, t_end=2.0, stability_check=False)["T"][2]).all()


def test_a_negative_initial_temperature_is_refused_naming_the_case():
    # T^4 emits for a negative T as for a positive one: the run went through and its results meant nothing
    params = {"T0_mean": torch.tensor([1.0, 0.0, -0.5], dtype=F64), "T0_amplitude": torch.tensor([0.1, 0.1, 0.1])}
    with pytest.raises(
        UnsolvableCase, match=r"T0 is negative somewhere in 1 of 3 cases, first case 2 \(min T0 -0\.54\d\)"
    ):
        solve("rte1d", params, nx=16, t_end=0.2)
    with pytest.raises(UnsolvableCase, match=r"first case 0 .* use T0_mean >= 0 and T0_amplitude <= 1"):
        solve("rte1d", {"T0_amplitude": torch.tensor([1.5], dtype=F64)}, nx=16)
    cold = solve("rte1d", {"T0_mean": torch.tensor([0.0], dtype=F64)}, nx=16, t_end=0.2)["T"]  # absolute zero: fine
    assert bool((cold == 0).all())
    assert torch.isfinite(solve("rte1d", params, nx=16, t_end=0.2, stability_check=False)["T"]).all()


def test_in_place_profiles_are_the_same_numbers():
    """The stability check builds profiles in place (no autograd): bit for bit the autograd-able ones."""
    from pipeline.solvers.rte1d import profile

    generator = torch.Generator().manual_seed(7)
    for dtype in (torch.float64, torch.float32):
        mean, amplitude, wavenumber, phase = (3 * torch.rand(257, generator=generator, dtype=dtype) for _ in range(4))
        x = torch.linspace(0, 2, 123, dtype=dtype)
        with torch.no_grad():
            fast = profile(mean, amplitude, wavenumber, phase, x, 2.0, in_place=True)
        reference = mean[:, None] * (
            1 + amplitude[:, None] * torch.sin(2 * math.pi / 2.0 * wavenumber[:, None] * x + phase[:, None])
        )
        assert torch.equal(fast, profile(mean, amplitude, wavenumber, phase, x, 2.0))
        torch.testing.assert_close(fast, reference, rtol=0, atol=0)
