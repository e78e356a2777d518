"""A straightforward re-implementation of seed 004's 1-D gray RTE solver.

This is the independent reference the tests (and ``bench/sweeps.py``) compare
``pipeline.solvers.rte1d`` against, so it deliberately keeps the seed's
structure line by line: ghost cells made with ``F.pad(mode="circular")``,
``clone()`` of the whole state every step, ``repeat`` of the emission term, and
``torch.func.vmap`` over cases. The only changes from the seed are that the
constants are arguments (defaults = the seed's), the dtype is explicit (the
seed used the default dtype, float32) and the quadrature follows the inputs'
device (the seed ran on the CPU).

Example:
    >>> x = seed_grid(400)
    >>> T0, sigma = seed_cases(x)
    >>> E, T = reference_solve_batch(T0, sigma)
    >>> E.shape
    torch.Size([4, 50, 400])
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch.func import vmap


def get_gauss_point(n: int, dtype: torch.dtype):
    x, w = np.polynomial.legendre.leggauss(n)
    return torch.from_numpy(x).to(dtype=dtype), torch.from_numpy(w).to(dtype=dtype)


def seed_grid(nx: int = 400, L: float = 1.0, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Cell centres as the seed builds them (``arange(0.5*dx, L+0.5*dx, dx)``)."""
    dx = L / nx
    x = torch.arange(0.5 * dx, L + 0.5 * dx, dx, dtype=dtype)
    # arange with a float step can overshoot by one element; the seed's N=400 does not.
    return x[:nx]


def seed_cases(x: torch.Tensor, cases=(1, 2, 3, 4)):
    """The seed's four initial temperatures and opacities, for cases ``c = 1, 2, 3, 4``."""
    cas = torch.tensor(cases, dtype=x.dtype)
    Tini = vmap(lambda c: (1 + 0.1 * torch.sin(2 * math.pi * x + torch.sin(c))) * (1 + torch.sin(c)))(cas)
    sigma = vmap(lambda c: (1 + 0.1 * torch.sin(2 * math.pi * x + torch.sin(c + 1))) * (1 + torch.sin(c)))(cas)
    return Tini, sigma


def reference_solve(
    Tini,
    sigma,
    *,
    a=1.0,
    c=1.0,
    cv=1.0,
    L=1.0,
    CFL=0.8,
    Nvx=8,
    t=1.0,
    save_every=10,
):
    """The seed's ``solve(Tini, sigma)`` for one case; returns ``(E, T)`` of shape ``[saves, nx]``."""
    N = Tini.shape[-1]
    dx = L / N
    dt = CFL * dx  # time step

    mu, wmu = (t.to(Tini.device) for t in get_gauss_point(Nvx, Tini.dtype))

    # distribution function
    T = Tini
    I = 0.5 * a * c * Tini**4
    I = I.repeat(Nvx, 1)
    I = F.pad(I[None, ...], (1, 1), mode="circular")[0]
    I0 = wmu @ I  # energy
    sigma = sigma.repeat(Nvx // 2, 1)

    Nt = int(t / dt)
    list_T = []
    list_E = []
    for loop in range(Nt):
        I_out = I.clone()
        T_out = T.clone()
        I0_out = I0.clone()

        index = slice(1, -1)
        index_add1 = slice(2, None)
        index_sub1 = slice(None, -2)

        # streaming, positive vx
        lv = slice(Nvx // 2, None)
        coe = mu[lv]
        I[lv, index] = (
            I_out[lv, index]
            - dt / dx * coe[..., None] * (I_out[lv, index] - I_out[lv, index_sub1])
            + dt * sigma * ((0.5 * a * c * T_out**4).repeat(Nvx // 2, 1) - I_out[lv, index])
        )

        # streaming, negative vx
        lv = slice(0, Nvx // 2)
        coe = mu[lv]
        I[lv, index] = (
            I_out[lv, index]
            - dt / dx * coe[..., None] * (I_out[lv, index_add1] - I_out[lv, index])
            + dt * sigma * ((0.5 * a * c * T_out**4).repeat(Nvx // 2, 1) - I_out[lv, index])
        )

        I = F.pad(I[None, ..., 1:-1], (1, 1), mode="circular")[0]
        T = T_out + dt / cv * sigma[0, :] * (I0_out[index] - a * c * T_out**4)
        I0 = wmu @ I

        if loop % save_every == 0:
            list_E.append(I0[..., 1:-1].clone())
            list_T.append(T.clone())
    return torch.stack(list_E, dim=0), torch.stack(list_T, dim=0)


def reference_solve_batch(Tini, sigma, **options):
    """``vmap(solve)`` over the leading case axis, as in the seed."""
    return vmap(lambda T0, s: reference_solve(T0, s, **options))(Tini, sigma)
