"""Taylor rules for nonlinear ops: elementwise functions, piecewise-linear ops, softmax, layer norm.

Smooth elementwise functions compose their closed-form derivatives with the
argument's jet (``jets.compose``); piecewise-linear ones scale every
coefficient by the local slope; composite layers are built from jet primitives.
"""

from __future__ import annotations

import math

import torch

from . import jets, univariate
from .jet_helpers import (
    JET_LEADING_AXES,
    add,
    add_constant,
    as_jets,
    coefficient_axis,
    constant_jet,
    is_jet,
    mean_over,
    mul,
    sample_ndim,
    scale,
    sum_over,
    with_coeffs,
)
from .jets import Jet
from .rule_table import RULES, NotCovered, rule

# ---------------------------------------------------------------- elementwise nonlinearities


def _unary(name):
    def apply(x, *args, **kwargs):
        return jets.compose(x, univariate.derivative_sequence(name, x.coeffs[0], x.index_set.order))

    apply.__name__ = f"rule_{name}"
    return apply


for _name in univariate.SEQUENCES:
    RULES[_name] = _unary(_name)


@rule("gelu")
def _gelu(x, approximate="none"):
    if approximate == "none":
        return jets.compose(x, univariate.gelu(x.coeffs[0], x.index_set.order))
    # tanh approximation: 0.5 u (1 + tanh(sqrt(2/pi) (u + 0.044715 u^3)))
    cube = _pow(x, 3)
    inner = scale(add(x, cube, 0.044715), math.sqrt(2 / math.pi))
    t = jets.compose(inner, univariate.tanh(inner.coeffs[0], x.index_set.order))
    return scale(jets.bilinear(x, add_constant(t, 1.0)), 0.5)


@rule("softplus")
def _softplus(x, beta=1.0, threshold=20.0):
    return jets.compose(x, univariate.softplus(x.coeffs[0], x.index_set.order, beta, threshold))


@rule("pow")
def _pow(base, exponent):
    if is_jet(base) and not is_jet(exponent):
        if not torch.is_tensor(exponent):
            if exponent == 1:
                return base
            if exponent == 2:
                return jets.square(base)
            if exponent == 0:
                return constant_jet(torch.ones_like(base.coeffs[0, 0]), base)
        elif exponent.ndim > base.ndim:
            base = with_coeffs(
                base,
                jets.align(base, exponent.ndim).expand(
                    base.coeffs.shape[:JET_LEADING_AXES] + torch.broadcast_shapes(base.shape, exponent.shape)
                ),
            )
        return jets.compose(base, univariate.power(base.coeffs[0], exponent, base.index_set.order))
    # exponent is a jet: a^v = exp(v log a)
    if is_jet(base):
        log_base = jets.compose(base, univariate.log(base.coeffs[0], base.index_set.order))
    else:
        log_base = torch.log(torch.as_tensor(base, dtype=exponent.coeffs.dtype, device=exponent.coeffs.device))
    product = mul(exponent, log_base)
    return jets.compose(product, univariate.exp(product.coeffs[0], exponent.index_set.order))


@rule("square")
def _square(x):
    return jets.square(x)


def _masked(x: Jet, slope: torch.Tensor, value: torch.Tensor) -> Jet:
    """Piecewise-linear op: value at degree 0, local slope times every other coefficient."""
    out = x.coeffs * slope
    out[0] = value
    return with_coeffs(x, out)


@rule("relu")
def _relu(x):
    v = x.coeffs[0]
    return _masked(x, (v > 0).to(v.dtype), torch.relu(v))


@rule("leaky_relu")
def _leaky_relu(x, negative_slope=0.01):
    v = x.coeffs[0]
    slope = torch.where(v > 0, torch.ones_like(v), torch.full_like(v, negative_slope))
    return _masked(x, slope, torch.nn.functional.leaky_relu(v, negative_slope))


@rule("abs")
def _abs(x):
    v = x.coeffs[0]
    return _masked(x, torch.sign(v), v.abs())


