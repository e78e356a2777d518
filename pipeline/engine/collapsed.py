"""Collapsed Taylor mode: second-order *linear operators* in one forward pass.

For ``L f = sum_r d^2/dt^2 f(x + t s_r)`` over ``R`` directions ``s_r`` (the
Laplacian: ``s_r = e_r``; a weighted Laplacian ``sum_ij C_ij d2f/dxi dxj``
with ``C = S S^T``: ``s_r`` = the columns of ``S``; Hutchinson: random
directions) only the *sum* of the second-order coefficients is needed, so
every value carries ``1 + G + R`` rows (value, ``G`` summed second-order
coefficients - one, or one per direction group for a standard error - and
``R`` first-order coefficients), not ``1 + 2R`` (the forward-Laplacian /
collapsed-Taylor idea of folx and Dangel et al. 2025).

Rules, with ``g_r`` the first-order rows and ``q`` the collapsed row:

* linear ops apply to all rows at once; a Linear layer is one GEMM over
  ``[(1 + G + R) * B, in]`` rows, the bias touches the value row only;
* an elementwise ``h``: ``v' = h(v)``, ``g'_r = h'(v) g_r``,
  ``q' = h'(v) q + h''(v) sum_r g_r^2`` (tanh: ``h' = 1 - t^2``, ``h'' = -2 t h'``);
* a product ``a b``: ``q = a_q b + a b_q + 2 sum_r a_r b_r``.

**Shared rows.** The input's first-order rows are the directions themselves
(the identity for a Laplacian, ``S^T`` for a constant factor), the same for
every sample: until the first nonlinearity they are carried *without* a
sample axis (``[R, *s]``, a Linear layer maps ``W^T`` once), and ``q`` is
zero. ``sum_r g_r^2`` is then a per-sample-free vector, so the first
nonlinearity costs one broadcast multiply.

The graph is the same ``make_fx`` trace the Taylor engine runs; an op
without a collapsed rule raises :class:`~pipeline.engine.rule_table.NotCovered`
and the caller uses the Taylor engine instead.

Example:
    >>> from pipeline.engine.trace import trace_function
    >>> traced = trace_function(lambda x: (x ** 3).sum(), (2,), torch.float64, "cpu")
    >>> collapsed_chunk(traced, torch.tensor([[1.0, 2.0]], dtype=torch.float64), ("laplacian",))["laplacian"]
    tensor([18.], dtype=torch.float64)
"""

from __future__ import annotations

import math
from typing import Any, cast

import torch

from .rule_table import NotCovered, rule_name
from .trace import TracedFunction
from .univariate import derivative_sequence

__all__ = ["COLLAPSED_QUANTITIES", "CJet", "collapsed_chunk", "covered", "run_collapsed"]

# quantities one collapsed pass gives (with identity directions)
COLLAPSED_QUANTITIES = ("value", "jacobian", "laplacian")
LOOP_MIN_ROW = 4096  # elements per first-order row from which sum_r g_r^2 loops over the rows on CPU


