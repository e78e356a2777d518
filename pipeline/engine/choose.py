"""Automatic method choice from a cost model in units of one forward pass.

* ``taylor``: one pass carrying ``M`` coefficients per value (``C(d + K, K)``,
  or ``1 + K d`` for a Laplacian) - linear layers cost ``M`` forward passes,
  independent of the output size; products and nonlinearities add about half.
* ``forward`` (nested ``jacfwd``): each level pushes ``d`` tangents through
  the level below, so about ``(1 + d) ** K`` passes, each about three times a
  plain one (dual arithmetic and vmap bookkeeping; measured on the seed-000 net).
* ``reverse``: ``vmap(jacrev)`` at order 1, a batched backward pass per
  output: about ``1 + out / 2`` passes (``REVERSE_PER_OUTPUT``; not ``1 + 2 out``:
  a backward pass skips the output layer's width, which dominates a forward
  pass with many outputs - fitted on issue 12's shape grid, where ``2`` priced
  it 2-4x too high). Above order 1 it is what torch.func's ``vmap(hessian)``
  does, forward-over-reverse, and costs the same.
* ``forward-over-reverse``: ``1 + out / 2`` for the gradient, then ``3 (1 + d)``
  per forward level on top.

When Taylor and the best torch.func strategy are within ``CLOSE`` of each
other the engine times both on the first chunk and keeps the faster.

Example:
    >>> plan_method(("value", "jacobian", "hessian"), in_size=3, out_size=8, taylor_ok=True).method
    'taylor'
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.quantities import max_order

from .strategies import TORCH_FUNC_METHODS
from .taylor import taylor_cost

CLOSE = 2.5  # cost ratios below this are too close for the model: measure (2.0 missed first-order forward, priced at exactly 2x Taylor and measured 0.6-2.3x)
TAYLOR_MAX_COEFFICIENTS = 20_000  # beyond this the coefficient axis itself is the problem
TAYLOR_OVERHEAD = 1.5  # products and Faa di Bruno on top of the linear work
REVERSE_PER_OUTPUT = 0.5  # passes per output of a batched backward (shape grid: 0.15-1.0, median ~0.5)


@dataclass(frozen=True)
class MethodPlan:
    """The method to run, and the alternatives to time on the first chunk when it is close."""

    method: str
    time_against: tuple[str, ...] = ()
    estimates: tuple[tuple[str, float], ...] = ()


def estimated_cost(method: str, quantities: tuple[str, ...], in_size: int, out_size: int) -> float:
    """Cost of ``method`` in forward passes per sample (see module docstring)."""
    order = max_order(quantities)
    d, out = max(in_size, 1), max(out_size, 1)
    if order == 0:
        return 1.0
    if method == "taylor":
        return TAYLOR_OVERHEAD * taylor_cost(quantities, d)
    if method == "forward":
        return 3.0 * (1 + d) ** order
    if method in ("reverse", "forward-over-reverse"):
        return (1 + REVERSE_PER_OUTPUT * out) * (3 * (1 + d)) ** (order - 1)
    raise ValueError(f"no cost model for method {method!r}")


def best_torch_func(quantities: tuple[str, ...], in_size: int, out_size: int) -> str:
    """The cheapest torch.func strategy under the cost model."""
    return min(TORCH_FUNC_METHODS, key=lambda m: estimated_cost(m, quantities, in_size, out_size))


def plan_method(quantities: tuple[str, ...], in_size: int, out_size: int, taylor_ok: bool) -> MethodPlan:
    """Pick Taylor or a torch.func strategy for ``method="auto"``.

    Args:
        quantities: canonical quantity names.
        in_size: number of input elements per sample (``d``).
        out_size: number of output elements per sample.
        taylor_ok: whether the trace covers the function.
    """
    fallback = best_torch_func(quantities, in_size, out_size)
    estimates = {m: estimated_cost(m, quantities, in_size, out_size) for m in TORCH_FUNC_METHODS}
    if not taylor_ok or taylor_cost(quantities, in_size) > TAYLOR_MAX_COEFFICIENTS:
        return MethodPlan(fallback, (), tuple(estimates.items()))
    taylor = estimated_cost("taylor", quantities, in_size, out_size)
    estimates["taylor"] = taylor
    other = estimates[fallback]
    if max(taylor, other) / max(min(taylor, other), 1e-9) < CLOSE:
        return MethodPlan("taylor", (fallback,), tuple(estimates.items()))
    return MethodPlan("taylor" if taylor <= other else fallback, (), tuple(estimates.items()))
