"""Derivatives ``phi(u), phi'(u), ..., phi^(K)(u)`` of elementwise functions, in closed form.

The Taylor engine composes these with the jet of the argument (``jets.compose``).
Each function returns a list of ``order + 1`` tensors shaped like ``u``; a
shorter list means the remaining derivatives are zero.

Example:
    >>> [float(t) for t in derivative_sequence("exp", torch.tensor(0.0), 3)]
    [1.0, 1.0, 1.0, 1.0]
"""

from __future__ import annotations

import math
from functools import cache

import torch

Sequence = list[torch.Tensor]


@cache
def _polynomial_derivatives(kind: str, order: int) -> tuple[tuple[float, ...], ...]:
    """Coefficients (lowest power first) of ``P_j`` with ``phi^(j) = P_j(phi)``.

    tanh' = 1 - tanh^2 and sigmoid' = s - s^2, so every derivative is a
    polynomial in the function value: ``P_{j+1} = P_j' * P_1``.
    """
    first = {"tanh": (1.0, 0.0, -1.0), "sigmoid": (0.0, 1.0, -1.0)}[kind]
    polys: list[tuple[float, ...]] = [(0.0, 1.0)]
    for _ in range(order):
        p = polys[-1]
        dp = [k * p[k] for k in range(1, len(p))] or [0.0]
        prod = [0.0] * (len(dp) + len(first) - 1)
        for i, a in enumerate(dp):
            for j, b in enumerate(first):
                prod[i + j] += a * b
        polys.append(tuple(prod))
    return tuple(polys)


def _horner(coeffs: tuple[float, ...], t: torch.Tensor, t_squared: torch.Tensor) -> torch.Tensor:
    """Evaluate a polynomial in place; tanh/sigmoid derivative polynomials are often pure even or
    odd in t (tanh), so those go through t^2 with half the multiply-adds."""
    while len(coeffs) > 1 and coeffs[-1] == 0:
        coeffs = coeffs[:-1]
    even = all(c == 0 for c in coeffs[1::2])
    odd = all(c == 0 for c in coeffs[0::2])
    if (even or odd) and len(coeffs) > 2:
        half = coeffs[1::2] if odd else coeffs[0::2]
        out = _horner(tuple(half), t_squared, t_squared)
        return out.mul_(t) if odd else out
    if len(coeffs) == 1:
        return torch.full_like(t, coeffs[0])
    out = t * coeffs[-1]
    if coeffs[-2] != 0:
        out.add_(coeffs[-2])
    for c in reversed(coeffs[:-2]):
        out.mul_(t)
        if c != 0:
            out.add_(c)
    return out


def _from_value(kind: str, value: torch.Tensor, order: int) -> Sequence:
    if order == 0:
        return [value]
    polys = _polynomial_derivatives(kind, order)
    squared = value * value
    return [value] + [_horner(polys[j], value, squared) for j in range(1, order + 1)]


def tanh(u, order):
    return _from_value("tanh", torch.tanh(u), order)


def sigmoid(u, order):
    return _from_value("sigmoid", torch.sigmoid(u), order)


def _cycle(values: list[torch.Tensor], order: int) -> Sequence:
    return [values[j % len(values)] for j in range(order + 1)]


def sin(u, order):
    s, c = torch.sin(u), torch.cos(u)
    return _cycle([s, c, -s, -c], order)


def cos(u, order):
    s, c = torch.sin(u), torch.cos(u)
    return _cycle([c, -s, -c, s], order)


def sinh(u, order):
    return _cycle([torch.sinh(u), torch.cosh(u)], order)


def cosh(u, order):
    return _cycle([torch.cosh(u), torch.sinh(u)], order)


def exp(u, order):
    e = torch.exp(u)
    return [e] * (order + 1)


def expm1(u, order):
    e = torch.exp(u)
    return [torch.expm1(u)] + [e] * order


def _log_tail(v: torch.Tensor, order: int) -> Sequence:
    # d^j/dv^j log v = (-1)^(j-1) (j-1)! / v^j
    inv = torch.reciprocal(v)
    out, power = [], inv
    for j in range(1, order + 1):
        out.append(((-1) ** (j - 1)) * math.factorial(j - 1) * power)
        power = power * inv
    return out


def log(u, order):
    return [torch.log(u)] + _log_tail(u, order)