class CJet:
    """A value with ``R`` first-order rows and ``G`` collapsed second-order rows.

    Per-sample form: ``stack [1 + G + R, B, *s]`` (``v = stack[0]``,
    ``q = stack[1:1+G]``, ``g = stack[1+G:]``). Shared form (before the first
    nonlinearity): ``v [B, *s]``, ``q`` ``None`` (zero) or ``[G, B, *s]``,
    ``g [R, *s]`` the same for every sample.
    """

    __slots__ = ("g", "groups", "q", "stack", "v")

    def __init__(self, v, q, g, stack=None, groups=1):
        self.v, self.q, self.g, self.stack, self.groups = v, q, g, stack, groups

    @staticmethod
    def from_stack(stack: torch.Tensor, groups: int) -> CJet:
        return CJet(stack[0], stack[1 : 1 + groups], stack[1 + groups :], stack, groups)

    @property
    def shared(self) -> bool:
        return self.stack is None

    @property
    def ndim(self) -> int:
        return self.v.ndim - 1

    @property
    def rows(self) -> int:
        return self.g.shape[0]

    def to_stack(self) -> CJet:
        """The per-sample form (materialises the sample axis of the first-order rows)."""
        if not self.shared:
            return self
        batch = self.v.shape[0]
        shape = tuple(self.v.shape[1:])
        stack = self.v.new_empty((1 + self.groups + self.rows, batch) + shape)
        stack[0] = self.v
        if self.q is None:
            stack[1 : 1 + self.groups].zero_()
        else:
            stack[1 : 1 + self.groups] = self.q
        g = self.g.reshape((self.rows, 1) + tuple(self.g.shape[1:]))
        stack[1 + self.groups :] = g.expand((self.rows, batch) + shape) if g.shape[2:] == shape else g
        return CJet.from_stack(stack, self.groups)

    def sum_squares(self) -> torch.Tensor:
        """``sum_r g_r^2`` per group: ``[G, B or 1, *s]`` (shared: no sample axis, ``[G, 1, *s]``)."""
        g = self.g if not self.shared else self.g.unsqueeze(1)
        per = g.shape[0] // self.groups
        row = g[0].numel()
        if g.device.type == "cpu" and row >= LOOP_MIN_ROW:
            # one addcmul_ per row into an accumulator that stays in cache: 3-4x faster than the
            # einsum below on [200, 64 x 768] rows (4 vs 15 ms; 3 vs 40 ms with the cores oversubscribed)
            out = g.new_empty((self.groups,) + tuple(g.shape[1:]))
            for k in range(self.groups):
                acc = out[k]
                torch.mul(g[k * per], g[k * per], out=acc)
                for r in range(k * per + 1, (k + 1) * per):
                    acc.addcmul_(g[r], g[r])
            return out
        flat = g.reshape(self.groups, per, -1)
        # small rows (per-op overhead dominates) and GPUs: one batched reduction
        return torch.einsum("grp,grp->gp", flat, flat).reshape((self.groups,) + tuple(g.shape[1:]))


def is_cjet(x) -> bool:
    return isinstance(x, CJet)


# ------------------------------------------------------------------ linear maps


def _map(j: CJet, op) -> CJet:
    """Apply a linear, per-sample-shaped op ``op(tensor, lead)`` to every row (``lead`` leading axes)."""
    if not j.shared:
        return CJet.from_stack(op(j.stack, 2), j.groups)
    q = None if j.q is None else op(j.q, 2)
    return CJet(op(j.v, 1), q, op(j.g, 1), None, j.groups)


def _lead_dim(dim: int, ndim: int, lead: int) -> int:
    if ndim == 0:
        return lead
    return dim % ndim + lead


RULES: dict = {}


def rule(*names):
    def register(func):
        for name in names:
            RULES[name] = func
        return func

    return register


@rule("view", "_unsafe_view", "reshape")
def _view(x, shape):
    shape = tuple(shape)
    return _map(x, lambda t, lead: t.reshape(t.shape[:lead] + shape))


@rule("t")
def _t(x):
    if x.ndim < 2:
        return x
    return _map(x, lambda t, lead: t.transpose(lead, lead + 1))


@rule("transpose")
def _transpose(x, d0, d1):
    return _map(x, lambda t, lead: t.transpose(_lead_dim(d0, x.ndim, lead), _lead_dim(d1, x.ndim, lead)))


@rule("permute")
def _permute(x, dims):
    return _map(x, lambda t, lead: t.permute(list(range(lead)) + [_lead_dim(d, x.ndim, lead) for d in dims]))


@rule("unsqueeze")
def _unsqueeze(x, dim):
    nd = x.ndim + 1
    return _map(x, lambda t, lead: t.unsqueeze(dim % nd + lead))


