"""Independent references for numerical tests: the seed-000 autograd loop and finite differences.

Deliberately naive: a Python loop over samples for the forward pass and a loop
over every output element with ``torch.autograd.grad`` (seed 000's method,
generalised to any shapes and orders). Slow, obviously correct, float64.
"""

from __future__ import annotations

import math

import torch


def autograd_loop(fn, x: torch.Tensor, order: int) -> list[torch.Tensor]:
    """Derivative tensors of orders 0..order: ``[N, *out, *in x k]`` for k = 0..order."""
    x = x.detach().clone().requires_grad_(True)
    n, in_shape = x.shape[0], tuple(x.shape[1:])
    y = torch.stack([fn(x[i]) for i in range(n)])
    tensors = [y]
    current = y
    for _ in range(order):
        flat = current.reshape(n, -1)
        grads = []
        for j in range(flat.shape[1]):
            (g,) = torch.autograd.grad(flat[:, j].sum(), x, create_graph=True, allow_unused=True)
            grads.append(torch.zeros_like(x) if g is None else g)
        current = torch.stack(grads, dim=1).reshape(*current.shape, *in_shape)
        tensors.append(current)
    return [t.detach() for t in tensors]


def finite_difference_jacobian(fn, x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Central differences of ``fn`` per sample, float64: ``[N, *out, *in]``."""
    x = x.to(torch.float64)
    n, in_shape = x.shape[0], tuple(x.shape[1:])
    d = math.prod(in_shape)
    rows = []
    for i in range(n):
        columns = []
        for k in range(d):
            step = torch.zeros(d, dtype=torch.float64)
            step[k] = eps
            step = step.reshape(in_shape)
            columns.append((fn(x[i] + step) - fn(x[i] - step)) / (2 * eps))
        jac = torch.stack(columns, dim=-1)
        rows.append(jac.reshape(*jac.shape[:-1], *in_shape))
    return torch.stack(rows)


def quantities_from_loop(fn, x: torch.Tensor, quantities) -> dict[str, torch.Tensor]:
    """The pipeline's named quantities from the autograd loop."""
    from pipeline.quantities import quantity_order

    order = max(quantity_order(q) for q in quantities)
    tensors = autograd_loop(fn, x, order)
    in_ndim = x.ndim - 1
    out = {}
    for name in quantities:
        if name == "value":
            out[name] = tensors[0]
        elif name == "jacobian":
            out[name] = tensors[1]
        elif name == "hessian":
            out[name] = tensors[2]
        elif name == "laplacian":
            h = tensors[2]
            d = math.prod(x.shape[1:])
            h = h.reshape(*h.shape[: h.ndim - 2 * in_ndim], d, d)
            out[name] = torch.diagonal(h, dim1=-2, dim2=-1).sum(-1)
        else:
            out[name] = tensors[int(name[1:])]
    return out