@rule("hardtanh", "clamp")
def _clamp(x, min=None, max=None):
    if torch.is_tensor(min) or torch.is_tensor(max) or is_jet(min) or is_jet(max):
        raise NotCovered("clamp with tensor bounds")
    v = x.coeffs[0]
    inside = torch.ones_like(v, dtype=torch.bool)
    if min is not None:
        inside &= v > min
    if max is not None:
        inside &= v < max
    return _masked(x, inside.to(v.dtype), torch.clamp(v, min, max))


@rule("clamp_min")
def _clamp_min(x, min):
    return _clamp(x, min=min)


@rule("clamp_max")
def _clamp_max(x, max):
    return _clamp(x, max=max)


@rule("where")
def _where(condition, a, b):
    if is_jet(condition):
        if condition.top > 0:
            raise NotCovered("where with a differentiable condition")
        cond = condition.coeffs[:1]
        cond_ndim = condition.ndim
    else:
        cond = condition
        cond_ndim = condition.ndim
    if not is_jet(a) and not is_jet(b):
        # both branches constant but the condition varies per sample: a batched value
        ndim = max(cond_ndim, sample_ndim([a, b]))
        va = torch.as_tensor(a, device=cond.device)
        vb = torch.as_tensor(b, device=cond.device)
        c = cond if not is_jet(condition) else jets.align(condition, ndim)
        return Jet(torch.where(c, va, vb), 0, condition.index_set)
    ja, jb = as_jets([a, b])
    ndim = max(ja.ndim, jb.ndim, cond_ndim)
    if is_jet(condition):
        cond = jets.align(condition, ndim)
    return Jet(torch.where(cond, jets.align(ja, ndim), jets.align(jb, ndim)), ja.top, ja.index_set)


def _extremum(pick_first):
    def apply(a, b):
        ja, jb = as_jets([a, b])
        ndim = max(ja.ndim, jb.ndim)
        va, vb = jets.align(ja, ndim)[:1], jets.align(jb, ndim)[:1]
        cond = pick_first(va, vb)
        return Jet(torch.where(cond, jets.align(ja, ndim), jets.align(jb, ndim)), ja.top, ja.index_set)

    return apply


RULES["maximum"] = _extremum(lambda a, b: a >= b)
RULES["minimum"] = _extremum(lambda a, b: a <= b)


# ---------------------------------------------------------------- composite layers


def _shift_invariant_exp(x: Jet, dim: int) -> Jet:
    """``x - max_dim x0``: the shift only guards ``exp`` against overflow and cancels in softmax."""
    shift = x.coeffs[0].amax(dim=coefficient_axis(dim, x.ndim) - 1, keepdim=True)
    out = x.coeffs.clone()
    out[0] -= shift
    return with_coeffs(x, out)


@rule("_softmax")
def _softmax(x, dim, half_to_float=False):
    shifted = _shift_invariant_exp(x, dim)
    e = jets.compose(shifted, univariate.exp(shifted.coeffs[0], x.index_set.order))
    total = sum_over(e, dim, keepdim=True)
    inv = jets.compose(total, univariate.reciprocal(total.coeffs[0], x.index_set.order))
    return jets.bilinear(e, inv)


@rule("_log_softmax")
def _log_softmax(x, dim, half_to_float=False):
    shifted = _shift_invariant_exp(x, dim)
    e = jets.compose(shifted, univariate.exp(shifted.coeffs[0], x.index_set.order))
    total = sum_over(e, dim, keepdim=True)
    log_total = jets.compose(total, univariate.log(total.coeffs[0], x.index_set.order))
    return jets.add(shifted, log_total, -1.0)


@rule("native_layer_norm")
def _layer_norm(x, normalized_shape, weight, bias, eps):
    """Layer norm from its primitives: mean, centre, mean of squares, rsqrt, scale, shift."""
    dims = list(range(x.ndim - len(normalized_shape), x.ndim))
    mean = mean_over(x, dims, keepdim=True)
    centred = jets.add(x, mean, -1.0)
    var = mean_over(jets.square(centred), dims, keepdim=True)
    var_eps = add_constant(var, eps)
    rstd = jets.compose(var_eps, univariate.rsqrt(var_eps.coeffs[0], x.index_set.order))
    out = jets.bilinear(centred, rstd)
    if weight is not None:
        out = mul(out, weight)
    if bias is not None:
        out = add(out, bias)
    return out, mean, rstd