@rule("squeeze")
def _squeeze(x, dim=None):
    if dim is None:
        dims = [i for i, s in enumerate(x.v.shape[1:]) if s == 1]
    else:
        dims = [d % max(x.ndim, 1) for d in (dim if isinstance(dim, (list, tuple)) else [dim])]
        dims = [d for d in dims if x.ndim and x.v.shape[1 + d] == 1]
    if not dims:
        return x
    return _map(x, lambda t, lead: t.squeeze([d + lead for d in dims]))


@rule("expand")
def _expand(x, size, implicit=False):
    size = tuple(size)
    return _map(x, lambda t, lead: t.expand(t.shape[:lead] + size))


@rule("select")
def _select(x, dim, index):
    return _map(x, lambda t, lead: t.select(_lead_dim(dim, x.ndim, lead), index))


@rule("slice")
def _slice(x, dim=0, start=None, end=None, step=1):
    def op(t, lead):
        axis = _lead_dim(dim, x.ndim, lead)
        index = [slice(None)] * t.ndim
        index[axis] = slice(start, end, step)
        return t[tuple(index)]

    return _map(x, op)


@rule("clone", "alias", "detach", "contiguous", "lift_fresh_copy")
def _identity(x, *args, **kwargs):
    return x


@rule("_to_copy")
def _to_copy(x, *args, dtype=None, **kwargs):
    if dtype is None:
        return x
    return _map(x, lambda t, lead: t.to(dtype))


def _reduced_dims(x, dim) -> list[int]:
    """The non-negative axes a sum/mean over ``dim`` reduces (all of them for None or ``[]``)."""
    if dim is None or (isinstance(dim, (list, tuple)) and len(dim) == 0):
        return list(range(x.ndim))
    return [d % x.ndim for d in (dim if isinstance(dim, (list, tuple)) else [dim])]


@rule("sum")
def _sum(x, dim=None, keepdim=False, dtype=None):
    if x.ndim == 0:
        return x
    dims = _reduced_dims(x, dim)
    return _map(x, lambda t, lead: t.sum(dim=[d + lead for d in dims], keepdim=keepdim))


@rule("mean")
def _mean(x, dim=None, keepdim=False, dtype=None):
    if x.ndim == 0:
        return x
    dims = _reduced_dims(x, dim)
    count = math.prod(x.v.shape[1 + d] for d in dims)
    return _scale(_sum(x, dims, keepdim), 1.0 / count)


def _scale(x: CJet, c) -> CJet:
    """``x * c`` for a constant ``c`` (a number or a tensor shaped per sample)."""
    if torch.is_tensor(c) and c.ndim > x.ndim:  # the constant broadcasts the jet up: align the sample dims
        x = _map(x, lambda t, lead: t.reshape(t.shape[:lead] + (1,) * (c.ndim - x.ndim) + t.shape[lead:]))
    return _map(x, lambda t, lead: t * c)


def _matmul_const(x: CJet, w: torch.Tensor, right: bool) -> CJet:
    """``x @ w`` (``right``) or ``w @ x`` with a constant matrix: all rows in one GEMM."""
    if right:
        if x.ndim == 2 and w.ndim == 2:

            def op(t, lead):
                flat = t.reshape(-1, t.shape[-1])
                return torch.mm(flat, w).reshape(t.shape[:-1] + (w.shape[-1],))
        else:

            def op(t, lead):
                return torch.matmul(t, w)
    else:

        def op(t, lead):
            return torch.matmul(w, t)

    return _map(x, op)


@rule("mm", "matmul", "bmm")
def _mm(a, b):
    if is_cjet(a) and not is_cjet(b):
        return _matmul_const(a, b, True)
    if is_cjet(b) and not is_cjet(a):
        return _matmul_const(b, a, False)
    return _bilinear(a, b, torch.matmul)


@rule("mv")
def _mv(a, b):
    if is_cjet(a) and not is_cjet(b):
        return _map(a, lambda t, lead: torch.matmul(t, b))
    if is_cjet(b) and not is_cjet(a):
        return _map(b, lambda t, lead: torch.matmul(t, a.transpose(0, 1)))
    raise NotCovered("aten.mv of two input-dependent tensors")


