"""Taylor rules for arithmetic, matrix products and reductions.

Adding a constant moves only the degree-0 row; scaling, matrix products with
a constant and reductions act on all coefficients at once; a product of two
jets is the truncated polynomial product (``jets.bilinear``).
"""

from __future__ import annotations

import math

import torch

from . import jets, univariate
from .jet_helpers import (
    JET_LEADING_AXES,
    add,
    coefficient_axes,
    coefficient_axis,
    is_jet,
    mean_over,
    mul,
    scale,
    sum_over,
    with_coeffs,
)
from .jets import Jet
from .rule_table import RULES, NotCovered, rule

# ---------------------------------------------------------------- linear arithmetic

# add / mul / sum / mean are the jet arithmetic of jet_helpers (the composite rules build on it too)
rule("add")(add)
rule("mul")(mul)


@rule("sub")
def _sub(a, b, alpha=1):
    return add(a, b, -alpha)


@rule("rsub")
def _rsub(a, b, alpha=1):
    return add(b, a, -alpha)


@rule("neg")
def _neg(x):
    return with_coeffs(x, -x.coeffs)


@rule("div")
def _div(a, b, rounding_mode=None):
    if rounding_mode is not None:
        raise NotCovered(f"div with rounding_mode={rounding_mode!r}")
    if not is_jet(b):
        return scale(a, torch.reciprocal(b) if torch.is_tensor(b) else 1.0 / b)
    inv = jets.compose(b, univariate.reciprocal(b.coeffs[0], b.index_set.order))
    return mul(a, inv)


RULES["true_divide"] = _div


# ---------------------------------------------------------------- matrix products


def _matmul_op(a, b):
    return torch.matmul(a, b)


def _matvec_op(a, b):
    return torch.matmul(a, b.unsqueeze(-1)).squeeze(-1)


def _product(a, b, op):
    """``op(a, b)`` for a bilinear op with either or both operands jets."""
    if is_jet(a) and is_jet(b):
        return jets.bilinear(a, b, op)
    if is_jet(a):
        return with_coeffs(a, op(a.coeffs, b))
    return with_coeffs(b, op(a, b.coeffs))


@rule("mm", "bmm")
def _mm(a, b):
    return _product(a, b, _matmul_op)


@rule("mv")
def _mv(a, b):
    if is_jet(a) and not is_jet(b):
        return with_coeffs(a, torch.matmul(a.coeffs, b))
    if is_jet(b) and not is_jet(a):
        return with_coeffs(b, torch.matmul(b.coeffs, a.transpose(0, 1)))
    return _product(a, b, _matvec_op)


@rule("dot", "vdot")
def _dot(a, b):
    return sum_over(mul(a, b))


def _affine(bias, product, beta=1, alpha=1):
    if alpha != 1:
        product = scale(product, alpha)
    if not is_jet(bias) and beta == 0:
        return product
    if not is_jet(bias) and product.coeffs.shape[1:] == torch.broadcast_shapes(product.coeffs.shape[1:], bias.shape):
        # the product is a fresh tensor nobody else holds: add the bias to its value row in place
        product.coeffs[0].add_(bias, alpha=beta)
        return product
    return add(product, bias, beta)


@rule("addmm", "baddbmm")
def _addmm(bias, a, b, beta=1, alpha=1):
    return _affine(bias, _mm(a, b), beta, alpha)


@rule("addmv")
def _addmv(bias, a, b, beta=1, alpha=1):
    return _affine(bias, _mv(a, b), beta, alpha)


# ---------------------------------------------------------------- reductions


rule("sum")(sum_over)
rule("mean")(mean_over)


@rule("cumsum")
def _cumsum(x, dim, dtype=None):
    return with_coeffs(x, x.coeffs.cumsum(coefficient_axis(dim, x.ndim), dtype=dtype))


def _count(x: Jet, dims: list[int]) -> int:
    return math.prod(x.coeffs.shape[d] for d in dims)


@rule("var")
def _var(x, dim=None, *, correction=None, keepdim=False, unbiased=None):
    if correction is None:
        correction = 1 if unbiased is None or unbiased else 0
    dims = coefficient_axes(dim, x.ndim)
    centred = _sub(x, mean_over(x, [d - JET_LEADING_AXES for d in dims], keepdim=True))
    total = sum_over(jets.square(centred), [d - JET_LEADING_AXES for d in dims], keepdim=keepdim)
    return scale(total, 1.0 / max(_count(x, dims) - correction, 0))


@rule("var_mean")
def _var_mean(x, dim=None, *, correction=None, keepdim=False):
    return _var(x, dim, correction=correction, keepdim=keepdim), mean_over(x, dim, keepdim)


@rule("linalg_vector_norm")
def _vector_norm(x, ord=2, dim=None, keepdim=False, *, dtype=None):
    if ord != 2:
        raise NotCovered(f"vector norm of order {ord}")
    total = sum_over(jets.square(x), dim, keepdim)
    return jets.compose(total, univariate.sqrt(total.coeffs[0], x.index_set.order))


@rule("convolution")
def _convolution(x, weight, bias, stride, padding, dilation, transposed, output_padding, groups):
    """Convolution is linear in its input: coefficients and samples fold into conv's batch axis."""
    if not is_jet(x) or is_jet(weight) or is_jet(bias):
        raise NotCovered("convolution with an input-dependent weight or bias")
    c = x.coeffs  # [M, B, n, C, *spatial]: the per-sample input already carries conv's batch axis n
    folded = c.reshape((-1,) + tuple(c.shape[JET_LEADING_AXES + 1 :]))
    out = torch.ops.aten.convolution.default(
        folded, weight, None, stride, padding, dilation, transposed, output_padding, groups
    )
    out = out.reshape(tuple(c.shape[: JET_LEADING_AXES + 1]) + tuple(out.shape[1:]))
    if bias is not None:  # the bias moves only the value row
        out[0].add_(bias.reshape((-1,) + (1,) * (out.ndim - JET_LEADING_AXES - 2)))
    return with_coeffs(x, out)
