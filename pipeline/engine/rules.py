"""Taylor rules for aten ops: how each op maps jets to jets, and the dispatch.

Every rule receives the op's arguments with input-dependent tensors replaced
by :class:`~pipeline.engine.jets.Jet` values (coefficients ``[M, B, *s]``)
and everything else as ordinary tensors or Python values shaped per sample.
Linear and shape ops apply once to all coefficients (sample dims shift by the
two leading axes); products and nonlinearities go through ``jets``.

A rule raises :class:`~pipeline.engine.rule_table.NotCovered` for an argument
combination it does not handle; the engine then falls back to torch.func for
that function.

The table and its decorator live in ``rule_table``, the helpers the rules
share in ``jet_helpers``; the rules themselves in ``rules_shape`` (views,
indexing, cat), ``rules_math`` (arithmetic, matrix products, reductions) and
``rules_nonlinear`` (elementwise functions, piecewise-linear ops, softmax,
layer norm). This module is the one place that imports the three, so the
table is complete wherever :func:`apply_rule` or :func:`is_covered` is used.
"""

from __future__ import annotations

# the one place the rule modules are imported: each registers its rules into RULES on import
from . import rules_math, rules_nonlinear, rules_shape  # noqa: F401
from .jet_helpers import batched_values, is_jet, sample_ndim
from .jets import Jet
from .rule_table import RULES, SHAPE_ONLY, ZERO_DERIVATIVE, NotCovered, rule_name


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
        values = batched_values(args, sample_ndim(args))
        return Jet(target(*values, **kwargs).unsqueeze(0), 0, ref.index_set)
    func = RULES.get(name)
    if func is None:
        raise NotCovered(f"aten.{name}")
    return func(*args, **kwargs)