@rule("addmm")
def _addmm(bias, a, b, beta=1, alpha=1):
    product = _mm(a, b)
    if alpha != 1:
        product = _scale(product, alpha)
    if beta == 0:
        return product
    if (
        torch.is_tensor(bias)
        and not is_cjet(bias)
        and bias.ndim <= product.ndim
        and tuple(torch.broadcast_shapes(product.v.shape[1:], bias.shape)) == tuple(product.v.shape[1:])
    ):
        product.v.add_(bias, alpha=beta)  # a fresh GEMM result: the bias touches the value row in place
        return product
    return _add(product, bias, beta)


@rule("addmv")
def _addmv(bias, a, b, beta=1, alpha=1):
    product = _mv(a, b)
    if alpha != 1:
        product = _scale(product, alpha)
    return _add(product, bias, beta)


def _as_stack(value, like: CJet) -> torch.Tensor:
    """A jet's per-sample stack, or a constant as one (zero derivatives)."""
    if is_cjet(value):
        return value.to_stack().stack
    value = torch.as_tensor(value, dtype=like.v.dtype, device=like.v.device)
    batch = like.v.shape[0]
    stack = value.new_zeros((1 + like.groups + like.rows, batch) + tuple(value.shape))
    stack[0] = value
    return stack


@rule("cat")
def _cat(tensors, dim=0):
    like = next(t for t in tensors if is_cjet(t))
    nd = like.ndim
    stacks = [_as_stack(t, like) for t in tensors if not (torch.is_tensor(t) and t.numel() == 0 and t.ndim == 1)]
    return CJet.from_stack(torch.cat(stacks, dim=_lead_dim(dim, nd, 2)), like.groups)


@rule("stack")
def _stack(tensors, dim=0):
    like = next(t for t in tensors if is_cjet(t))
    nd = like.ndim + 1
    stacks = [_as_stack(t, like) for t in tensors]
    return CJet.from_stack(torch.stack(stacks, dim=dim % nd + 2), like.groups)


# ------------------------------------------------------------------ arithmetic


def _common(a: CJet, b: CJet) -> tuple[CJet, CJet]:
    if a.shared and b.shared:
        return a, b
    return a.to_stack(), b.to_stack()


def _broadcast_ndim(a: CJet, ndim: int) -> CJet:
    if a.ndim >= ndim:
        return a
    return _map(a, lambda t, lead: t.reshape(t.shape[:lead] + (1,) * (ndim - a.ndim) + t.shape[lead:]))


def _add_jets(a: CJet, b: CJet, alpha=1.0) -> CJet:
    nd = max(a.ndim, b.ndim)
    a, b = _common(_broadcast_ndim(a, nd), _broadcast_ndim(b, nd))
    if not a.shared:
        return CJet.from_stack(a.stack + b.stack * alpha if alpha != 1 else a.stack + b.stack, a.groups)
    if a.q is None and b.q is None:
        q = None
    elif b.q is None:
        q = a.q
    elif a.q is None:
        q = b.q * alpha
    else:
        q = a.q + alpha * b.q
    return CJet(a.v + alpha * b.v, q, a.g + alpha * b.g, None, a.groups)


def _add_constant(x: CJet, c, alpha=1.0) -> CJet:
    c = c * alpha if alpha != 1 else c
    if torch.is_tensor(c) and c.ndim > x.ndim:
        x = _broadcast_ndim(x, c.ndim)
    if torch.is_tensor(c) and tuple(torch.broadcast_shapes(x.v.shape[1:], c.shape)) != tuple(x.v.shape[1:]):
        # the constant widens the value: every row is broadcast too
        shape = torch.broadcast_shapes(x.v.shape[1:], c.shape)
        x = _map(x, lambda t, lead: t.expand(t.shape[:lead] + tuple(shape)))
    if not x.shared:
        stack = x.stack.clone()
        stack[0] += c
        return CJet.from_stack(stack, x.groups)
    return CJet(x.v + c, x.q, x.g, None, x.groups)


