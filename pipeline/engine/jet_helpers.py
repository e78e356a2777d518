"""Helpers the Taylor rules share: per-sample dims as coefficient axes, constants as jets, jet arithmetic.

A jet's coefficients are ``[M, B, *s]``: :data:`JET_LEADING_AXES` (the
coefficient axis and the sample axis) in front of the per-sample shape ``s``
that the traced op sees. A rule receives per-sample dims and moves them past
those two axes (:func:`coefficient_axis`). Operands that are not jets are
constants (the same for every sample): :func:`as_jets` promotes them.

The arithmetic (:func:`add`, :func:`scale`, :func:`mul`, :func:`sum_over`,
:func:`mean_over`) takes jets or constants; it is the ``add`` / ``mul`` /
``sum`` / ``mean`` rules themselves and what the composite rules build on.

Example:
    >>> coefficient_axis(-1, 3)  # the last per-sample dim of a [M, B, a, b, c] coefficient tensor
    4
"""

from __future__ import annotations

import torch

from . import jets
from .jets import Jet

JET_LEADING_AXES = 2  # the coefficient axis and the sample axis in front of every per-sample shape


def is_jet(value) -> bool:
    """Whether ``value`` is a jet (input-dependent) rather than a constant."""
    return isinstance(value, Jet)


def coefficient_axis(dim: int, ndim: int) -> int:
    """A per-sample dim (possibly negative) of an ``ndim``-d sample as an axis of the coefficient tensor."""
    if ndim == 0:
        if dim not in (0, -1):
            raise IndexError(f"dim {dim} out of range for a 0-d sample")
        return JET_LEADING_AXES
    return dim % ndim + JET_LEADING_AXES


def coefficient_axes(dims, ndim: int) -> list[int]:
    """Per-sample dims (one, several, or ``None`` / ``[]`` for all) as coefficient-tensor axes."""
    if dims is None or (isinstance(dims, (list, tuple)) and len(dims) == 0):
        return list(range(JET_LEADING_AXES, JET_LEADING_AXES + ndim))
    if isinstance(dims, int):
        dims = [dims]
    return [coefficient_axis(d, ndim) for d in dims]


def with_coeffs(jet: Jet, coeffs: torch.Tensor) -> Jet:
    """A jet of the same depth and index set as ``jet`` with new coefficients."""
    return Jet(coeffs, jet.top, jet.index_set)


def constant_jet(value, like: Jet, top: int | None = None) -> Jet:
    """A batch-independent tensor as a jet (derivatives zero), ``top`` coefficients deep."""
    top = 0 if top is None else top
    value = torch.as_tensor(
        value, dtype=like.coeffs.dtype if not torch.is_tensor(value) else None, device=like.coeffs.device
    )
    batch = like.coeffs.shape[1]
    coeffs = value.new_zeros((like.index_set.count(top), batch) + tuple(value.shape))
    coeffs[0] = value
    return Jet(coeffs, top, like.index_set)


def as_jets(values, top: int | None = None) -> list[Jet]:
    """Promote a mix of jets and constants to jets of one common depth."""
    like = next(v for v in values if is_jet(v))
    top = max(v.top for v in values if is_jet(v)) if top is None else top
    out = []
    for v in values:
        jet = v if is_jet(v) else constant_jet(v, like)
        out.append(Jet(jets.pad(jet, top), top, jet.index_set) if jet.top != top else jet)
    return out


def batched_values(args, ndim: int) -> list:
    """Jets replaced by their batched values ``[B, 1.., *s]`` aligned to ``ndim`` sample dims."""
    out: list = []
    for a in args:
        if is_jet(a):
            v = a.coeffs[0]
            missing = ndim - a.ndim
            out.append(v.reshape(v.shape[:1] + (1,) * missing + v.shape[1:]) if missing > 0 else v)
        elif isinstance(a, (list, tuple)):
            out.append(type(a)(batched_values(a, ndim)))
        else:
            out.append(a)
    return out


def sample_ndim(args) -> int:
    """The largest per-sample ndim among jets and tensors in ``args``."""
    n = 0
    for a in args:
        if is_jet(a):
            n = max(n, a.ndim)
        elif torch.is_tensor(a):
            n = max(n, a.ndim)
    return n


# ---------------------------------------------------------------- jet arithmetic (jets or constants)


def add_constant(x: Jet, c, alpha=1.0) -> Jet:
    """``x + alpha * c`` for a constant ``c``: only the degree-0 coefficient moves."""
    if alpha != 1:
        c = c * alpha
    cx = x.coeffs
    if torch.is_tensor(c) and c.ndim > x.ndim:
        cx = jets.align(x, c.ndim)
    shape = torch.broadcast_shapes(cx.shape[1:], (1,) + tuple(c.shape)) if torch.is_tensor(c) else cx.shape[1:]
    out = torch.empty((cx.shape[0],) + tuple(shape), dtype=torch.result_type(cx, c), device=cx.device)
    torch.add(cx[0], c, out=out[0])
    out[1:] = cx[1:]
    return Jet(out, x.top, x.index_set)


def add(a, b, alpha=1):
    """``a + alpha * b`` for jets or constants (at least one a jet)."""
    if is_jet(a) and is_jet(b):
        return jets.add(a, b, alpha)
    if is_jet(a):
        return add_constant(a, b, alpha)
    return add_constant(scale(b, alpha) if alpha != 1 else b, a)


def scale(x: Jet, c) -> Jet:
    """``x * c`` for a constant (tensor or number): every coefficient scales."""
    if torch.is_tensor(c) and c.ndim > x.ndim:
        return with_coeffs(x, jets.align(x, c.ndim) * c)
    return with_coeffs(x, x.coeffs * c)


def mul(a, b):
    """``a * b`` for jets or constants: the truncated product of two jets, else a scaling."""
    if is_jet(a) and is_jet(b):
        if a is b:
            return jets.square(a)
        return jets.bilinear(a, b, torch.mul)
    return scale(a, b) if is_jet(a) else scale(b, a)


def sum_over(x, dim=None, keepdim=False, dtype=None):
    """``x.sum(dim)`` over per-sample dims (all of them for ``None``)."""
    c = x.coeffs
    dims = coefficient_axes(dim, x.ndim)
    out = c.sum(dim=dims, keepdim=keepdim) if dims else c
    return with_coeffs(x, out if dtype is None else out.to(dtype))


def mean_over(x, dim=None, keepdim=False, dtype=None):
    """``x.mean(dim)`` over per-sample dims (all of them for ``None``)."""
    c = x.coeffs
    dims = coefficient_axes(dim, x.ndim)
    out = c.mean(dim=dims, keepdim=keepdim) if dims else c
    return with_coeffs(x, out if dtype is None else out.to(dtype))
