"""Trace a one-sample function into an aten graph the Taylor interpreter can run.

``make_fx`` with fake tensors records the aten ops of ``fn`` on one sample, so
users keep writing ordinary PyTorch (``nn.Module`` or plain callables). Fake
tracing refuses data-dependent Python control flow (``if x.sum() > 0``) instead
of silently baking in the branch taken by the example. Functions that mutate
tensors are re-traced under ``functionalize`` so the graph is pure.

The graph does not depend on the batch size: the interpreter carries the
coefficient and sample axes in front of every per-sample shape. Traces are
cached per (function, input shape, dtype, device) and invalidated when a
module's parameters are replaced or it is switched between train and eval mode.
Random ops are not covered (they would be drawn once, at trace time).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.fx.experimental.proxy_tensor import make_fx

from .rule_table import rule_name
from .rules import is_covered


@dataclass
class TracedFunction:
    """A traced one-sample graph with its input-independent part already evaluated."""

    graph_module: torch.fx.GraphModule | None  # None (and the nodes too) when the function could not be traced
    in_shape: tuple[int, ...]
    dtype: torch.dtype
    device: torch.device
    input_node: torch.fx.Node | None
    output_node: torch.fx.Node | None
    # nodes that depend on the input, in execution order, and the values of all others
    active_nodes: list[torch.fx.Node]
    constants: dict[torch.fx.Node, Any]
    # for each active node, the nodes whose values can be dropped after it runs
    release_after: dict[torch.fx.Node, list[torch.fx.Node]] = field(default_factory=dict)
    uncovered: tuple[str, ...] = ()
    error: str | None = None
    # compiled Taylor passes (compiled.py), per quantities and chunk shape
    compiled: dict = field(default_factory=dict)

    @property
    def output_argument(self) -> torch.fx.node.Argument:
        """What the graph returns: its output node's argument (a node, a constant, or a tuple of them)."""
        if self.output_node is None:
            raise ValueError(f"no graph to run: {self.error}")
        return self.output_node.args[0]

    @property
    def output_shape(self) -> tuple[int, ...]:
        """Per-sample output shape, from the trace's fake tensors."""
        value = self.output_argument
        if isinstance(value, (tuple, list)):
            value = value[0]
        meta = value.meta["val"] if isinstance(value, torch.fx.Node) else torch.as_tensor(value)
        return tuple(meta.shape)

    @property
    def covered(self) -> bool:
        return self.error is None and not self.uncovered

    def reason(self) -> str | None:
        """Why the Taylor engine cannot run this function (``None`` when it can)."""
        if self.error is not None:
            return self.error
        if self.uncovered:
            return "operations not covered by the Taylor engine: " + ", ".join(self.uncovered)
        return None


_CACHE: weakref.WeakKeyDictionary[object, dict] = weakref.WeakKeyDictionary()
_STRONG_CACHE: dict = {}


def _parameter_fingerprint(fn) -> tuple:
    """Identity of a module's tensors and train/eval mode: a replaced or re-cast parameter, or
    ``train()``/``eval()`` (dropout, batch norm), invalidates the trace."""
    if not isinstance(fn, torch.nn.Module):
        return ()
    tensors = tuple((id(t), t.data_ptr(), t.dtype) for t in list(fn.parameters()) + list(fn.buffers()))
    return tensors + tuple(m.training for m in fn.modules())


def _has_mutation(gm: torch.fx.GraphModule) -> bool:
    for node in gm.graph.nodes:
        target = node.target
        if node.op == "call_function" and isinstance(target, torch._ops.OpOverload):
            if target._schema.is_mutable and rule_name(target) not in _INPLACE_VIEWS:
                return True
    return False


# in-place *view* ops (metadata only) that functionalization itself emits; read as out-of-place
_INPLACE_VIEWS = {"squeeze", "unsqueeze", "transpose", "t", "as_strided"}


def _make_graph(fn: Callable, example: torch.Tensor) -> torch.fx.GraphModule:
    def call(x):
        return fn(x)

    with torch.no_grad():
        gm = make_fx(call, tracing_mode="fake", _allow_non_fake_inputs=True)(example)
        if _has_mutation(gm):
            gm = make_fx(
                torch.func.functionalize(call, remove="mutations_and_views"),
                tracing_mode="fake",
                _allow_non_fake_inputs=True,
            )(example)
    gm.graph.eliminate_dead_code()
    gm.recompile()
    return gm