@rule("add")
def _add(a, b, alpha=1):
    if is_cjet(a) and is_cjet(b):
        return _add_jets(a, b, alpha)
    if is_cjet(a):
        return _add_constant(a, b, alpha)
    return _add_constant(_scale(b, alpha) if alpha != 1 else b, a)


@rule("sub")
def _sub(a, b, alpha=1):
    return _add(a, _neg(b) if is_cjet(b) else -b, alpha)


@rule("rsub")
def _rsub(a, b, alpha=1):
    return _add(_scale(a, -alpha) if is_cjet(a) else -alpha * a, b)


@rule("neg")
def _neg(x):
    return _scale(x, -1.0)


def _bilinear(a: CJet, b: CJet, op) -> CJet:
    """``op(a, b)`` for an op linear in each argument: ``q = op(a_q, b) + op(a, b_q) + 2 sum_r op(a_r, b_r)``."""
    a, b = a.to_stack(), b.to_stack()
    G = a.groups
    value = op(a.v, b.v)
    q = op(a.q, b.v.unsqueeze(0)) + op(a.v.unsqueeze(0), b.q)
    cross = op(a.g, b.g)
    per = cross.shape[0] // G
    q = q + 2 * cross.reshape((G, per) + tuple(cross.shape[1:])).sum(1)
    g = op(a.g, b.v.unsqueeze(0)) + op(a.v.unsqueeze(0), b.g)
    stack = torch.cat([value.unsqueeze(0), q, g])
    return CJet.from_stack(stack, G)


@rule("mul")
def _mul(a, b):
    if is_cjet(a) and is_cjet(b):
        nd = max(a.ndim, b.ndim)
        return _bilinear(_broadcast_ndim(a, nd), _broadcast_ndim(b, nd), torch.mul)
    if is_cjet(a):
        return _scale(a, b)
    return _scale(b, a)


@rule("div")
def _div(a, b, rounding_mode=None):
    if rounding_mode is not None:
        raise NotCovered("aten.div with rounding")
    if is_cjet(b):
        return _mul(a, _unary(b, "reciprocal")) if is_cjet(a) else _scale(_unary(b, "reciprocal"), a)
    return _scale(a, 1.0 / b)


# ------------------------------------------------------------------ nonlinear


_DONATE = [False]  # set by the interpreter: the rule may overwrite its (single-use, fresh) jet argument


def _elementwise(x: CJet, value: torch.Tensor, d1: torch.Tensor, d2: torch.Tensor | None) -> CJet:
    """``h(x)`` given ``h(v)``, ``h'(v)``, ``h''(v)`` (``d2`` None: piecewise linear).

    Two bulk passes over the first-order rows (``sum_r g_r^2`` as one batched
    reduction, then the scaling by ``h'``); when the argument is donated the rows
    are scaled in place (a fresh ``[R, B, ...]`` allocation costs page faults that
    cost more than the multiply). A row-by-row loop (one read while in cache) was
    no faster on the 2-core CPU and much slower when its cores were oversubscribed.
    """
    G = x.groups
    if x.shared:
        batch = x.v.shape[0]
        shape = tuple(value.shape[1:])
        stack = value.new_empty((1 + G + x.rows, batch) + shape)
        stack[0] = value
        g = x.g.unsqueeze(1)
        torch.mul(g, d1, out=stack[1 + G :])
        q = stack[1 : 1 + G]
        if d2 is None:
            if x.q is None:
                q.zero_()
            else:
                torch.mul(x.q, d1, out=q)
        else:
            torch.mul(x.sum_squares(), d2, out=q)  # no sample axis: a [G, 1, *s] vector times h''
            if x.q is not None:
                q.addcmul_(x.q, d1)
        return CJet.from_stack(stack, G)
    inplace = _DONATE[0] and x.stack.shape[1:] == value.shape
    stack = x.stack if inplace else torch.empty_like(x.stack, memory_format=torch.contiguous_format)
    acc = None if d2 is None else x.sum_squares()  # before the rows are scaled (in place or not)
    if inplace:
        x.g.mul_(d1)
    else:
        torch.mul(x.g, d1, out=stack[1 + G :])
    q = stack[1 : 1 + G]
    if inplace:
        q.mul_(d1)
    else:
        torch.mul(x.q, d1, out=q)
    if acc is not None and d2 is not None:  # acc is there exactly when d2 is
        q.addcmul_(acc, d2)
    stack[0].copy_(value)
    return CJet.from_stack(stack, G)


