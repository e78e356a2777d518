"""A Hessian-vector product *operator* ``v -> H(x) v`` built once (seed 001, for real).

Seed 001's point: in Hessian-free conjugate gradient every vector depends on
the previous product, so the vectors cannot be given up front (``hvp``);
the first-order graph ``x -> grad f(x)`` is built once with
``create_graph=True`` and every product is ONE backward pass through it with
``retain_graph=True`` - the forward pass and the first backward pass are
never repeated.

* :class:`HessianOperator` ``(fn, *tensors)``: ``fn`` maps the tensors to a
  scalar (seed 001's ``w, x -> mean((w + x) (w + 1))``); ``op(*vs)`` returns
  the tuple ``H v``.
* :func:`per_sample_operator` ``(fn, x)``: ``fn`` maps ONE sample to a scalar;
  ``op(v)`` with ``v [N, *in]`` returns every sample's own ``H(x_n) v_n``
  (the samples are independent, so one backward pass serves all of them).
* :func:`conjugate_gradient`: solves ``H p = b`` (per row of a batch) with
  any such operator - ``H p = -g`` gives the Newton step.

Example:
    >>> w, x = torch.tensor([1.0]), torch.tensor([2.0])
    >>> op = HessianOperator(lambda w, x: ((w + x) * (w + 1)).sum(), w, x)
    >>> [float(t) for t in op.gradient], [float(t) for t in op(torch.ones(1), torch.ones(1))]
    ([5.0, 2.0], [3.0, 1.0])
"""

from __future__ import annotations

from collections.abc import Callable

import torch


class HessianOperator:
    """``v -> H v`` of a scalar function of one or more tensors, with the gradient graph built once.

    Attributes:
        gradient: the gradient at the point (a tuple, detached).
        value: the function value (detached).
        products: how many products have been taken.
    """

    def __init__(self, fn: Callable[..., torch.Tensor], *tensors: torch.Tensor):
        if not tensors:
            raise ValueError("HessianOperator needs at least one tensor to differentiate by")
        self._inputs = tuple(t.detach().requires_grad_(True) for t in tensors)
        with torch.enable_grad():
            value = fn(*self._inputs)
            if value.numel() != 1:
                raise ValueError(f"the function must return a scalar, got shape {tuple(value.shape)}")
            grads = torch.autograd.grad(value, self._inputs, create_graph=True, allow_unused=True)
        self._grads = tuple(torch.zeros_like(t) if g is None else g for t, g in zip(self._inputs, grads))
        self.value = value.detach()
        self.gradient = tuple(g.detach() for g in self._grads)
        self.products = 0

    def __call__(self, *vectors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``H v`` for ``v`` shaped like the tensors: one backward pass through the kept graph."""
        if len(vectors) != len(self._inputs):
            raise ValueError(f"expected {len(self._inputs)} vectors (one per tensor), got {len(vectors)}")
        self.products += 1
        live = [(g, v) for g, v in zip(self._grads, vectors) if g.requires_grad]
        if not live:  # the function is linear: zero Hessian
            return tuple(torch.zeros_like(t) for t in self._inputs)
        outs = torch.autograd.grad(
            [g for g, _ in live], self._inputs, [v.to(g.dtype) for g, v in live], retain_graph=True, allow_unused=True
        )
        return tuple(torch.zeros_like(t) if o is None else o for t, o in zip(self._inputs, outs))


class _PerSample:
    """``v [N, *in] -> [N, *in]``: each sample's ``H(x_n) v_n`` from one graph of ``sum_n f(x_n)``."""

    def __init__(self, fn, x: torch.Tensor):
        def total(z: torch.Tensor) -> torch.Tensor:
            values = torch.vmap(fn)(z)
            if values.shape != z.shape[:1]:  # summed, the outputs would pass as one scalar function
                raise ValueError(f"the function must return a scalar per sample, got shape {tuple(values.shape[1:])}")
            return values.sum()

        self._op = HessianOperator(total, x)
        self.value = None
        self.gradient = self._op.gradient[0]

    @property
    def products(self) -> int:
        return self._op.products

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        return self._op(v)[0]


def per_sample_operator(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> _PerSample:
    """The per-sample HVP operator of a one-sample scalar function at every sample of ``x [N, *in]``.

    Example:
        >>> op = per_sample_operator(lambda z: (z ** 3).sum(), torch.tensor([[1.0, 2.0], [3.0, 0.0]]))
        >>> op(torch.ones(2, 2))
        tensor([[ 6., 12.],
                [18.,  0.]])
    """
    return _PerSample(fn, x)


def conjugate_gradient(
    matvec: Callable[[torch.Tensor], torch.Tensor], b: torch.Tensor, *, tol: float = 1e-10, max_iter: int | None = None
) -> tuple[torch.Tensor, int]:
    """Solve ``A p = b`` for a symmetric ``A`` given as ``matvec``, independently for every row of ``b``.

    Args:
        matvec: ``[N, *in] -> [N, *in]`` (a per-sample operator), or for one system ``[*in] -> [*in]``
            with ``b`` of that shape.
        b: right-hand sides.
        tol: stop when every row's residual norm is below ``tol * |b_row|``.
        max_iter: iterations at most (default: the number of unknowns per row).

    Returns:
        ``(p, iterations)``.
    """
    single = b.ndim <= 1
    rows = b.reshape(1, -1) if single else b.reshape(b.shape[0], -1)
    shape = b.shape

    def apply(p):
        out = matvec(p.reshape(shape))
        return out.reshape(rows.shape)

    max_iter = max_iter or rows.shape[1]
    p = torch.zeros_like(rows)
    r = rows.clone()
    d = r.clone()
    rs = (r * r).sum(1)
    target = (tol * rows.norm(dim=1)) ** 2
    it = 0
    while it < max_iter and bool((rs > target).any()):
        ad = apply(d)
        curvature = (d * ad).sum(1)
        active = rs > target
        alpha = torch.where(
            active, rs / torch.where(curvature == 0, torch.ones_like(curvature), curvature), torch.zeros_like(rs)
        )
        p = p + alpha[:, None] * d
        r = r - alpha[:, None] * ad
        rs_new = (r * r).sum(1)
        beta = torch.where(active, rs_new / torch.where(rs == 0, torch.ones_like(rs), rs), torch.zeros_like(rs))
        d = r + beta[:, None] * d
        rs = rs_new
        it += 1
    return p.reshape(shape), it


def newton_step(op, *, tol: float = 1e-10, max_iter: int | None = None):
    """``p`` with ``H p = -g`` by conjugate gradient, for a :class:`HessianOperator` (all its tensors
    flattened into one system) or a per-sample operator (one system per sample)."""
    if isinstance(op, _PerSample):
        return conjugate_gradient(op, -op.gradient, tol=tol, max_iter=max_iter)
    shapes = [g.shape for g in op.gradient]
    sizes = [g.numel() for g in op.gradient]
    g = torch.cat([t.reshape(-1) for t in op.gradient])

    def matvec(v):
        parts = [piece.reshape(s) for piece, s in zip(torch.split(v, sizes), shapes)]
        return torch.cat([t.reshape(-1) for t in op(*parts)])

    p, it = conjugate_gradient(matvec, -g, tol=tol, max_iter=max_iter)
    return tuple(piece.reshape(s) for piece, s in zip(torch.split(p, sizes), shapes)), it
