"""The Taylor-mode interpreter: run a traced graph on jets, one forward pass per chunk.

Every requested derivative up to order K comes out of a single pass: the
input becomes a jet (value plus one unit direction per input element), every
op maps jets to jets (``rules``), and the output jet's coefficients are turned
into derivative tensors only at the end (``jets.to_derivative``).

Example:
    >>> traced = trace_function(lambda x: (x ** 3).sum(), (2,), torch.float64, "cpu")
    >>> out = taylor_chunk(traced, torch.ones(4, 2, dtype=torch.float64), ("hessian",))
    >>> out["hessian"][0]
    tensor([[6., 0.],
            [0., 6.]], dtype=torch.float64)
"""

from __future__ import annotations

import math

import torch

from pipeline.quantities import SCALAR_PER_OUTPUT, max_order, quantity_order

from . import jets
from .jets import IndexSet, Jet
from .rules import apply_rule
from .trace import TracedFunction, trace_function

__all__ = ["index_set_for", "run_jets", "taylor_chunk", "taylor_cost", "trace_function"]


OPERATORS = ("laplacian", "bilaplacian")  # sums of pure and paired terms: no full index set needed


def _index_set_kind(quantities: tuple[str, ...]) -> str:
    """``"biharmonic"``, ``"diagonal"`` or ``"full"``: the smallest index set that yields ``quantities``."""
    if any(quantity_order(q) >= 2 and q not in OPERATORS for q in quantities):  # a mixed partial is needed
        return "full"
    if "bilaplacian" in quantities:
        return "biharmonic"
    return "diagonal" if "laplacian" in quantities else "full"


def index_set_for(quantities: tuple[str, ...], in_size: int) -> IndexSet:
    """The smallest index set that yields ``quantities``.

    A Laplacian without any mixed second (or higher) derivative needs only the
    pure terms ``j * e_i``: ``1 + 2d`` coefficients instead of ``C(d + 2, 2)``;
    a bi-Laplacian the pure terms to order 4 and ``a e_i + b e_j`` (``a, b <= 2``):
    ``1 + 4d + 2d(d - 1)`` instead of ``C(d + 4, 4)``.
    """
    kind = _index_set_kind(quantities)
    if kind == "biharmonic":
        return IndexSet.biharmonic(in_size)
    if kind == "diagonal":
        return IndexSet.diagonal(in_size, max_order(quantities))
    return IndexSet.full(in_size, max_order(quantities))


def taylor_cost(quantities: tuple[str, ...], in_size: int) -> int:
    """Number of Taylor coefficients carried per intermediate value (the cost multiplier): the size of
    :func:`index_set_for`'s set, counted without building it (a full set can have millions of indices)."""
    kind, order = _index_set_kind(quantities), max_order(quantities)
    if kind == "biharmonic":
        return 1 + 4 * in_size + 2 * in_size * (in_size - 1)
    if kind == "diagonal":
        return 1 + in_size * order
    return math.comb(in_size + order, order)


def _meta_elements(node) -> int:
    """Elements per sample of a node's value(s), from the fake tensors recorded while tracing."""
    total = 0
    for value in torch.utils._pytree.tree_flatten(node.meta.get("val"))[0]:
        if isinstance(value, torch.Tensor):
            total += value.numel()
    return total


def estimate_bytes_per_sample(traced: TracedFunction, quantities: tuple[str, ...], in_size: int, itemsize: int) -> int:
    """Peak memory of one sample's jet pass, from tensor sizes alone (no run needed).

    Replays the interpreter's lifetimes (values are dropped after their last
    use) with ``M`` coefficients per value, adds head-room for the largest
    product's temporaries (two values' worth) and the outputs. An upper bound:
    early values carry fewer coefficients than ``M``.
    """
    coefficients = taylor_cost(quantities, in_size)
    sizes = {traced.input_node: in_size}
    live = in_size
    peak = largest = live
    for node in traced.active_nodes:
        sizes[node] = _meta_elements(node)
        largest = max(largest, sizes[node])
        live += sizes[node]
        peak = max(peak, live)
        for dead in traced.release_after.get(node, ()):
            live -= sizes.get(dead, 0)
    outputs = sum(
        math.prod(traced.output_shape) * (1 if q in SCALAR_PER_OUTPUT else in_size ** quantity_order(q))
        for q in quantities
    )
    return int((coefficients * (peak + 2 * largest) + outputs) * itemsize)


def run_jets(traced: TracedFunction, x: torch.Tensor, index_set: IndexSet) -> Jet:
    """Propagate the jet of ``x [B, *in]`` through the traced graph; return the output jet."""
    env: dict = dict(traced.constants)
    env[traced.input_node] = jets.input_jet(x, index_set)
    lookup = env.__getitem__
    for node in traced.active_nodes:
        args = torch.fx.node.map_arg(node.args, lookup)
        kwargs = torch.fx.node.map_arg(node.kwargs, lookup)
        env[node] = apply_rule(node.target, args, kwargs)
        for dead in traced.release_after.get(node, ()):
            del env[dead]
    result = torch.fx.node.map_arg(traced.output_argument, lookup)
    if isinstance(result, (tuple, list)):
        if len(result) != 1:
            raise ValueError(f"the function must return one tensor, got a {type(result).__name__} of {len(result)}")
        result = result[0]
    if not isinstance(result, Jet):  # the output does not depend on the input
        value = torch.as_tensor(result, dtype=x.dtype, device=x.device)
        coeffs = value.expand((1, x.shape[0]) + tuple(value.shape))
        return Jet(coeffs, 0, index_set)
    return result


@torch.no_grad()
def taylor_chunk(
    traced: TracedFunction, x: torch.Tensor, quantities: tuple[str, ...], out: dict[str, torch.Tensor] | None = None
) -> dict[str, torch.Tensor]:
    """Canonical ``quantities`` for one chunk ``x [B, *in]`` from one jet pass.

    With ``out`` (destination tensors per quantity) the results are written
    there directly, without an intermediate copy.
    """
    in_shape = tuple(x.shape[1:])
    index_set = index_set_for(quantities, math.prod(in_shape))
    jet = run_jets(traced, x, index_set)
    results = {}
    for name in quantities:
        target = None if out is None else out[name]
        if name in OPERATORS:
            value = jets.to_laplacian(jet) if name == "laplacian" else jets.to_bilaplacian(jet)
            results[name] = value if target is None else target.copy_(value)
        else:
            results[name] = jets.to_derivative(jet, quantity_order(name), in_shape, out=target)
    return {k: v.to(x.dtype) for k, v in results.items()}