def _unary(x: CJet, name: str, **kwargs) -> CJet:
    v = x.v
    if name == "tanh":
        t = torch.tanh(v)
        d1 = 1 - t * t
        d2 = -2 * t * d1
        return _elementwise(x, t, d1, d2)
    if name == "sigmoid":
        s = torch.sigmoid(v)
        d1 = s * (1 - s)
        d2 = d1 * (1 - 2 * s)
        return _elementwise(x, s, d1, d2)
    if name == "square":
        return _elementwise(x, v * v, 2 * v, torch.full_like(v, 2.0))
    if name == "softplus":
        from .univariate import softplus

        seq = softplus(v, 2, **kwargs)
    elif name == "pow":
        from .univariate import power

        seq = power(v, kwargs["exponent"], 2)
    else:
        seq = derivative_sequence(name, v, 2)
    return _elementwise(x, seq[0], seq[1], seq[2])


_UNARY = (
    "tanh",
    "sigmoid",
    "sin",
    "cos",
    "sinh",
    "cosh",
    "exp",
    "expm1",
    "log",
    "log1p",
    "reciprocal",
    "sqrt",
    "rsqrt",
    "erf",
    "silu",
)

for _name in _UNARY:
    RULES[_name] = (lambda name: lambda x: _unary(x, name))(_name)


@rule("square")
def _square(x):
    return _unary(x, "square")


@rule("softplus")
def _softplus(x, beta=1.0, threshold=20.0):
    return _unary(x, "softplus", beta=beta, threshold=threshold)


@rule("gelu")
def _gelu(x, approximate="none"):
    if approximate != "none":
        raise NotCovered("aten.gelu(approximate='tanh')")
    return _unary(x, "gelu")


@rule("pow")
def _pow(base, exponent):
    if is_cjet(base) and not torch.is_tensor(exponent) and not is_cjet(exponent):
        if exponent == 2:
            return _unary(base, "square")
        return _unary(base, "pow", exponent=exponent)
    raise NotCovered("aten.pow with an input-dependent or tensor exponent")


@rule("relu")
def _relu(x):
    mask = (x.v > 0).to(x.v.dtype)
    return _elementwise(x, torch.relu(x.v), mask, None)


@rule("leaky_relu")
def _leaky_relu(x, negative_slope=0.01):
    # tensors of x's dtype: where(mask, 1.0, slope) of two Python scalars is float32, which rounds the slope
    slope = torch.where(x.v > 0, torch.ones_like(x.v), torch.full_like(x.v, negative_slope))
    return _elementwise(x, x.v * slope, slope, None)


# ------------------------------------------------------------------ interpreter


def covered(traced: TracedFunction) -> str | None:
    """``None`` when every active op has a collapsed rule, else the first op name that has none."""
    if traced is None or not traced.covered:
        return "not traced"
    for node in traced.active_nodes:
        if node.target is not __import__("operator").getitem and rule_name(node.target) not in RULES:
            return f"aten.{rule_name(node.target)}"
    return None


def input_cjet(x: torch.Tensor, directions: torch.Tensor | None, groups: int = 1) -> CJet:
    """The input: value ``x [B, *in]``; first-order rows the identity (``directions`` None),
    shared directions ``[R, *in]`` or per-sample directions ``[R, B, *in]``; no second order."""
    in_shape = tuple(x.shape[1:])
    d = math.prod(in_shape)
    if directions is None:
        g = torch.eye(d, dtype=x.dtype, device=x.device).reshape((d,) + in_shape)
        return CJet(x, None, g, None, groups)
    if directions.ndim == len(in_shape) + 1:
        return CJet(x, None, directions.to(x.dtype), None, groups)
    rows = directions.shape[0]
    stack = x.new_zeros((1 + groups + rows,) + tuple(x.shape))
    stack[0] = x
    stack[1 + groups :] = directions
    return CJet.from_stack(stack, groups)


