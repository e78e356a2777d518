"""The table of Taylor rules: op name -> rule, the ``rule`` decorator and ``NotCovered``.

A leaf module: the rule modules (``rules_math``, ``rules_nonlinear``,
``rules_shape``) register into :data:`RULES` with :func:`rule`, and
``rules`` imports all three, so the table is complete once
``pipeline.engine.rules`` is imported (the engine only reads it from there).

Example:
    >>> rule_name(torch.ops.aten.select_copy.int)
    'select'
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

import torch


class NotCovered(Exception):
    """The Taylor engine has no rule for this op (or this use of it)."""


RULES: dict[str, Callable[..., Any]] = {}

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


def rule(*names: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register the decorated function as the rule of the ops ``names`` (see :func:`rule_name`)."""

    def register(func: Callable[..., Any]) -> Callable[..., Any]:
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
