"""Taylor rules for arithmetic, matrix products and reductions.

Adding a constant moves only the degree-0 row; scaling, matrix products with
a constant and reductions act on all coefficients at once; a product of two
jets is the truncated polynomial product (``jets.bilinear``).
"""

from __future__ import annotations

import math

import torch

from . import jets, univariate
from .jets import Jet
from .rules import LEAD, RULES, NotCovered, _dim, _dims, _same_structure, is_jet, rule

# ---------------------------------------------------------------- linear arithmetic


def _add_constant(x: Jet, c, alpha=1.0) -> Jet:
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
    return Jet(out, x.top, x.iset)


@rule("add")
def _add(a, b, alpha=1):
    if is_jet(a) and is_jet(b):
        return jets.add(a, b, alpha)
    if is_jet(a):
        return _add_constant(a, b, alpha)
    return _add_constant(_scale(b, alpha) if alpha != 1 else b, a)


@rule("sub")
def _sub(a, b, alpha=1):
    return _add(a, b, -alpha)


@rule("rsub")
def _rsub(a, b, alpha=1):
    return _add(b, a, -alpha)


@rule("neg")
def _neg(x):
    return _same_structure(x, -x.coeffs)


def _scale(x: Jet, c) -> Jet:
    """``x * c`` for a constant (tensor or number): every coefficient scales."""
    if torch.is_tensor(c) and c.ndim > x.ndim:
        return _same_structure(x, jets.align(x, c.ndim) * c)
    return _same_structure(x, x.coeffs * c)


@rule("mul")
def _mul(a, b):
    if is_jet(a) and is_jet(b):
        if a is b:
            return jets.square(a)
        return jets.bilinear(a, b, torch.mul)
    return _scale(a, b) if is_jet(a) else _scale(b, a)


@rule("div")
def _div(a, b, rounding_mode=None):
    if rounding_mode is not None:
        raise NotCovered(f"div with rounding_mode={rounding_mode!r}")
    if not is_jet(b):
        return _scale(a, torch.reciprocal(b) if torch.is_tensor(b) else 1.0 / b)
    inv = jets.compose(b, univariate.reciprocal(b.coeffs[0], b.iset.order))
    return _mul(a, inv)


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
        return _same_structure(a, op(a.coeffs, b))
    return _same_structure(b, op(a, b.coeffs))


@rule("mm", "bmm")
def _mm(a, b):
    return _product(a, b, _matmul_op)


@rule("mv")
def _mv(a, b):
    if is_jet(a) and not is_jet(b):
        return _same_structure(a, torch.matmul(a.coeffs, b))
    if is_jet(b) and not is_jet(a):
        return _same_structure(b, torch.matmul(b.coeffs, a.transpose(0, 1)))
    return _product(a, b, _matvec_op)


@rule("dot", "vdot")
def _dot(a, b):
    return _sum(_mul(a, b))


def _affine(bias, product, beta=1, alpha=1):
    if alpha != 1:
        product = _scale(product, alpha)
    if not is_jet(bias) and beta == 0:
        return product
    if not is_jet(bias) and product.coeffs.shape[1:] == torch.broadcast_shapes(product.coeffs.shape[1:], bias.shape):
        # the product is a fresh tensor nobody else holds: add the bias to its value row in place
        product.coeffs[0].add_(bias, alpha=beta)
        return product
    return _add(product, bias, beta)


@rule("addmm", "baddbmm")
def _addmm(bias, a, b, beta=1, alpha=1):
    return _affine(bias, _mm(a, b), beta, alpha)


@rule("addmv")
def _addmv(bias, a, b, beta=1, alpha=1):
    return _affine(bias, _mv(a, b), beta, alpha)


# ---------------------------------------------------------------- reductions


@rule("sum")
def _sum(x, dim=None, keepdim=False, dtype=None):
    c = x.coeffs
    dims = _dims(dim, x.ndim)
    out = c.sum(dim=dims, keepdim=keepdim) if dims else c
    return _same_structure(x, out if dtype is None else out.to(dtype))


@rule("mean")
def _mean(x, dim=None, keepdim=False, dtype=None):
    c = x.coeffs
    dims = _dims(dim, x.ndim)
    out = c.mean(dim=dims, keepdim=keepdim) if dims else c
    return _same_structure(x, out if dtype is None else out.to(dtype))


@rule("cumsum")
def _cumsum(x, dim, dtype=None):
    return _same_structure(x, x.coeffs.cumsum(_dim(dim, x.ndim), dtype=dtype))


def _count(x: Jet, dims: list[int]) -> int:
    return math.prod(x.coeffs.shape[d] for d in dims)


@rule("var")
def _var(x, dim=None, *, correction=None, keepdim=False, unbiased=None):
    if correction is None:
        correction = 1 if unbiased is None or unbiased else 0
    dims = _dims(dim, x.ndim)
    centred = _sub(x, _mean(x, [d - LEAD for d in dims], keepdim=True))
    total = _sum(jets.square(centred), [d - LEAD for d in dims], keepdim=keepdim)
    return _scale(total, 1.0 / max(_count(x, dims) - correction, 0))


@rule("var_mean")
def _var_mean(x, dim=None, *, correction=None, keepdim=False):
    return _var(x, dim, correction=correction, keepdim=keepdim), _mean(x, dim, keepdim)


@rule("linalg_vector_norm")
def _vector_norm(x, ord=2, dim=None, keepdim=False, *, dtype=None):
    if ord != 2:
        raise NotCovered(f"vector norm of order {ord}")
    total = _sum(jets.square(x), dim, keepdim)
    return jets.compose(total, univariate.sqrt(total.coeffs[0], x.iset.order))


@rule("convolution")
def _convolution(x, weight, bias, stride, padding, dilation, transposed, output_padding, groups):
    """Convolution is linear in its input: coefficients and samples fold into conv's batch axis."""
    if not is_jet(x) or is_jet(weight) or is_jet(bias):
        raise NotCovered("convolution with an input-dependent weight or bias")
    c = x.coeffs  # [M, B, n, C, *spatial]: the per-sample input already carries conv's batch axis n
    folded = c.reshape((-1,) + tuple(c.shape[LEAD + 1 :]))
    out = torch.ops.aten.convolution.default(
        folded, weight, None, stride, padding, dilation, transposed, output_padding, groups
    )
    out = out.reshape(tuple(c.shape[: LEAD + 1]) + tuple(out.shape[1:]))
    if bias is not None:  # the bias moves only the value row
        out[0].add_(bias.reshape((-1,) + (1,) * (out.ndim - LEAD - 2)))
    return _same_structure(x, out)