# rules whose per-sample result is always a fresh tensor nobody else holds
_FRESH = {
    "addmm",
    "mm",
    "mv",
    "addmv",
    "matmul",
    "bmm",
    "mul",
    "add",
    "sub",
    "rsub",
    "neg",
    "div",
    "relu",
    "leaky_relu",
    "square",
    "pow",
    "softplus",
    "gelu",
} | set(_UNARY)
# rules that may return a view of (or the very) argument
_VIEWS = {
    "view",
    "_unsafe_view",
    "reshape",
    "t",
    "transpose",
    "permute",
    "unsqueeze",
    "squeeze",
    "select",
    "slice",
    "clone",
    "alias",
    "detach",
    "contiguous",
    "lift_fresh_copy",
    "_to_copy",
}
_ELEMENTWISE = set(_UNARY) | {"relu", "leaky_relu", "square", "pow", "softplus", "gelu"}


def _donations(traced: TracedFunction) -> set:
    """Elementwise nodes that may overwrite their jet argument: it has no other user and its storage is a
    fresh result reached only through single-use views (so nothing else can see the write)."""
    cached = traced.compiled.get("collapsed_donations")
    if cached is not None:
        return cached

    def owned(node) -> bool:
        if node is traced.input_node or node in traced.constants or node.op != "call_function":
            return False
        if len(node.users) != 1:
            return False
        name = rule_name(node.target)
        if name in _FRESH:
            return True
        if name in _VIEWS and node.args and isinstance(node.args[0], torch.fx.Node):
            return owned(node.args[0])
        return False

    donated = set()
    for node in traced.active_nodes:
        if rule_name(node.target) in _ELEMENTWISE and node.args and isinstance(node.args[0], torch.fx.Node):
            arg = node.args[0]
            if owned(arg) and list(arg.users) == [node] and node.args.count(arg) == 1:
                donated.add(node)
    traced.compiled["collapsed_donations"] = donated
    return donated


def run_collapsed(traced: TracedFunction, x: torch.Tensor, directions=None, groups: int = 1):
    """Propagate the collapsed jet of ``x`` through the trace; the output :class:`CJet` (or a constant)."""
    import operator

    donated = _donations(traced)
    env: dict = dict(traced.constants)
    env[traced.input_node] = input_cjet(x, directions, groups)
    lookup = env.__getitem__
    for node in traced.active_nodes:
        # map_arg keeps the structure of node.args (a tuple) and puts env's values (CJets, tensors) for the nodes
        args = cast(tuple[Any, ...], torch.fx.node.map_arg(node.args, lookup))
        kwargs = torch.fx.node.map_arg(node.kwargs, lookup)
        if node.target is operator.getitem:
            env[node] = args[0][args[1]]
        else:
            name = rule_name(node.target)
            func = RULES.get(name)
            if func is None:
                raise NotCovered(f"aten.{name}")
            _DONATE[0] = node in donated
            try:
                env[node] = func(*args, **kwargs)
            finally:
                _DONATE[0] = False
        for dead in traced.release_after.get(node, ()):
            del env[dead]
    result = torch.fx.node.map_arg(traced.output_argument, lookup)
    if isinstance(result, (tuple, list)):
        if len(result) != 1:
            raise ValueError(f"the function must return one tensor, got {len(result)}")
        result = result[0]
    return result