def _analyse(gm: torch.fx.GraphModule, in_shape, dtype, device) -> TracedFunction:
    nodes = list(gm.graph.nodes)
    input_node = next(n for n in nodes if n.op == "placeholder")
    output_node = next(n for n in nodes if n.op == "output")
    active: set[torch.fx.Node] = {input_node}
    order: list[torch.fx.Node] = []
    constants: dict[torch.fx.Node, Any] = {}
    uncovered: list[str] = []
    for node in nodes:
        if node.op == "placeholder":
            continue
        if node.op == "get_attr":
            constants[node] = _fetch_attr(gm, node.target)
            continue
        if node.op == "output":
            continue
        if isinstance(node.target, torch._ops.OpOverload) and torch.Tag.nondeterministic_seeded in node.target.tags:
            # a random op (dropout in train mode, randn) would be drawn once here and baked into every
            # sample and call: not covered, so the run falls back to torch.func (which refuses randomness)
            name = rule_name(node.target)
            if name not in uncovered:
                uncovered.append(name)
        if any(inp in active for inp in node.all_input_nodes):
            active.add(node)
            order.append(node)
            name = rule_name(node.target)
            if not is_covered(name) and name not in uncovered:
                uncovered.append(name)
        else:
            # input-independent: evaluate once here, reuse for every chunk
            args = torch.fx.node.map_arg(node.args, lambda n: constants[n])
            kwargs = torch.fx.node.map_arg(node.kwargs, lambda n: constants[n])
            constants[node] = node.target(*args, **kwargs)
    # release each value after its last active user, to keep the chunk's peak memory low
    last_use: dict[torch.fx.Node, torch.fx.Node] = {}
    for node in order:
        for inp in node.all_input_nodes:
            if inp in active:
                last_use[inp] = node
    release_after: dict[torch.fx.Node, list[torch.fx.Node]] = {}
    for value_node, user in last_use.items():
        release_after.setdefault(user, []).append(value_node)
    return TracedFunction(
        graph_module=gm,
        in_shape=tuple(in_shape),
        dtype=dtype,
        device=device,
        input_node=input_node,
        output_node=output_node,
        active_nodes=order,
        constants=constants,
        release_after=release_after,
        uncovered=tuple(f"aten.{n}" for n in uncovered),
    )


def _fetch_attr(gm: torch.nn.Module, target: str):
    obj = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def trace_function(fn: Callable, in_shape: tuple[int, ...], dtype: torch.dtype, device) -> TracedFunction:
    """Trace ``fn`` on one sample of ``in_shape`` (cached).

    Never raises for an untraceable function: the result carries ``error``
    (or ``uncovered`` op names) and the caller falls back to torch.func.

    Example:
        >>> traced = trace_function(torch.tanh, (3,), torch.float32, "cpu")
        >>> traced.covered
        True
    """
    device = torch.device(device)
    key = (tuple(in_shape), dtype, str(device), _parameter_fingerprint(fn))
    try:
        per_fn = _CACHE.setdefault(fn, {})
    except TypeError:  # not weak-referenceable (e.g. a builtin): keep it alive in a bounded dict
        if len(_STRONG_CACHE) > 64:
            _STRONG_CACHE.clear()
        per_fn = _STRONG_CACHE.setdefault(id(fn), {})
    traced = per_fn.get(key)
    if traced is not None:
        return traced
    example = torch.zeros(in_shape, dtype=dtype, device=device)
    try:
        gm = _make_graph(fn, example)
        traced = _analyse(gm, in_shape, dtype, device)
    except Exception as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        traced = TracedFunction(
            graph_module=None,
            in_shape=tuple(in_shape),
            dtype=dtype,
            device=device,
            input_node=None,
            output_node=None,
            active_nodes=[],
            constants={},
            error=f"could not trace the function ({type(exc).__name__}: {message[:200]})",
        )
    per_fn[key] = traced
    return traced
