"""``heat1d``: the periodic 1-D heat equation, a solver with an analytic solution.

    du/dt = D d2u/dx2    on [0, L), periodic, nx cells (cell centres x_i)

Second-order central differences in space; in time either

- ``scheme="crank_nicolson"`` (default, second order, unconditionally stable):
  the periodic Laplacian is diagonal in the discrete Fourier basis, so ``n``
  Crank-Nicolson steps multiply Fourier mode ``m`` by
  ``g_m**n, g_m = (1 - r_m/2) / (1 + r_m/2), r_m = D dt 4 sin^2(pi m / nx) / dx^2``;
  this is the same result as stepping with a cyclic tridiagonal solve, computed
  with one FFT per case and save;
- ``scheme="ftcs"`` (explicit Euler, first order in time, stable when
  ``D dt / dx^2 <= 1/2``), stepped with rolls.

``dt`` defaults to ``dx`` (CN) or ``0.2 dx^2`` (FTCS) and is then shortened so
that every save time ``t_end * (j + 1) / n_saves`` is reached exactly.

Case parameters: a profile ``u0`` ``[nx]``, or the scalars of
``u0 = u_mean + amplitude * sin(2 pi wavenumber x / L + phase)``, plus
``diffusivity`` ``D``. For an integer wavenumber the exact solution is
``u_mean + amplitude * exp(-D (2 pi wavenumber / L)^2 t) sin(2 pi wavenumber x / L + phase)``
(``exact_solution``), which the tests use to fit the convergence order.

Example:
    >>> import torch
    >>> from pipeline.solvers import solve
    >>> out = solve("heat1d", {"diffusivity": torch.tensor([0.1, 0.2], dtype=torch.float64)})
    >>> out["u"].shape
    torch.Size([2, 10, 64])
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from .checks import is_int, is_positive
from .interface import Solver, UnsolvableCase
from .params import ParamInfo
from .rte1d import cell_centres

DEFAULT_OPTIONS: dict[str, Any] = {
    "nx": 64,
    "L": 1.0,
    "t_end": 0.1,
    "n_saves": 10,
    "scheme": "crank_nicolson",
    "dt": None,
}
SCHEMES = ("crank_nicolson", "ftcs")
#: saved values of u of one case (n_saves x nx): beyond, the saves alone do not fit in memory (as rte1d's bound)
MAX_OUTPUT_VALUES = 2**31
#: FTCS steps of one case: each is a pass over the grid, so more than this runs for days
MAX_FTCS_STEPS = 2**31
INITIAL_DEFAULTS = {"u_mean": 0.0, "amplitude": 1.0, "wavenumber": 1.0, "phase": 0.0}


def save_times(options: dict[str, Any]) -> np.ndarray:
    """``t_end * (j + 1) / n_saves`` for ``j < n_saves``.

    Example:
        >>> save_times({"t_end": 0.1, "n_saves": 2}).tolist()
        [0.05, 0.1]
    """
    return options["t_end"] * np.arange(1, options["n_saves"] + 1) / options["n_saves"]


def time_step(options: dict[str, Any]) -> tuple[float, int]:
    """``(dt, steps_per_save)``: the requested ``dt`` shortened to divide the save interval.

    Example:
        >>> time_step({"nx": 64, "L": 1.0, "t_end": 0.1, "n_saves": 10, "scheme": "ftcs", "dt": 0.003})
        (0.0025, 4)
    """
    dx = options["L"] / options["nx"]
    dt = options["dt"]
    if dt is None:
        dt = dx if options["scheme"] == "crank_nicolson" else 0.2 * dx * dx
    interval = options["t_end"] / options["n_saves"]
    steps = max(1, math.ceil(interval / dt * (1 - 1e-12)))
    return interval / steps, steps


def _parameters(options: dict[str, Any]) -> dict[str, ParamInfo]:
    scalars = tuple(INITIAL_DEFAULTS)
    infos = {"u0": ParamInfo(("x",), (options["nx"],), None, "initial profile [nx]", scalars)}
    for key, default in INITIAL_DEFAULTS.items():
        infos[key] = ParamInfo((), (), default, f"u0 = u_mean + amplitude * sin(2 pi wavenumber x / L + phase): {key}")
    infos["diffusivity"] = ParamInfo((), (), 0.1, "diffusion coefficient D > 0")
    return infos


def _outputs(options: dict[str, Any]) -> dict[str, tuple[tuple[str, ...], tuple[int, ...]]]:
    return {"u": (("time", "x"), (options["n_saves"], options["nx"]))}


def _coords(options: dict[str, Any]) -> dict[str, np.ndarray]:
    return {"x": cell_centres(options["nx"], options["L"]), "time": save_times(options)}


def _check_options(options: dict[str, Any]) -> None:
    def bad(key: str, fix: str) -> ValueError:
        return ValueError(f"heat1d: option {key}={options[key]!r} is invalid; {fix}")

    if not is_int(options["nx"]) or options["nx"] < 4:
        raise bad("nx", "use an integer nx >= 4")
    if not is_int(options["n_saves"]) or options["n_saves"] < 1:
        raise bad("n_saves", "use an integer >= 1")
    for key in ("L", "t_end"):
        if not is_positive(options[key]):
            raise bad(key, "use a finite number > 0")
    if options["scheme"] not in SCHEMES:
        raise bad("scheme", f"use one of {', '.join(SCHEMES)}")
    if options["dt"] is not None and not is_positive(options["dt"]):
        raise bad("dt", "use a number > 0, or None for the scheme's default")
    values = options["n_saves"] * options["nx"]
    if values > MAX_OUTPUT_VALUES:
        raise ValueError(
            f"heat1d: options n_saves={options['n_saves']!r} and nx={options['nx']!r} save {values:.3g} values of u "
            "per case (more than 2**31: the saves alone do not fit in memory); use fewer saves or a coarser grid"
        )
    dx = options["L"] / options["nx"]
    dt = (
        options["dt"] if options["dt"] is not None else (dx if options["scheme"] == "crank_nicolson" else 0.2 * dx * dx)
    )
    steps = options["t_end"] / dt  # time_step's count before rounding up, as a float: it may not fit an integer
    key = "dt" if options["dt"] is not None else "t_end"
    if not math.isfinite(steps):
        raise bad(key, f"t_end / dt = {options['t_end']!r} / {dt!r} is too large to count time steps; use a larger dt")
    if options["scheme"] == "ftcs" and steps > MAX_FTCS_STEPS:
        raise bad(
            key,
            f"FTCS takes {steps:.3g} time steps of dt = {dt:.4g} per case (more than 2**31, each a pass over the grid); "
            "use scheme crank_nicolson (stable at any dt, its cost independent of the step count), "
            "or a smaller t_end",
        )


def initial_profile(params: dict[str, torch.Tensor], options: dict[str, Any]) -> torch.Tensor:
    """``u0`` ``[cases, nx]``, given or built from the scalar parameters."""
    if "u0" in params:
        return params["u0"]
    like = params["diffusivity"]
    x = torch.as_tensor(cell_centres(options["nx"], options["L"]), dtype=like.dtype, device=like.device)
    arg = (2 * math.pi / options["L"]) * params["wavenumber"][:, None] * x + params["phase"][:, None]
    return params["u_mean"][:, None] + params["amplitude"][:, None] * torch.sin(arg)


def exact_solution(params: dict[str, torch.Tensor], options: dict[str, Any]) -> torch.Tensor:
    """The analytic solution ``[cases, n_saves, nx]`` at the save times (integer wavenumbers).

    ``params`` must hold every scalar parameter with a case axis (as ``solve``
    passes them); ``options`` the full option dict (``get_solver("heat1d").validate_options``).

    Example:
        >>> from pipeline.solvers import get_solver
        >>> options = get_solver("heat1d").validate_options({"nx": 8, "n_saves": 2})
        >>> one = torch.ones(1, dtype=torch.float64)
        >>> params = {"u_mean": 0 * one, "amplitude": one, "wavenumber": one, "phase": 0 * one, "diffusivity": one}
        >>> exact_solution(params, options).shape
        torch.Size([1, 2, 8])
    """
    like = params["diffusivity"]
    x = torch.as_tensor(cell_centres(options["nx"], options["L"]), dtype=like.dtype, device=like.device)
    t = torch.as_tensor(save_times(options), dtype=like.dtype, device=like.device)
    kappa = (2 * math.pi / options["L"]) * params["wavenumber"]
    decay = torch.exp(-(params["diffusivity"] * kappa**2)[:, None] * t)  # [cases, saves]
    wave = torch.sin(kappa[:, None] * x + params["phase"][:, None])  # [cases, nx]
    return params["u_mean"][:, None, None] + (params["amplitude"][:, None] * decay)[:, :, None] * wave[:, None, :]


def solve_heat1d(params: dict[str, torch.Tensor], **options: Any) -> dict[str, torch.Tensor]:
    """Batched solver: ``params`` with a case axis -> ``{"u": [cases, n_saves, nx]}``."""
    try:
        check_cases(params, options)  # a negative diffusivity, or a case past FTCS's limit
    except RuntimeError:  # values cannot be read under some torch.func transforms: the caller owns them then
        pass
    u0 = initial_profile(params, options)
    D = params["diffusivity"]
    dx = options["L"] / options["nx"]
    dt, steps = time_step(options)
    # both schemes are out-of-place, so autograd and torch.func.jvp differentiate through them
    if options["scheme"] == "ftcs":
        return {"u": _ftcs(u0, D, dx, dt, steps, options["n_saves"])}
    return {"u": _crank_nicolson(u0, D, dx, dt, steps, options["n_saves"])}


def _ftcs(u0, D, dx, dt, steps, n_saves):
    r = (D * dt / dx**2)[:, None]
    u = u0
    saved = []
    for _ in range(n_saves):
        for _ in range(steps):
            u = u + r * (u.roll(1, -1) + u.roll(-1, -1) - 2 * u)
        saved.append(u)
    return torch.stack(saved, dim=1)


FTCS_LIMIT = 0.5  # FTCS is stable when D dt / dx^2 <= 1/2


def _ftcs_unstable(largest: float, dt: float, dx: float, where: str) -> str:
    return (
        f"heat1d: scheme='ftcs' is unstable {where}: max D dt / dx^2 = {largest * dt / dx**2:.4g} > {FTCS_LIMIT} "
        f"(max diffusivity {largest:.4g}, dt={dt:.4g}, dx={dx:.4g}); "
        f"set dt <= {FTCS_LIMIT * dx * dx / largest:.4g} or use scheme='crank_nicolson'"
    )


def check_ftcs_stability(params: dict[str, torch.Tensor], options: dict[str, Any], first_case: int = 0) -> None:
    """Raise ``UnsolvableCase`` naming the first case past FTCS's limit ``D dt / dx^2 <= 1/2`` (other schemes: none).

    Example:
        >>> options = {**DEFAULT_OPTIONS, "scheme": "ftcs", "dt": 1e-4}   # dx = 1/64: D up to 20.48
        >>> check_ftcs_stability({"diffusivity": torch.tensor([1.0, 30.0])}, options, first_case=7)
        Traceback (most recent call last):
        ...
        pipeline.solvers.interface.UnsolvableCase: heat1d: scheme='ftcs' is unstable for 1 of 2 cases, first case 8: ...
    """
    if options["scheme"] != "ftcs":
        return
    D = params["diffusivity"].detach()
    dx = options["L"] / options["nx"]
    dt, _ = time_step(options)
    bad = torch.nonzero(~(D * dt / dx**2 <= FTCS_LIMIT)).flatten()
    if len(bad) == 0:
        return
    case = int(bad[0])
    largest = float(D.nan_to_num(nan=float("inf")).max())
    where = f"for {len(bad)} of {len(D)} cases, first case {first_case + case}"
    raise UnsolvableCase(_ftcs_unstable(largest, dt, dx, where), first_case + case)


def check_cases(params: dict[str, torch.Tensor], options: dict[str, Any], first_case: int = 0) -> None:
    """Raise ``UnsolvableCase`` naming the first case with a negative diffusivity, then check FTCS's limit.

    ``D < 0`` is the backward heat equation: ill-posed, its results grow without bound instead of decaying.

    Example:
        >>> check_cases({"diffusivity": torch.tensor([0.1, -0.1])}, DEFAULT_OPTIONS, first_case=7)
        Traceback (most recent call last):
        ...
        pipeline.solvers.interface.UnsolvableCase: heat1d: parameter diffusivity is negative in 1 of 2 cases, ...
    """
    D = params["diffusivity"].detach()
    bad = torch.nonzero(D < 0).flatten()
    if len(bad):
        case = first_case + int(bad[0])
        raise UnsolvableCase(
            f"heat1d: parameter diffusivity is negative in {len(bad)} of {len(D)} cases, first case {case} "
            f"(diffusivity={float(D[bad[0]]):.4g}): the backward heat equation grows instead of diffusing; "
            "use diffusivity >= 0",
            case,
        )
    check_ftcs_stability(params, options, first_case)


def _crank_nicolson(u0, D, dx, dt, steps, n_saves):
    nx = u0.shape[1]
    m = torch.arange(nx // 2 + 1, dtype=u0.dtype, device=u0.device)
    lam = 4 * torch.sin(math.pi * m / nx) ** 2 / dx**2  # eigenvalues of -d2/dx2 (central differences)
    half = 0.5 * dt * D[:, None] * lam  # [cases, modes]
    # one CN step multiplies a mode by gain = (1 - half) / (1 + half); n steps by gain**n, taken as
    # sign * exp(n log|gain|) with log1p: at a small dt, 1 - half rounds to 1 (float32: dt < ~1e-7 here) and
    # gain**n lost the decay (no decay at all at dt = 1e-9), where log1p keeps it
    # (each branch given a harmless value where the other is taken, so that neither puts a NaN in a derivative)
    below, above = half < 1, half >= 1
    log_gain = torch.where(
        below, torch.log1p(-torch.where(below, half, 0.0)), torch.log(torch.where(above, half - 1, 1.0))
    ) - torch.log1p(half)
    n = float(steps) * torch.arange(1, n_saves + 1, dtype=u0.dtype, device=u0.device)  # steps may pass int64
    factors = torch.exp(log_gain[:, None, :] * n[None, :, None])  # [cases, saves, modes]
    flips = above[:, None, :] & (torch.remainder(n, 2) == 1)[None, :, None]  # gain < 0 to an odd power
    factors = torch.where(flips, -factors, factors)
    spectrum = torch.fft.rfft(u0, dim=-1)[:, None, :] * factors
    return torch.fft.irfft(spectrum, n=nx, dim=-1)


SOLVER = Solver(
    name="heat1d",
    fn=solve_heat1d,
    default_options=DEFAULT_OPTIONS,
    batched=True,
    parameters_fn=_parameters,
    outputs_fn=_outputs,
    coords_fn=_coords,
    check_options=_check_options,
    check_cases=check_cases,
    description="periodic 1-D heat equation, Crank-Nicolson (FFT) or FTCS; exact solution a decaying sine",
)