def _outputs(result, x: torch.Tensor, quantities, groups: int, out_shape) -> dict[str, torch.Tensor]:
    batch = x.shape[0]
    in_shape = tuple(x.shape[1:])
    if not is_cjet(result):  # the output does not depend on the input
        value = torch.as_tensor(result, dtype=x.dtype, device=x.device).expand((batch,) + tuple(out_shape))
        zeros = value.new_zeros((groups, batch) + tuple(out_shape))
        g = value.new_zeros((math.prod(in_shape), batch) + tuple(out_shape))
        result = CJet(value, zeros, g, None, groups)
    res = {}
    for name in quantities:
        if name == "value":
            res[name] = result.v
        elif name == "laplacian":
            q = result.q
            res[name] = result.v.new_zeros(result.v.shape) if q is None else q.sum(0).expand(result.v.shape)
        elif name == "jacobian":
            g = result.g
            if result.shared:
                g = g.unsqueeze(1).expand((g.shape[0], batch) + tuple(g.shape[1:]))
            jac = g.movedim(0, -1)  # [B, *out, R]
            res[name] = jac.reshape((batch,) + tuple(result.v.shape[1:]) + in_shape)
        else:
            raise NotCovered(f"collapsed mode gives value/jacobian/laplacian, not {name}")
    return res


@torch.no_grad()
def collapsed_chunk(traced: TracedFunction, x: torch.Tensor, quantities, out=None) -> dict[str, torch.Tensor]:
    """``value`` / ``jacobian`` / ``laplacian`` of one chunk ``x [B, *in]`` from one collapsed pass."""
    result = run_collapsed(traced, x)
    outputs = _outputs(result, x, quantities, 1, traced.output_shape)
    if out is not None:
        for name, value in outputs.items():
            out[name].copy_(value)
        return out
    return {k: v.to(x.dtype) for k, v in outputs.items()}


def collapsed_cost(in_size: int, groups: int = 1, rows: int | None = None) -> int:
    """Rows carried per value: ``1 + G + R`` (``R = d`` for the exact Laplacian)."""
    return 1 + groups + (in_size if rows is None else rows)


def estimate_bytes_per_sample(traced: TracedFunction, rows: int, itemsize: int) -> int:
    """Peak bytes of one sample's collapsed pass: the two largest live values with all rows, plus temporaries."""
    largest = 1
    for node in traced.active_nodes:
        for value in torch.utils._pytree.tree_flatten(node.meta.get("val"))[0]:
            if isinstance(value, torch.Tensor):
                largest = max(largest, value.numel())
    return int(rows * largest * 4 * itemsize)


CPU_TARGET_BYTES = 24 * 2**20  # largest [rows, B, ...] value per chunk on CPU: beyond it the row loops leave cache
CPU_MIN_CHUNK = 64  # below this, per-op overheads (thread wake-ups) dominate


def auto_collapsed_chunk(traced: TracedFunction, rows: int, x: torch.Tensor, limit_bytes: int | None = None) -> int:
    """Samples per chunk for a collapsed pass with ``rows`` rows, from the trace's largest value.

    On CPU the largest value's rows stay near ``CPU_TARGET_BYTES`` (measured: 64-128
    samples of the 768-wide MLP run faster than 512); everywhere the chunk also fits
    the free memory (``chunking.available_bytes``, measured) with the usual head-room.
    """
    from . import chunking

    largest = 1
    for node in traced.active_nodes:
        for value in torch.utils._pytree.tree_flatten(node.meta.get("val"))[0]:
            if isinstance(value, torch.Tensor):
                largest = max(largest, value.numel())
    value_bytes = rows * largest * x.element_size()
    per_sample = 4 * value_bytes  # argument, result, row temporaries, outputs
    budget = limit_bytes if limit_bytes is not None else chunking.available_bytes(x.device)
    fits = int(budget // max(per_sample * chunking.SAFETY, 1))
    if x.device.type == "cuda":
        cap = chunking.GPU_MAX_CHUNK
    else:
        cap = max(CPU_MIN_CHUNK, min(chunking.CPU_MAX_CHUNK, CPU_TARGET_BYTES // max(value_bytes, 1)))
    return max(1, min(x.shape[0], fits, cap))