def log1p(u, order):
    return [torch.log1p(u)] + _log_tail(1 + u, order)


def power(u, exponent, order):
    """``u ** p`` for a scalar or tensor exponent ``p``: falling factorials times ``u^(p-j)``.

    For a non-negative integer ``p`` the sequence stops after ``p`` (exact zeros,
    also at ``u = 0``, where ``u^(p-j)`` would be infinite).
    """
    if isinstance(exponent, (int, float)) and float(exponent).is_integer() and exponent >= 0:
        order = min(order, int(exponent))
        out, falling = [], 1.0
        for j in range(order + 1):
            out.append(falling * torch.pow(u, exponent - j))
            falling *= exponent - j
        return out
    out, falling = [], torch.ones_like(u) if isinstance(exponent, torch.Tensor) else 1.0
    for j in range(order + 1):
        out.append(falling * torch.pow(u, exponent - j))
        falling = falling * (exponent - j)
    return out


def reciprocal(u, order):
    return power(u, -1.0, order)


def sqrt(u, order):
    return power(u, 0.5, order)


def rsqrt(u, order):
    return power(u, -0.5, order)


def _hermite_gaussian(u: torch.Tensor, order: int) -> Sequence:
    """``d^n/du^n exp(-u^2/2) = (-1)^n He_n(u) exp(-u^2/2)`` for n = 0..order."""
    g = torch.exp(-0.5 * u * u)
    he_prev, he = torch.zeros_like(u), torch.ones_like(u)
    out = []
    for n in range(order + 1):
        out.append(((-1) ** n) * he * g)
        he_prev, he = he, u * he - n * he_prev
    return out


def erf(u, order):
    # erf'(u) = 2/sqrt(pi) exp(-u^2); d^n exp(-u^2) = sqrt(2)^n * (d^n exp(-w^2/2))(w = sqrt(2) u)
    out = [torch.erf(u)]
    if order >= 1:
        root2 = math.sqrt(2.0)
        gauss = _hermite_gaussian(u * root2, order - 1)
        out += [2 / math.sqrt(math.pi) * root2**n * g for n, g in enumerate(gauss)]
    return out


def gelu(u, order):
    """Exact (erf) GELU ``u * Phi(u)``: ``gelu^(j) = u Phi^(j) + j Phi^(j-1)``."""
    cdf = 0.5 * (1 + torch.erf(u / math.sqrt(2.0)))
    pdf_derivs = [g / math.sqrt(2 * math.pi) for g in _hermite_gaussian(u, max(order - 1, 0))]
    phi = [cdf] + pdf_derivs  # Phi^(m) for m = 0..order
    out = [u * cdf]
    for j in range(1, order + 1):
        out.append(u * phi[j] + j * phi[j - 1])
    return out


def silu(u, order):
    """``u * sigmoid(u)``: ``silu^(j) = u s^(j) + j s^(j-1)``."""
    s = sigmoid(u, order)
    return [u * s[0]] + [u * s[j] + j * s[j - 1] for j in range(1, order + 1)]


def softplus(u, order, beta=1.0, threshold=20.0):
    """``log(1 + exp(beta u)) / beta``, linear where ``beta u > threshold`` (as torch does)."""
    bu = u * beta
    s = sigmoid(bu, max(order - 1, 0))
    linear = bu > threshold
    out = [torch.where(linear, u, torch.nn.functional.softplus(u, beta, threshold))]
    for j in range(1, order + 1):
        d = s[j - 1] * beta ** (j - 1)
        out.append(torch.where(linear, torch.ones_like(u) if j == 1 else torch.zeros_like(u), d))
    return out


SEQUENCES = {
    "tanh": tanh,
    "sigmoid": sigmoid,
    "sin": sin,
    "cos": cos,
    "sinh": sinh,
    "cosh": cosh,
    "exp": exp,
    "expm1": expm1,
    "log": log,
    "log1p": log1p,
    "reciprocal": reciprocal,
    "sqrt": sqrt,
    "rsqrt": rsqrt,
    "erf": erf,
    "gelu": gelu,
    "silu": silu,
}


def derivative_sequence(name: str, u: torch.Tensor, order: int) -> Sequence:
    """``[phi(u), ..., phi^(order)(u)]`` for a function named in ``SEQUENCES``."""
    return SEQUENCES[name](u, order)
