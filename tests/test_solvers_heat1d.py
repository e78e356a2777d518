"""heat1d: convergence orders fitted against analytic solutions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pipeline.solvers import get_solver, solve
from pipeline.solvers.heat1d import exact_solution

F64 = torch.float64


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# three cases with different mean, amplitude, integer wavenumber, phase and diffusivity
CASES = {
    "u_mean": torch.tensor([0.0, 1.0, -0.5], dtype=F64),
    "amplitude": torch.tensor([1.0, 0.3, 2.0], dtype=F64),
    "wavenumber": torch.tensor([1.0, 2.0, 1.0], dtype=F64),
    "phase": torch.tensor([0.0, 0.7, -1.2], dtype=F64),
    "diffusivity": torch.tensor([0.1, 0.05, 0.2], dtype=F64),
}


def continuous_exact(nx: int, t_end: float, n_saves: int) -> torch.Tensor:
    """u_mean + A exp(-D kappa^2 t) sin(kappa x + phase), written out independently of heat1d."""
    x = (torch.arange(nx, dtype=F64) + 0.5) / nx
    t = t_end * torch.arange(1, n_saves + 1, dtype=F64) / n_saves
    kappa = 2 * math.pi * CASES["wavenumber"]
    decay = torch.exp(-CASES["diffusivity"][:, None] * kappa[:, None] ** 2 * t)
    wave = torch.sin(kappa[:, None] * x + CASES["phase"][:, None])
    return CASES["u_mean"][:, None, None] + CASES["amplitude"][:, None, None] * decay[:, :, None] * wave[:, None, :]


def semi_discrete_exact(nx: int, t_end: float, n_saves: int) -> torch.Tensor:
    """Exact in time for the central-difference Laplacian: mode kappa decays at 4 sin^2(kappa dx/2)/dx^2."""
    dx = 1.0 / nx
    x = (torch.arange(nx, dtype=F64) + 0.5) * dx
    t = t_end * torch.arange(1, n_saves + 1, dtype=F64) / n_saves
    kappa = 2 * math.pi * CASES["wavenumber"]
    rate = CASES["diffusivity"] * 4 * torch.sin(kappa * dx / 2) ** 2 / dx**2
    decay = torch.exp(-rate[:, None] * t)
    wave = torch.sin(kappa[:, None] * x + CASES["phase"][:, None])
    return CASES["u_mean"][:, None, None] + CASES["amplitude"][:, None, None] * decay[:, :, None] * wave[:, None, :]


def fitted_order(steps: list[float], errors: list[float]) -> float:
    slope, _ = np.polyfit(np.log(steps), np.log(errors), 1)
    return float(slope)


@pytest.mark.parametrize(
    "scheme,dt_of_dx", [("crank_nicolson", lambda dx: 0.5 * dx), ("ftcs", lambda dx: 0.2 * dx * dx)]
)
def test_space_time_convergence_order_is_two(scheme, dt_of_dx):
    sizes = [16, 32, 64, 128]
    errors = []
    for nx in sizes:
        out = solve("heat1d", CASES, nx=nx, t_end=0.1, n_saves=4, scheme=scheme, dt=dt_of_dx(1.0 / nx))
        errors.append(float((out["u"] - continuous_exact(nx, 0.1, 4)).abs().max()))
    assert errors[-1] < 1e-3
    assert abs(fitted_order([1.0 / n for n in sizes], errors) - 2.0) < 0.2


@pytest.mark.parametrize("scheme,order,nx,first", [("crank_nicolson", 2.0, 32, 8), ("ftcs", 1.0, 16, 16)])
def test_time_convergence_order(scheme, order, nx, first):
    """At fixed nx, against the semi-discrete exact solution, only the time error remains."""
    dts = [0.1 / (first * 2**i) for i in range(4)]  # FTCS: dt <= dx^2 / (2 max D) = 0.0098
    errors = []
    for dt in dts:
        out = solve("heat1d", CASES, nx=nx, t_end=0.1, n_saves=1, scheme=scheme, dt=dt)
        errors.append(float((out["u"] - semi_discrete_exact(nx, 0.1, 1)).abs().max()))
    assert abs(fitted_order(dts, errors) - order) < 0.2


def test_exact_solution_helper_agrees_with_the_test_formula():
    options = get_solver("heat1d").validate_options({"nx": 20, "n_saves": 3})
    torch.testing.assert_close(exact_solution(CASES, options), continuous_exact(20, 0.1, 3), rtol=1e-14, atol=1e-14)


def test_profile_input_equals_scalar_input():
    nx = 32
    x = (torch.arange(nx, dtype=F64) + 0.5) / nx
    u0 = CASES["u_mean"][:, None] + CASES["amplitude"][:, None] * torch.sin(
        2 * math.pi * CASES["wavenumber"][:, None] * x + CASES["phase"][:, None]
    )
    a = solve("heat1d", CASES, nx=nx)
    b = solve("heat1d", {"u0": u0, "diffusivity": CASES["diffusivity"]}, nx=nx)
    torch.testing.assert_close(a["u"], b["u"], rtol=1e-13, atol=1e-13)


def test_description_matches_outputs():
    s = get_solver("heat1d")
    out = solve(s, CASES, nx=24, n_saves=6)
    assert s.outputs({"nx": 24, "n_saves": 6}) == {"u": (("time", "x"), (6, 24))}
    assert out["u"].shape == (3, 6, 24)
    np.testing.assert_allclose(s.coords({"n_saves": 4})["time"], [0.025, 0.05, 0.075, 0.1])


def test_ftcs_instability_is_reported_with_a_fix():
    with pytest.raises(ValueError, match=r"unstable.*set dt <= .*crank_nicolson"):
        solve("heat1d", {"diffusivity": torch.tensor([0.1, 5.0])}, scheme="ftcs", dt=1e-3)


@pytest.mark.parametrize(
    "diffusivity", [0.1, np.float64(0.1), torch.tensor(0.1, dtype=F64), np.array([0.1, 0.1]), [0.1, 0.1]]
)
def test_sensitivities_take_parameters_as_solve_does(diffusivity):
    # a 0-d tensor or a number was an IndexError, numpy a TypeError, a broadcast value a RuntimeError in jvp
    from pipeline.solvers.sensitivity import Reduction, sensitivities

    heat, cpu = get_solver("heat1d"), torch.device("cpu")
    amplitude = torch.tensor([1.0, 2.0], dtype=F64)
    _, result = sensitivities(
        heat, {"diffusivity": diffusivity, "amplitude": amplitude}, {"q": Reduction("u", -1, "max")},
        ["diffusivity"], device=cpu, dtype=F64, nx=16,
    )  # fmt: skip

    def q(D: float) -> np.ndarray:
        u = solve("heat1d", {"diffusivity": D, "amplitude": amplitude}, nx=16, dtype=F64)["u"]
        return u[:, -1].amax(-1).numpy()

    eps = 1e-6
    np.testing.assert_allclose(result["q"], q(0.1), rtol=1e-14)
    np.testing.assert_allclose(result["dq_ddiffusivity"], (q(0.1 + eps) - q(0.1 - eps)) / (2 * eps), rtol=1e-6)
    d = result["dq_ddiffusivity"]
    assert d.shape == (2,) and d[0] < 0
    np.testing.assert_allclose(d[1], 2 * d[0], rtol=1e-12)  # each case its own derivative (u is linear in amplitude)


@pytest.mark.parametrize("chunk_size", [None, 2])
def test_a_negative_diffusivity_is_refused_by_solve_itself(chunk_size):
    # only the sweep jobs' check_cases refused it; solve() returned a profile growing without bound
    D = torch.tensor([0.1, 0.2, 0.3, -0.1], dtype=torch.float64)
    with pytest.raises(ValueError, match=r"diffusivity is negative in 1 of .* first case 3 .*diffusivity >= 0"):
        solve("heat1d", {"diffusivity": D}, chunk_size=chunk_size)
    assert solve("heat1d", {"diffusivity": D.abs()})["u"].abs().max() <= 1.0 + 1e-12  # a max principle holds


@pytest.mark.parametrize(
    "options,words",
    [
        ({"scheme": "euler"}, ["scheme='euler'", "crank_nicolson, ftcs"]),
        ({"dt": 0.0}, ["dt=0.0", "None"]),
        ({"n_saves": 0}, ["n_saves=0"]),
        # were the first case's MemoryError / OverflowError, naming no option, or an FTCS run of days
        ({"nx": 10**9}, ["n_saves=10 and nx=1000000000", "1e+10 values", "fewer saves or a coarser grid"]),
        ({"n_saves": 10**8}, ["n_saves=100000000", "6.4e+09 values"]),
        ({"scheme": "ftcs", "t_end": 1e30}, ["t_end=1e+30", "2.05e+34 time steps", "crank_nicolson"]),
        ({"scheme": "ftcs", "dt": 1e-12}, ["dt=1e-12", "1e+11 time steps", "crank_nicolson"]),
        ({"dt": 1e-300, "t_end": 1e300}, ["dt=1e-300", "too large to count time steps", "larger dt"]),
    ],
)
def test_option_errors(options, words):
    with pytest.raises(ValueError) as err:
        get_solver("heat1d").validate_options(options)
    for word in words:
        assert word in str(err.value)


@pytest.mark.parametrize("dt", [1e-3, 1e-7, 1e-9, 1e-30])
def test_crank_nicolson_keeps_the_decay_at_any_small_dt_in_float32(dt):
    """At a small dt one step's gain rounded to 1 in float32 (dt = 1e-9: no decay at all, error 0.98); now float32
    agrees with float64, and both with the semi-discrete exact solution (CN's time error is O(dt^2))."""
    params32 = {k: v.float() for k, v in CASES.items()}
    u32 = solve("heat1d", params32, nx=32, dt=dt)["u"].double()
    u64 = solve("heat1d", CASES, nx=32, dt=dt)["u"]
    exact = semi_discrete_exact(32, 0.1, 10)
    assert float((u64 - exact).abs().max()) < 1e-6 + dt**2 * 1e3
    assert float((u32 - exact).abs().max()) < 2e-6 + dt**2 * 1e3


def test_crank_nicolson_over_a_huge_time_reaches_the_mean():
    """t_end = 1e30: the step count passes int64 (was an OverflowError); every mode but the mean has decayed."""
    u = solve("heat1d", CASES, t_end=1e30, n_saves=2)["u"]
    torch.testing.assert_close(u, CASES["u_mean"][:, None, None].expand_as(u), rtol=0, atol=1e-12)


@pytest.mark.parametrize("scheme", ["crank_nicolson", "ftcs"])
def test_sensitivity_to_diffusivity_matches_finite_differences(scheme):
    def centre_value(D):
        return solve("heat1d", {**CASES, "diffusivity": D}, nx=16, scheme=scheme)["u"][:, -1, 3]

    D = CASES["diffusivity"]
    _, tangent = torch.func.jvp(centre_value, (D,), (torch.ones_like(D),))
    eps = 1e-6
    fd = (centre_value(D + eps) - centre_value(D - eps)) / (2 * eps)
    torch.testing.assert_close(tangent, fd, rtol=1e-6, atol=1e-9)
    assert float(tangent.abs().min()) > 1e-3


def test_sensitivities_name_a_missing_parameter_output_or_reduce():
    # these were KeyErrors from inside sensitivities ('phase', 'v', 'median')
    from pipeline.solvers import sensitivities
    from pipeline.solvers.sensitivity import Reduction

    heat, cpu = get_solver("heat1d"), torch.device("cpu")
    params = {"diffusivity": torch.tensor([0.1, 0.2], dtype=F64)}
    cases = (
        ({"q": Reduction("u")}, ["phase"], r"\['phase'\] need those parameters in params.*given: diffusivity"),
        ({"q": Reduction("v")}, ["diffusivity"], r"reduction 'q': heat1d has no output 'v'; it has u"),
        ({"q": Reduction("u", -1, "median")}, [], r"unknown reduce 'median'; use one of mean, sum, max, min"),
    )
    for reductions, wrt, message in cases:
        with pytest.raises(ValueError, match=message):
            sensitivities(heat, params, reductions, wrt, device=cpu, dtype=F64, nx=16)
    _, result = sensitivities(heat, params, {"q": Reduction("u", -1, "max")}, ["diffusivity"], device=cpu, dtype=F64)
    assert result["dq_ddiffusivity"].shape == (2,)
