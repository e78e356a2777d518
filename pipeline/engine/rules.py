"""Taylor rules for aten ops: how each op maps jets to jets.

Every rule receives the op's arguments with input-dependent tensors replaced
by :class:`~pipeline.engine.jets.Jet` values (coefficients ``[M, B, *s]``)
and everything else as ordinary tensors or Python values shaped per sample.
Linear and shape ops apply once to all coefficients (sample dims shift by the
two leading axes); products and nonlinearities go through ``jets``.

A rule raises :class:`NotCovered` for an argument combination it does not
handle; the engine then falls back to torch.func for that function.

This module holds the registry, the helpers and the dispatch; the rules live
in ``rules_shape`` (views, indexing, cat), ``rules_math`` (arithmetic, matrix
products, reductions) and ``rules_nonlinear`` (elementwise functions,
piecewise-linear ops, softmax, layer norm), imported at the end to register.
"""

from __future__ import annotations

import operator

import torch

from . import jets
from .jets import Jet


class NotCovered(Exception):
    """The Taylor engine has no rule for this op (or this use of it)."""


RULES: dict[str, object] = {}
LEAD = 2  # coefficient axis + sample axis in front of every per-sample shape


def rule(*names):
    def register(func):
        for name in names:
            RULES[name] = func
        return func

    return register


def rule_name(target) -> str:
    """Registry key of a graph target: ``aten.select_copy.int`` -> ``"select"``."""
    if target is operator.getitem:
        return "getitem"
    if isinstance(target, torch._ops.OpOverload):
        name = target._schema.name.split("::")[-1]
        if name.endswith("_copy") and name != "_to_copy":
            name = name[: -len("_copy")]  # view_copy etc. from functionalization
        elif name.endswith("_") and not name.endswith("__"):
            name = name[:-1]  # squeeze_ etc. (metadata-only in-place views)
        return name
    return getattr(target, "__name__", str(target))


def is_jet(value) -> bool:
    return isinstance(value, Jet)


def _dim(dim: int, ndim: int) -> int:
    """A per-sample dim (possibly negative) as an axis of the coefficient tensor."""
    if ndim == 0:
        if dim not in (0, -1):
            raise IndexError(f"dim {dim} out of range for a 0-d sample")
        return LEAD
    return dim % ndim + LEAD


def _dims(dims, ndim: int) -> list[int]:
    if dims is None or (isinstance(dims, (list, tuple)) and len(dims) == 0):
        return list(range(LEAD, LEAD + ndim))
    if isinstance(dims, int):
        dims = [dims]
    return [_dim(d, ndim) for d in dims]


def _same_structure(jet: Jet, coeffs: torch.Tensor) -> Jet:
    return Jet(coeffs, jet.top, jet.iset)


def constant_jet(value, like: Jet, top: int | None = None) -> Jet:
    """A batch-independent tensor as a jet (derivatives zero), ``top`` coefficients deep."""
    top = 0 if top is None else top
    value = torch.as_tensor(
        value, dtype=like.coeffs.dtype if not torch.is_tensor(value) else None, device=like.coeffs.device
    )
    batch = like.coeffs.shape[1]
    coeffs = value.new_zeros((like.iset.count(top), batch) + tuple(value.shape))
    coeffs[0] = value
    return Jet(coeffs, top, like.iset)


def _as_jets(values, top: int | None = None):
    """Promote a mix of jets and constants to jets of one common depth."""
    like = next(v for v in values if is_jet(v))
    top = max(v.top for v in values if is_jet(v)) if top is None else top
    out = []
    for v in values:
        jet = v if is_jet(v) else constant_jet(v, like)
        out.append(Jet(jets.pad(jet, top), top, jet.iset) if jet.top != top else jet)
    return out


def _values(args, ndim: int):
    """Jets replaced by their batched values ``[B, 1.., *s]`` aligned to ``ndim`` sample dims."""
    out = []
    for a in args:
        if is_jet(a):
            v = a.coeffs[0]
            missing = ndim - a.ndim
            out.append(v.reshape(v.shape[:1] + (1,) * missing + v.shape[1:]) if missing > 0 else v)
        elif isinstance(a, (list, tuple)):
            out.append(type(a)(_values(a, ndim)))
        else:
            out.append(a)
    return out


def _sample_ndim(args) -> int:
    n = 0
    for a in args:
        if is_jet(a):
            n = max(n, a.ndim)
        elif torch.is_tensor(a):
            n = max(n, a.ndim)
    return n


# ops whose result depends only on the shape of their jet argument: a plain per-sample constant
SHAPE_ONLY = {"zeros_like", "ones_like", "full_like", "empty_like", "new_zeros", "new_ones", "new_full", "new_empty"}
# piecewise-constant ops: a batched value with zero derivatives (masks, comparisons)
ZERO_DERIVATIVE = {
    "gt",
    "ge",
    "lt",
    "le",
    "eq",
    "ne",
    "logical_and",
    "logical_or",
    "logical_not",
    "logical_xor",
    "sign",
    "sgn",
    "floor",
    "ceil",
    "round",
    "trunc",
    "isnan",
    "isinf",
    "isfinite",
    "bitwise_and",
    "bitwise_or",
    "bitwise_not",
    "heaviside",
}


def is_covered(name: str) -> bool:
    """Whether the engine has a rule for the op named ``name`` (see ``rule_name``)."""
    return name == "getitem" or name in RULES or name in SHAPE_ONLY or name in ZERO_DERIVATIVE


def apply_rule(target, args, kwargs):
    """Run the rule for graph target ``target`` on jets and constants."""
    name = rule_name(target)
    if name == "getitem":
        return args[0][args[1]]
    if name in SHAPE_ONLY:
        args = [a.coeffs[0, 0] if is_jet(a) else a for a in args]
        return target(*args, **kwargs)
    if name in ZERO_DERIVATIVE:
        ref = next(a for a in args if is_jet(a))
        values = _values(args, _sample_ndim(args))
        return Jet(target(*values, **kwargs).unsqueeze(0), 0, ref.iset)
    func = RULES.get(name)
    if func is None:
        raise NotCovered(f"aten.{name}")
    return func(*args, **kwargs)


# the rule modules register themselves into RULES on import (they use the helpers above)
from . import rules_math, rules_nonlinear, rules_shape  # noqa: E402, F401
