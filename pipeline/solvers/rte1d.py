"""``rte1d``: 1-D gray radiative transfer coupled to a material temperature (seed 004).

Equations, on a periodic domain ``[0, L)`` with ``nx`` cells, for the angular
intensity ``I(x, mu, t)`` at Gauss-Legendre angles ``mu_k`` (weights ``w_k``,
``sum w_k = 2``) and the temperature ``T(x, t)``::

    dI_k/dt + mu_k dI_k/dx = sigma (a c T^4 / 2 - I_k)
    rho cv dT/dt           = sigma (E - a c T^4),        E = sum_k w_k I_k

discretised exactly as the seed: first-order upwind streaming, explicit Euler
in time with ``dt = CFL * dx`` and ``n_steps = int(t_end / dt)``, emission and
absorption evaluated at the old time level, ``I = a c T0^4 / 2`` initially.
``E`` and ``T`` are saved after every step whose index is a multiple of
``save_every`` (step 0 included), i.e. at times ``(s + 1) * dt``. The seed
defines ``rho`` but never uses it; here ``rho * cv`` is the heat capacity,
which is the seed for the default ``rho = 1``.

Conservation: streaming cancels over a periodic domain and the exchange terms
are equal and opposite, so ``sum_x (E + rho cv T)`` is conserved to round-off.

Case parameters: ``T0`` and ``sigma`` profiles ``[nx]``, or either one built from
scalars ``mean * (1 + amplitude * sin(2 pi wavenumber x / L + phase))`` with
``T0_mean, T0_amplitude, T0_wavenumber, T0_phase`` (and ``sigma_*``). The seed's
case ``c`` is ``T0_mean = sigma_mean = 1 + sin(c)``, amplitudes ``0.1``,
``T0_phase = sin(c)``, ``sigma_phase = sin(c + 1)``.

Implementation: natively batched over cases (no vmap), in-place updates into
two preallocated ping-pong buffers with ghost cells, coefficients precomputed
once, eleven kernels per step. On CPU the cases run in blocks sized for the
cache; on CUDA a fused step is compiled with ``torch.compile`` (``compile``).

Derivatives: forward sensitivities are hand-written tangents stepped together
with the primal in the same fast layout (``dT4 = 4 T^3 dT``, ...), for several
directions at once: ``rte1d_jvp(params, tangents)`` (about ``1 + k`` plain
solves for ``k`` directions), and under ``torch.func.jvp`` / ``forward_ad`` dual
tensors through ``solve`` (an ``autograd.Function`` with a ``jvp``, one
direction). Reverse mode, ``vmap`` / ``jacfwd`` and nested transforms run an
out-of-place version of the seed's step (slow, but any derivative works).

Example:
    >>> import torch
    >>> from pipeline.solvers import solve
    >>> c = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64)
    >>> out = solve("rte1d", {"T0_mean": 1 + c.sin(), "T0_phase": c.sin(),
    ...                       "sigma_mean": 1 + c.sin(), "sigma_phase": (c + 1).sin()})
    >>> out["E"].shape
    torch.Size([4, 50, 400])
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from .checks import is_int, is_positive
from .interface import Solver, UnsolvableCase, tracks_derivatives
from .params import ParamInfo, prepare_params

DEFAULT_OPTIONS: dict[str, Any] = {
    "nx": 400,
    "L": 1.0,
    "n_angles": 8,
    "t_end": 1.0,
    "CFL": 0.8,
    "save_every": 10,
    "a": 1.0,
    "c": 1.0,
    "rho": 1.0,
    "cv": 1.0,
    # performance only (results do not depend on them):
    "compile": "auto",
    "block_cases": None,
    # refuse cases the explicit scheme cannot step stably (see check_stability)
    "stability_check": True,
}

PROFILE_DEFAULTS = {"mean": 1.0, "amplitude": 0.1, "wavenumber": 1.0, "phase": 0.0}
_PROFILES = ("T0", "sigma")
_CPU_BLOCK_BYTES = 4 << 20  # state per block on CPU; best of 16..1024-case blocks on a 2-core EPYC (L2 1 MiB/core)


# -- description ----------------------------------------------------------------------


def cell_centres(nx: int, L: float) -> np.ndarray:
    """Cell centres ``(i + 1/2) * L / nx`` (float64).

    Example:
        >>> cell_centres(4, 1.0)
        array([0.125, 0.375, 0.625, 0.875])
    """
    return (np.arange(nx, dtype=np.float64) + 0.5) * (L / nx)


def time_grid(options: dict[str, Any]) -> tuple[float, float, int, np.ndarray]:
    """``(dx, dt, n_steps, save_steps)`` as the seed computes them.

    Example:
        >>> dx, dt, n_steps, saves = time_grid(DEFAULT_OPTIONS)
        >>> n_steps, len(saves)
        (500, 50)
    """
    dx, dt, n_steps = time_steps(options)
    return dx, dt, n_steps, np.arange(0, n_steps, options["save_every"])


def time_steps(options: dict[str, Any]) -> tuple[float, float, int]:
    """``(dx, dt, n_steps)`` of ``time_grid``, without its array of save steps (checked before it is made)."""
    dx = options["L"] / options["nx"]
    dt = options["CFL"] * dx
    return dx, dt, int(options["t_end"] / dt)


def gauss_legendre(n_angles: int) -> tuple[np.ndarray, np.ndarray]:
    """Angles ``mu`` (ascending: the first half negative) and weights (sum 2).

    Example:
        >>> mu, w = gauss_legendre(2)
        >>> mu.round(4).tolist(), w.tolist()
        ([-0.5774, 0.5774], [1.0, 1.0])
    """
    return np.polynomial.legendre.leggauss(n_angles)


def _parameters(options: dict[str, Any]) -> dict[str, ParamInfo]:
    nx = options["nx"]
    infos: dict[str, ParamInfo] = {}
    for p, what in (("T0", "initial temperature"), ("sigma", "opacity")):
        scalars = tuple(f"{p}_{k}" for k in PROFILE_DEFAULTS)
        infos[p] = ParamInfo(("x",), (nx,), None, f"{what} profile [nx]; replaces {', '.join(scalars)}", scalars)
    for p in _PROFILES:
        for key, default in PROFILE_DEFAULTS.items():
            infos[f"{p}_{key}"] = ParamInfo(
                (), (), default, f"{p} = mean * (1 + amplitude * sin(2 pi wavenumber x / L + phase)): {key}"
            )
    return infos


def _outputs(options: dict[str, Any]) -> dict[str, tuple[tuple[str, ...], tuple[int, ...]]]:
    shape = (len(time_grid(options)[3]), options["nx"])
    return {"E": (("time", "x"), shape), "T": (("time", "x"), shape)}


def _coords(options: dict[str, Any]) -> dict[str, np.ndarray]:
    _, dt, _, saves = time_grid(options)
    return {"x": cell_centres(options["nx"], options["L"]), "time": (saves + 1) * dt}


#: saved values of one output of one case (saves x nx): beyond, the saves alone do not fit in memory
MAX_OUTPUT_VALUES = 2**31


def _check_options(options: dict[str, Any]) -> None:
    def bad(key: str, fix: str) -> ValueError:
        return ValueError(f"rte1d: option {key}={options[key]!r} is invalid; {fix}")

    if not is_int(options["nx"]) or options["nx"] < 4:
        raise bad("nx", "use an integer nx >= 4 (the seed uses 400)")
    n = options["n_angles"]
    if not is_int(n) or n < 2 or n % 2:
        raise bad("n_angles", "use an even integer >= 2: half the Gauss-Legendre angles move right, half left")
    for key in ("L", "t_end", "CFL", "a", "c", "rho", "cv"):
        if not is_positive(options[key]):
            raise bad(key, f"use a finite number > 0 (default {DEFAULT_OPTIONS[key]})")
    if not is_int(options["save_every"]) or options["save_every"] < 1:
        raise bad("save_every", "use an integer >= 1 (the seed saves every 10 steps)")
    mu_max = float(np.abs(gauss_legendre(n)[0]).max())
    if options["CFL"] * mu_max > 1:
        raise bad(
            "CFL",
            f"the upwind step is unstable when CFL * max|mu| = {options['CFL'] * mu_max:.4g} > 1; "
            "use CFL <= 1 (the seed uses 0.8)",
        )
    _, dt, n_steps = time_steps(options)  # time_grid's arange of the saves only once their number is sane
    values = -(-n_steps // options["save_every"]) * options["nx"]
    if values > MAX_OUTPUT_VALUES:
        raise bad(
            "t_end",
            f"it takes {n_steps:.3g} time steps of dt = CFL * L / nx = {dt:.4g}, saving {values:.3g} values of each "
            f"output per case (more than 2**31); use a smaller t_end or a larger save_every",
        )
    if n_steps < 1:
        raise bad("t_end", f"it is shorter than one time step dt = CFL * L / nx = {dt:.4g}; increase t_end")
    if options["compile"] not in ("auto", True, False):
        raise bad("compile", "use 'auto' (compile the step on CUDA only), True or False")
    block = options["block_cases"]
    if block is not None and (not is_int(block) or block < 1):
        raise bad("block_cases", "use None (automatic) or a positive integer")
    if not isinstance(options["stability_check"], bool):
        raise bad("stability_check", "use true (refuse unstable cases, the default) or false")


STABILITY_LIMIT = 1.5


def stability_factors(T0: torch.Tensor, sigma: torch.Tensor, options: dict[str, Any]) -> torch.Tensor:
    """Per case, how stiff the explicit step is: <= 1 keeps it monotone; ``check_stability`` refuses > 1.5 ``[cases]``.

    The step is a convex combination, so it keeps ``I`` and ``T`` within their
    bounds, when in every cell

    - ``max|nu| + dt sigma <= 1`` (upwind streaming plus absorption), and
    - ``4 a c dt sigma T^3 / (rho cv) <= 1`` (the linearised ``T^4`` coupling).

    The factor is the larger of ``dt sigma / (1 - max|nu|)`` and the second
    term, with ``T`` the initial temperature. Between 1 and 2 the step
    overshoots but can still converge; measured over 2,000 random seed-like
    cases (nx = 32, t up to 12; T0 0.2-6, sigma 0.1-100, amplitudes up to 0.9),
    the smallest factor whose results left the initial temperature range or
    overflowed was 1.69, hence the limit ``STABILITY_LIMIT = 1.5``.
    ``dt = CFL L / nx``: both terms shrink with it.

    Example:
        >>> opts = {**DEFAULT_OPTIONS, "nx": 100}
        >>> T0 = torch.ones(2, 100); sigma = torch.tensor([[5.0] * 100, [40.0] * 100])
        >>> [round(f, 2) for f in stability_factors(T0, sigma, opts).tolist()]
        [0.17, 1.38]
    """
    dx, dt, _, _ = time_grid(options)
    nu_max = dt / dx * float(np.abs(gauss_legendre(options["n_angles"])[0]).max())
    with torch.no_grad():
        sigma, T0 = sigma.detach(), T0.detach()
        streaming = dt * sigma.amax(-1) / (1 - nu_max)
        coupling = (4 * options["a"] * options["c"] * dt / (options["rho"] * options["cv"])) * (
            sigma * T0.abs() ** 3
        ).amax(-1)
        return torch.maximum(streaming, coupling)


def _refuse_negative(name: str, profiles: torch.Tensor, first_case: int, why: str) -> None:
    """Raise ``UnsolvableCase`` naming the first case whose ``name`` profile is negative somewhere (why: ``why``)."""
    negative = torch.nonzero(profiles.amin(-1) < 0).flatten()
    if len(negative):
        case = int(negative[0])
        raise UnsolvableCase(
            f"rte1d: {name} is negative somewhere in {len(negative)} of {len(profiles)} cases, first case "
            f"{first_case + case} (min {name} {float(profiles[case].min()):.4g}): {why}. Fix: use {name}_mean >= 0 "
            f"and {name}_amplitude <= 1 (or a {name} profile >= 0), or set stability_check: false to run anyway",
            first_case + case,
        )


def check_stability(params: dict[str, torch.Tensor], options: dict[str, Any], first_case: int = 0) -> None:
    """Raise ``UnsolvableCase`` naming the stiffest case if any stability factor exceeds ``STABILITY_LIMIT``."""
    if not options["stability_check"]:
        return
    with torch.no_grad():  # the profiles built in place: a few times faster over a million cases
        T0, sigma = initial_profiles(params, options, in_place=True)
    _refuse_negative(
        "sigma",
        sigma,
        first_case,
        "a negative opacity amplifies the radiation instead of absorbing it, so the results grow until they overflow",
    )
    _refuse_negative(
        "T0",
        T0,
        first_case,
        "T is an absolute temperature, emitting a c T^4, so a negative one emits as if it were positive and its "
        "results mean nothing",
    )
    factors = stability_factors(T0, sigma, options).nan_to_num(nan=math.inf, posinf=math.inf)
    bad = int((factors > STABILITY_LIMIT).sum())
    if bad == 0:
        return
    case = int(factors.argmax())
    worst = float(factors[case])
    _, dt, _, _ = time_grid(options)
    cells = options["nx"] * worst / STABILITY_LIMIT
    need = math.ceil(cells) if math.isfinite(cells) else None
    shown = f"{math.ceil(worst * 1000) / 1000:.3f}" if need else f"{worst:.4g}"  # rounded up: never the limit itself
    raise UnsolvableCase(
        f"rte1d: {bad} of {len(factors)} cases are too stiff for the explicit time step dt = CFL*L/nx "
        f"= {dt:.4g}; the stiffest, case {first_case + case}, has stability factor {shown} > {STABILITY_LIMIT} "
        "(max(dt*sigma/(1 - CFL*max|mu|), 4*a*c*dt*sigma*T^3/(rho*cv)) over x), so its results would oscillate "
        "or overflow. Fix: "
        + (
            f"raise nx to at least {need} (or lower CFL by the same factor), "
            if need
            else "check T0 and sigma for nan or inf (or values that overflow), "
        )
        + "narrow the range of sigma or T0, or set stability_check: false to run anyway",
        first_case + case,
    )


# -- computation ----------------------------------------------------------------------


def profile(mean, amplitude, wavenumber, phase, x: torch.Tensor, L: float, in_place: bool = False) -> torch.Tensor:
    """``mean * (1 + amplitude * sin(2 pi wavenumber x / L + phase))`` for ``[cases]`` scalars -> ``[cases, nx]``.

    ``in_place``: the same numbers computed in one ``[cases, nx]`` buffer
    instead of five (no autograd through it: the driver's stability check).

    Example:
        >>> one = torch.ones(1)
        >>> profile(2 * one, 0.5 * one, one, 0 * one, torch.tensor([0.25, 0.75]), 1.0)
        tensor([[3., 1.]])
    """
    if in_place:
        arg = ((2 * math.pi / L) * wavenumber)[:, None] * x
        return arg.add_(phase[:, None]).sin_().mul_(amplitude[:, None]).add_(1).mul_(mean[:, None])
    arg = (2 * math.pi / L) * wavenumber[:, None] * x + phase[:, None]
    return mean[:, None] * (1 + amplitude[:, None] * torch.sin(arg))


def initial_profiles(
    params: dict[str, torch.Tensor], options: dict[str, Any], in_place: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``T0`` and ``sigma`` profiles ``[cases, nx]``, given or built from the scalar parameters (``profile``)."""
    some = next(iter(params.values()))
    x = torch.as_tensor(cell_centres(options["nx"], options["L"]), dtype=some.dtype, device=some.device)
    out = []
    for p in _PROFILES:
        if p in params:
            out.append(params[p])
        else:
            mean, amplitude, wavenumber, phase = (params[f"{p}_{k}"] for k in PROFILE_DEFAULTS)
            out.append(profile(mean, amplitude, wavenumber, phase, x, options["L"], in_place=in_place))
    return out[0], out[1]


def solve_rte1d(params: dict[str, torch.Tensor], **options: Any) -> dict[str, torch.Tensor]:
    """Batched solver: ``params`` with a leading case axis -> ``{"E", "T": [cases, saves, nx]}``.

    Use ``pipeline.solvers.solve("rte1d", ...)``, which validates options and
    fills defaults; this is the function behind it. Under forward-mode AD alone
    (``torch.func.jvp``, dual tensors) the tangents are stepped with the fast
    kernels (``_ForwardSensitivities``); under other derivatives (autograd,
    ``torch.func.grad`` / ``vmap`` / ``jacfwd``, nested transforms) it takes the
    out-of-place path, so sensitivities of outputs to parameters work.
    """
    T0, sigma = initial_profiles(params, options)
    try:
        check_stability({"T0": T0, "sigma": sigma}, options)
    except RuntimeError:  # values cannot be read under some torch.func transforms: the caller owns stability then
        pass
    if tracks_derivatives(T0, sigma):
        filled = _Filled()
        if _forward_mode_only(T0, sigma):
            E, T = _ForwardSensitivities.apply(T0, sigma, options, filled)
        if not filled.done:  # other derivatives, or no tangent reached the Function (its jvp did not run)
            E, T = _integrate_functional(T0, sigma, options, _step)
        return {"E": E, "T": T}
    n_cases, nx = T0.shape
    _, _, _, saves = time_grid(options)
    E_out = T0.new_empty((n_cases, len(saves), nx))
    T_out = T0.new_empty((n_cases, len(saves), nx))
    use_compile = options["compile"] is True or (options["compile"] == "auto" and T0.device.type == "cuda")
    block = options["block_cases"] or _auto_block(n_cases, nx, options["n_angles"], T0)
    with torch.no_grad():
        for start in range(0, n_cases, block):
            part = slice(start, min(start + block, n_cases))
            if not use_compile:
                _integrate_inplace(T0[part], sigma[part], E_out[part], T_out[part], options)
                continue
            try:
                E_out[part], T_out[part] = _integrate_functional(T0[part], sigma[part], options, _compiled_step())
            except Exception as err:  # compiler missing or failing: "auto" must still give results
                if options["compile"] is True:
                    raise
                warnings.warn(
                    f"rte1d: torch.compile of the step failed on {T0.device} ({type(err).__name__}: {err}); "
                    "using the eager step instead. Pass compile=False to skip compiling.",
                    RuntimeWarning,
                    stacklevel=2,
                )
                use_compile = False
                _integrate_inplace(T0[part], sigma[part], E_out[part], T_out[part], options)
    return {"E": E_out, "T": T_out}


def _forward_mode_only(*tensors: torch.Tensor) -> bool:
    """Whether forward-mode AD is the only derivative flowing: one ``torch.func.jvp``, or dual tensors.

    Then the hand-written tangents (``_ForwardSensitivities``) apply; under
    reverse mode, ``vmap``/``jacfwd`` or nested transforms the out-of-place path runs.
    """
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return False
    try:  # functorch's transform stack (private API: anything unexpected -> the general path)
        from torch._C._functorch import TransformType, get_interpreter_stack

        stack = get_interpreter_stack()
    except (ImportError, AttributeError, RuntimeError):
        return False
    if stack:
        return len(stack) == 1 and stack[0].key() == TransformType.Jvp
    from torch.autograd import forward_ad

    return any(forward_ad.unpack_dual(t).tangent is not None for t in tensors)


class _Filled:
    """Set by ``_ForwardSensitivities.jvp`` once it has filled the outputs (an object, not a pytree)."""

    done = False


class _ForwardSensitivities(torch.autograd.Function):
    """``(T0, sigma) -> (E, T)`` whose forward-mode derivative is ``_integrate_tangents_inplace``.

    ``jvp`` steps the primal and the tangent together (the tangent needs the
    primal state of every step), so ``forward`` only allocates the outputs and
    ``jvp`` fills them (and sets ``filled.done``): one combined pass instead
    of a plain solve plus one. ``solve_rte1d`` takes this route only when
    forward-mode AD is the only derivative flowing (``_forward_mode_only``),
    and recomputes on the out-of-place path when ``jvp`` did not run (e.g. a
    tensor wrapped by ``torch.func.jvp`` but detached: no tangent). There is
    no ``backward``: reverse mode takes the out-of-place path.
    """

    @staticmethod
    def forward(T0, sigma, options, filled):
        n_cases, nx = T0.shape
        n_saves = len(time_grid(options)[3])
        return T0.new_empty((n_cases, n_saves, nx)), T0.new_empty((n_cases, n_saves, nx))

    @staticmethod
    def setup_context(ctx, inputs, output):
        T0, sigma, options, filled = inputs
        ctx.options, ctx.filled, ctx.outputs = options, filled, output
        ctx.save_for_forward(T0, sigma)

    @staticmethod
    def jvp(ctx, dT0, dsigma, _options, _filled):
        T0, sigma = ctx.saved_tensors
        tangents = [None if t is None else t.expand_as(T0)[None] for t in (dT0, dsigma)]
        if tangents[0] is None and tangents[1] is None:
            tangents[0] = torch.zeros_like(T0)[None]
        _, _, dE, dT = _solve_tangents(T0, sigma, *tangents, ctx.options, out=ctx.outputs)
        ctx.outputs = None
        ctx.filled.done = True
        return dE[0], dT[0]


def rte1d_jvp(
    params: Mapping[str, Any],
    tangents: Mapping[str, Any],
    *,
    chunk_size: int | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    tangent_outputs: Sequence[str] = ("E", "T"),
    **options: Any,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Outputs and their forward sensitivities along ``k`` parameter directions, in one pass.

    ``params``, ``chunk_size``, ``device``, ``dtype`` and ``options`` are as for
    ``solve("rte1d", ...)``. ``tangents`` maps parameter names (any of
    ``T0_mean, ...``, ``sigma_*``, or the ``T0``/``sigma`` profiles; defaulted
    parameters included) to directions of shape ``[k, cases]`` for scalars and
    ``[k, cases, nx]`` for profiles, the same ``k`` for all; names not listed
    have tangent zero. Returns ``(outputs, output_tangents)``: ``outputs`` as
    ``solve`` gives them (``{"E", "T": [cases, saves, nx]}``) and
    ``output_tangents[name][j]`` the derivative of ``outputs[name]`` along
    direction ``j`` (``[k, cases, saves, nx]``), for the names in
    ``tangent_outputs``. The primal and all ``k`` tangents are stepped together
    by the fast in-place kernels (see ``_integrate_tangents_inplace``), so this
    costs about ``1 + k`` plain solves (4.3x for k = 3 on CPU, BENCHMARKS.md),
    less than half of one ``torch.func.jvp`` through ``solve`` per direction
    plus the plain solve. The results are not differentiable further.

    Example (the sensitivity of the final mean temperature to T0_mean and sigma_mean):
        >>> import torch
        >>> n = 3
        >>> params = {"T0_mean": torch.tensor([0.8, 1.2, 1.6]), "sigma_mean": torch.ones(n)}
        >>> ones, zeros = torch.ones(n), torch.zeros(n)
        >>> out, d = rte1d_jvp(params, {"T0_mean": torch.stack([ones, zeros]),
        ...                             "sigma_mean": torch.stack([zeros, ones])}, nx=32, t_end=0.5)
        >>> d["T"].shape                      # [directions, cases, saves, nx]
        torch.Size([2, 3, 2, 32])
        >>> dTmean_dT0mean = d["T"][0, :, -1].mean(-1)   # one value per case
    """
    resolved = SOLVER.validate_options(options)
    infos = _parameters(resolved)
    batch, n_cases = prepare_params("rte1d", params, infos, device=device, dtype=dtype)
    some = next(iter(batch.values()))
    unknown = [name for name in tangents if name not in batch]
    if unknown:
        raise ValueError(
            f"rte1d_jvp: tangent for {unknown[0]!r}, which is not a parameter of this solve; "
            f"give tangents for parameters among {sorted(batch)}"
        )
    if not tangents:
        raise ValueError("rte1d_jvp: no tangents given; pass at least one {name: Tensor[k, cases, ...]}")
    bad_outputs = sorted(set(tangent_outputs) - {"E", "T"})
    if bad_outputs or not tangent_outputs:
        raise ValueError(
            f"rte1d_jvp: tangent_outputs={tuple(tangent_outputs)!r}; choose a non-empty subset of ('E', 'T')"
        )
    if chunk_size is not None and (not is_int(chunk_size) or chunk_size < 1):
        raise ValueError(f"chunk_size must be a positive integer or None, got {chunk_size!r}")
    directions: dict[str, torch.Tensor] = {}
    k = None
    for name, value in tangents.items():
        t = torch.as_tensor(value).detach().to(device=some.device, dtype=some.dtype)
        expected = (n_cases, *infos[name].shape)
        if t.ndim != len(expected) + 1 or tuple(t.shape[1:]) != expected or (k is not None and t.shape[0] != k):
            want = f"({'k' if k is None else k}, " + ", ".join(map(str, expected)) + ")"
            raise ValueError(
                f"rte1d_jvp: tangent {name!r} has shape {tuple(t.shape)}; expected {want}: "
                "[directions, cases, ...], the same number of directions for every parameter"
            )
        k = t.shape[0]
        directions[name] = t
    if not k:  # no tangents, or 0 directions
        raise ValueError("rte1d_jvp: tangents have 0 directions")

    names = list(directions)
    batch = {name: value.detach() for name, value in batch.items()}

    def profiles(*values):
        return initial_profiles({**batch, **dict(zip(names, values))}, resolved)

    primals = tuple(batch[name] for name in names)
    dT0s, dsigmas = [], []
    for j in range(k):
        (T0, sigma), (dT0, dsigma) = torch.func.jvp(profiles, primals, tuple(directions[n][j] for n in names))[:2]
        dT0s.append(dT0)
        dsigmas.append(dsigma)
    check_stability({"T0": T0, "sigma": sigma}, resolved)
    moves = {p: any(n == p or n.startswith(p + "_") for n in names) for p in _PROFILES}
    dT0 = torch.stack(dT0s) if moves["T0"] else None
    dsigma = torch.stack(dsigmas) if moves["sigma"] else None

    n_saves, nx = len(time_grid(resolved)[3]), resolved["nx"]
    outputs = {name: T0.new_empty((n_cases, n_saves, nx)) for name in ("E", "T")}
    output_tangents = {name: T0.new_empty((k, n_cases, n_saves, nx)) for name in ("E", "T") if name in tangent_outputs}
    chunk = n_cases if chunk_size is None else min(chunk_size, n_cases)
    for start in range(0, n_cases, chunk):
        part = slice(start, min(start + chunk, n_cases))
        _solve_tangents(
            T0[part],
            sigma[part],
            None if dT0 is None else dT0[:, part],
            None if dsigma is None else dsigma[:, part],
            resolved,
            out=(outputs["E"][part], outputs["T"][part]),
            tangent_out=tuple(output_tangents[n][:, part] if n in output_tangents else None for n in ("E", "T")),
        )
    return outputs, output_tangents


def _auto_block(n_cases: int, nx: int, n_angles: int, like: torch.Tensor, states: int = 3) -> int:
    # ``states`` state-sized arrays: two intensity buffers and the precomputed coefficient
    # (plus two tangent buffers per direction with tangents)
    per_case = states * n_angles * (nx + 2) * like.element_size()
    if like.device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(like.device)
        return max(1, min(n_cases, int(0.5 * free) // per_case))
    if like.device.type == "cpu":
        return max(1, min(n_cases, _CPU_BLOCK_BYTES // per_case))
    return n_cases


class _Coefficients:
    """Everything constant over the time loop, computed once per block."""

    def __init__(self, sigma: torch.Tensor, options: dict[str, Any]):
        dx, dt, n_steps, _ = time_grid(options)
        mu_np, w_np = gauss_legendre(options["n_angles"])
        mu = torch.from_numpy(mu_np).to(dtype=sigma.dtype, device=sigma.device)
        self.w = torch.from_numpy(w_np).to(dtype=sigma.dtype, device=sigma.device)
        self.half = options["n_angles"] // 2
        self.n_steps = n_steps
        self.save_every = options["save_every"]
        self.ac = options["a"] * options["c"]
        self.half_ac = 0.5 * options["a"] * options["c"]
        nu = (dt / dx) * mu  # signed Courant numbers per angle, as the seed computes them
        self.nu = nu.view(1, -1, 1)
        self.dts = (dt * sigma)[:, None, :]  # [B, 1, nx]
        self.k_T = (dt / (options["rho"] * options["cv"])) * sigma  # [B, nx]


def _integrate_inplace(T0, sigma, E_out, T_out, options) -> None:
    """Eager path: 11 kernels per step, no allocation or indexing inside the loop.

    Per angle ``k`` the seed's update is rewritten as one multiply-add chain
    ``I_new = S + |nu_k| I_upwind + (1 - |nu_k| - dt sigma) I`` with the
    emission ``S = dt sigma a c T^4 / 2`` shared by all angles. The intensity is
    stored angle-major ``[angle, case, nx + 2]`` (one ghost cell each side), so
    each half of the angles is one contiguous block and ``E = w @ I`` is a
    single matrix-vector product.
    """
    co = _Coefficients(sigma, options)
    H, A = co.half, 2 * co.half
    n_cases, nx = T0.shape
    nu_abs = co.nu.abs().view(A, 1, 1)
    nu_right, nu_left = nu_abs[H:], nu_abs[:H]  # mu > 0 reads x-1, mu < 0 reads x+1
    dts = co.dts.view(1, n_cases, nx)
    self_coef = (1 - nu_abs) - dts  # [A, B, nx]
    source_coef = co.half_ac * dts  # [1, B, nx]

    buffers = [T0.new_empty((A, n_cases, nx + 2)) for _ in range(2)]
    views = [_StateViews(b, H) for b in buffers]
    views[0].interior.copy_((co.half_ac * T0**4).expand(A, n_cases, nx))
    views[0].fill_ghosts()
    T = T0.clone()
    E_full = T0.new_empty((n_cases, nx + 2))
    E_flat, E = E_full.view(-1), E_full[:, 1:-1]
    torch.mv(views[0].flat.t(), co.w, out=E_flat)
    T4 = torch.empty_like(T)
    T4_angles = T4.view(1, n_cases, nx)
    S = torch.empty_like(source_coef)
    gap = torch.empty_like(T)

    saved = 0
    for step in range(co.n_steps):
        cur, nxt = views[step % 2], views[(step + 1) % 2]
        torch.mul(T, T, out=T4)  # T**4 as two squarings: pow(T, 4) is a slow libm call on CPU
        T4.mul_(T4)
        torch.mul(source_coef, T4_angles, out=S)
        torch.addcmul(S, cur.right_upwind, nu_right, out=nxt.right_interior)
        torch.addcmul(S, cur.left_upwind, nu_left, out=nxt.left_interior)
        nxt.interior.addcmul_(cur.interior, self_coef)
        nxt.fill_ghosts()
        # material update with the old E and T (explicit, as the seed)
        torch.sub(E, T4, alpha=co.ac, out=gap)
        T.addcmul_(co.k_T, gap)
        torch.mv(nxt.flat.t(), co.w, out=E_flat)
        if step % co.save_every == 0:
            E_out[:, saved].copy_(E)
            T_out[:, saved].copy_(T)
            saved += 1


class _StateViews:
    """Fixed views into one ``[angle, ..., nx + 2]`` intensity buffer (made once, not per step).

    The middle axes are the cases (``[angle, case, nx + 2]``) or the tangent
    directions and cases (``[angle, direction, case, nx + 2]``).
    """

    def __init__(self, I: torch.Tensor, half: int):
        self.flat = I.view(I.shape[0], -1)
        self.interior = I[..., 1:-1]
        self.right_interior, self.right_upwind = I[half:, ..., 1:-1], I[half:, ..., :-2]  # mu > 0
        self.left_interior, self.left_upwind = I[:half, ..., 1:-1], I[:half, ..., 2:]  # mu < 0
        # periodic ghosts: mu > 0 reads the left ghost (= last cell), mu < 0 the right ghost (= first cell)
        self._ghost_pairs = ((I[half:, ..., 0], I[half:, ..., -2]), (I[:half, ..., -1], I[:half, ..., 1]))

    def fill_ghosts(self) -> None:
        for ghost, cell in self._ghost_pairs:
            ghost.copy_(cell)


def _integrate_tangents_inplace(T0, sigma, dT0, dsigma, E_out, T_out, dE_out, dT_out, options) -> None:
    """The primal and ``k`` tangent directions stepped together (forward sensitivities).

    Differentiating the fast step of ``_integrate_inplace`` along a direction
    ``(dT0, dsigma)``, with ``T4 = T^4`` and ``dT4 = 4 T^3 dT``::

        dI_new = dS + |nu_k| dI_upwind + (1 - |nu_k| - dt sigma) dI  - dt dsigma I
        dS     = dt sigma a c dT4 / 2                                 + dt dsigma a c T4 / 2
        dT_new = dT + dt sigma (dE - a c dT4) / (rho cv)              + dt dsigma (E - a c T4) / (rho cv)
        dE_new = w @ dI_new,        dI_0 = a c dT4_0 / 2

    Left of the ``dsigma`` terms this is the primal step with ``(I, T4, E, T)``
    replaced by ``(dI, dT4, dE, dT)`` and the same coefficients. So the primal
    and the tangents share one state, ``[angle, 1 + k, case, nx + 2]`` for the
    intensity and ``[1 + k, case, nx]`` for ``T4``/``E``/``T`` (slot 0 the
    primal, slot ``1 + j`` direction ``j``): every kernel of the primal step
    advances all of them at once, and only the ``dsigma`` terms (on the
    contiguous range of directions whose ``dsigma`` is not zero) and
    ``dT4 = 4 T^3 dT`` are extra. ``dT0``, ``dsigma``: ``[k, cases, nx]`` or
    ``None`` (zero); ``dE_out``, ``dT_out``: ``[k, cases, saves, nx]``, or
    ``None`` to skip storing one.
    """
    co = _Coefficients(sigma, options)
    H, A = co.half, 2 * co.half
    n_cases, nx = T0.shape
    k = (dT0 if dT0 is not None else dsigma).shape[0]
    dt = time_grid(options)[1]
    heat = dt / (options["rho"] * options["cv"])
    nu_abs = co.nu.abs().view(A, 1, 1, 1)
    nu_right, nu_left = nu_abs[H:], nu_abs[:H]  # mu > 0 reads x-1, mu < 0 reads x+1
    dts = co.dts.view(1, 1, n_cases, nx)
    self_coef = (1 - nu_abs) - dts  # [A, 1, B, nx]
    source_coef = (co.half_ac * dts).view(1, n_cases, nx)

    buffers = [T0.new_empty((A, 1 + k, n_cases, nx + 2)) for _ in range(2)]
    views = [_StateViews(b, H) for b in buffers]
    T = T0.new_empty((1 + k, n_cases, nx))  # T and the dT
    T[0] = T0
    T4 = torch.empty_like(T)  # T^4 and the dT4 = 4 T^3 dT
    T4[0] = T0**4
    if dT0 is None:
        T[1:] = 0
        T4[1:] = 0
    else:
        T[1:] = dT0
        torch.mul(dT0, 4 * T0**3, out=T4[1:])
    views[0].interior.copy_((co.half_ac * T4)[None].expand(A, 1 + k, n_cases, nx))
    views[0].fill_ghosts()
    E_full = T0.new_empty((1 + k, n_cases, nx + 2))  # E and the dE
    E_flat, E = E_full.view(-1), E_full[..., 1:-1]
    torch.mv(views[0].flat.t(), co.w, out=E_flat)

    lo = hi = 0  # directions lo:hi carry a dsigma
    if dsigma is not None:
        nonzero = dsigma.reshape(k, -1).ne(0).any(1).nonzero().flatten().tolist()
        if nonzero:
            lo, hi = nonzero[0], nonzero[-1] + 1
            ds = dsigma[lo:hi]
            source_sigma = (co.half_ac * dt) * ds  # [k', B, nx]
            absorb_sigma = (-dt * ds)[None]  # [1, k', B, nx]
            heat_sigma = heat * ds
            I_old = [v.interior[:, :1] for v in views]  # the primal intensity, [A, 1, B, nx]
            dI_sigma = [v.interior[:, 1 + lo : 1 + hi] for v in views]
            dT_sigma = T[1 + lo : 1 + hi]

    primal_T, primal_T4, T2, T3x4 = T[0], T4[0], torch.empty_like(T0), torch.empty_like(T0)
    tangent_T, tangent_T4 = T[1:], T4[1:]
    S = torch.empty_like(T)
    S_angles = S.view(1, 1 + k, n_cases, nx)
    S_sigma = S[1 + lo : 1 + hi]
    gap = torch.empty_like(T)
    primal_gap = gap[0]

    saved = 0
    for step in range(co.n_steps):
        cur, nxt = views[step % 2], views[(step + 1) % 2]
        torch.mul(primal_T, primal_T, out=T2)
        torch.mul(T2, primal_T, out=T3x4)
        T3x4.mul_(4)
        torch.mul(T2, T2, out=primal_T4)
        torch.mul(tangent_T, T3x4, out=tangent_T4)
        torch.mul(source_coef, T4, out=S)
        if hi > lo:
            S_sigma.addcmul_(source_sigma, primal_T4)
        torch.addcmul(S_angles, cur.right_upwind, nu_right, out=nxt.right_interior)
        torch.addcmul(S_angles, cur.left_upwind, nu_left, out=nxt.left_interior)
        nxt.interior.addcmul_(cur.interior, self_coef)
        if hi > lo:
            dI_sigma[(step + 1) % 2].addcmul_(I_old[step % 2], absorb_sigma)
        nxt.fill_ghosts()
        # material update with the old E and T (explicit, as the seed)
        torch.sub(E, T4, alpha=co.ac, out=gap)
        if hi > lo:
            dT_sigma.addcmul_(heat_sigma, primal_gap)
        T.addcmul_(co.k_T, gap)
        torch.mv(nxt.flat.t(), co.w, out=E_flat)
        if step % co.save_every == 0:
            E_out[:, saved].copy_(E[0])
            T_out[:, saved].copy_(primal_T)
            if dE_out is not None:
                dE_out[:, :, saved].copy_(E[1:])
            if dT_out is not None:
                dT_out[:, :, saved].copy_(tangent_T)
            saved += 1


def _solve_tangents(T0, sigma, dT0, dsigma, options, want=("E", "T"), out=None, tangent_out=None):
    """``(E, T, dE, dT)`` for ``[cases, nx]`` profiles and ``[k, cases, nx]`` tangents (``None`` = zero).

    Runs in cache-sized blocks of cases on CPU (like the plain solve); the
    tangents of outputs not in ``want`` are ``None``. ``out``: ``(E, T)`` to
    fill, ``tangent_out``: ``(dE, dT)`` to fill (``None`` entries per ``want``).
    """
    n_cases, nx = T0.shape
    k = (dT0 if dT0 is not None else dsigma).shape[0]
    n_saves = len(time_grid(options)[3])
    if out is None:
        out = (T0.new_empty((n_cases, n_saves, nx)), T0.new_empty((n_cases, n_saves, nx)))
    if tangent_out is None:
        tangent_out = tuple(T0.new_empty((k, n_cases, n_saves, nx)) if name in want else None for name in ("E", "T"))
    E_out, T_out = out
    dE_out, dT_out = tangent_out
    block = options["block_cases"] or _auto_block(n_cases, nx, options["n_angles"], T0, states=3 + 2 * k)
    with torch.no_grad():
        for start in range(0, n_cases, block):
            part = slice(start, min(start + block, n_cases))
            _integrate_tangents_inplace(
                T0[part],
                sigma[part],
                None if dT0 is None else dT0[:, part],
                None if dsigma is None else dsigma[:, part],
                E_out[part],
                T_out[part],
                None if dE_out is None else dE_out[:, part],
                None if dT_out is None else dT_out[:, part],
                options,
            )
    return E_out, T_out, dE_out, dT_out


def _step(I, T, E, nu, dts, k_T, w, half_ac: float, ac: float, half: int):
    """One step of the seed's scheme, written functionally so ``torch.compile`` can fuse it."""
    T4 = T**4
    emission = half_ac * T4[:, None, :]
    neg, pos = I[:, :half], I[:, half:]
    pos_new = pos - nu[:, half:] * (pos - pos.roll(1, -1)) + dts * (emission - pos)
    neg_new = neg - nu[:, :half] * (neg.roll(-1, -1) - neg) + dts * (emission - neg)
    I_new = torch.cat([neg_new, pos_new], dim=1)
    T_new = T + k_T * (E - ac * T4)
    E_new = (w[:, None] * I_new).sum(dim=1)
    return I_new, T_new, E_new


_COMPILED: dict[str, Any] = {}


def _compiled_step():
    """``_step`` compiled by ``torch.compile`` (once per process; recompiles per shape/dtype as needed)."""
    if "step" not in _COMPILED:
        _COMPILED["step"] = torch.compile(_step, dynamic=None)
    return _COMPILED["step"]


def _integrate_functional(T0, sigma, options, step) -> tuple[torch.Tensor, torch.Tensor]:
    """Out-of-place time loop (differentiable; fused by ``torch.compile`` when ``step`` is compiled)."""
    co = _Coefficients(sigma, options)
    I = (co.half_ac * T0**4)[:, None, :].expand(-1, 2 * co.half, -1)
    T = T0
    E = torch.matmul(co.w, I)
    saved_E, saved_T = [], []
    for n in range(co.n_steps):
        I, T, E = step(I, T, E, co.nu, co.dts, co.k_T, co.w, co.half_ac, co.ac, co.half)
        if n % co.save_every == 0:
            saved_E.append(E)
            saved_T.append(T)
    return torch.stack(saved_E, dim=1), torch.stack(saved_T, dim=1)


SOLVER = Solver(
    name="rte1d",
    fn=solve_rte1d,
    default_options=DEFAULT_OPTIONS,
    batched=True,
    parameters_fn=_parameters,
    outputs_fn=_outputs,
    coords_fn=_coords,
    check_options=_check_options,
    description="1-D gray radiative transfer + material temperature, periodic, upwind (seed 004)",
    jvp_fn=rte1d_jvp,
    check_cases=check_stability,
    performance_options=("compile", "block_cases", "stability_check"),
)
