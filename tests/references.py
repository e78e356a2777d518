"""Independent references for the numerical tests: the one autograd loop, finite differences, seed 000 verbatim.

Deliberately naive and independent of the engine (no torch.func, no
tracing): a Python loop over samples for the forward pass and one
``torch.autograd.grad`` per entry of the previous derivative (seed 000's
method, generalised to any shapes and orders). Slow, obviously correct; the
tests call them in float64. ``test_derivatives_reference.py`` checks the
references themselves (against a polynomial by hand, sine's derivative, and
each other).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch


def autograd_loop(fn: Callable, x: torch.Tensor, order: int) -> list[torch.Tensor]:
    """``[f, Df, ..., D^order f]`` with shapes ``[N, *out, *in * k]`` by nested autograd loops.

    The samples are independent, so the gradient of the batch sum of one
    entry gives that entry's derivative for every sample at once. Entries are
    kept as separate tensors (never stacked before differentiating again), so
    each backward pass walks only its own entry's graph - as the seed does
    with ``dx[:, 0]``.

    Example: ``autograd_loop(lambda v: (v ** 4).sum(), torch.tensor([[1.0, 2.0]]), 3)[3][0, 1, 1, 1]``
    is ``24 * 2 = 48``.
    """
    in_shape = tuple(x.shape[1:])
    in_size = math.prod(in_shape)
    n = x.shape[0]
    with torch.enable_grad():
        xg = x.detach().clone().requires_grad_(True)
        value = torch.stack([fn(xg[i]) for i in range(n)])
        out_shape = tuple(value.shape[1:])
        results = [value.detach()]
        flat = value.reshape(n, -1)
        entries = [flat[:, e] for e in range(flat.shape[1])]  # each [N]
        for k in range(1, order + 1):
            next_entries: list[torch.Tensor] = []
            for target in entries:
                grad = None
                if target.requires_grad:
                    (grad,) = torch.autograd.grad(
                        target.sum(), xg, create_graph=k < order, retain_graph=True, allow_unused=True
                    )
                if grad is None:
                    grad = torch.zeros_like(xg)
                grad = grad.reshape(n, in_size)
                next_entries.extend(grad[:, i] for i in range(in_size))
            entries = next_entries
            stacked = torch.stack([e.detach() for e in entries], dim=1)
            results.append(stacked.reshape((n,) + out_shape + in_shape * k))
    return results


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


def finite_difference(g, x: torch.Tensor, step: float = 1e-5) -> torch.Tensor:
    """Central differences of ``g: [N, *in] -> [N, ...]`` along every input element -> ``[N, ..., *in]``."""
    in_shape = tuple(x.shape[1:])
    columns = []
    for i in range(math.prod(in_shape)):
        e = torch.zeros(math.prod(in_shape), dtype=x.dtype)
        e[i] = step
        e = e.reshape(in_shape)
        columns.append((g(x + e) - g(x - e)) / (2 * step))
    stacked = torch.stack(columns, dim=-1)
    return stacked.reshape(stacked.shape[:-1] + in_shape)


def seed000_loop(net, x: torch.Tensor):
    """The seed-000 recipe verbatim (one grad per output, then per output and input) for [N, d] -> [N, m]."""
    x = x.detach().clone().requires_grad_(True)
    output = net(x)

    def continuous_diff(x, y):
        return torch.autograd.grad(y, x, torch.ones_like(y), retain_graph=True, create_graph=True)[0]

    jac, hess = [], []
    for k in range(output.shape[1]):
        y = output[:, k]
        dx = continuous_diff(x, y)
        jac.append(dx)
        hess.append(torch.stack([continuous_diff(x, dx[:, i]) for i in range(x.shape[1])], dim=-2))
    return output.detach(), torch.stack(jac, 1).detach(), torch.stack(hess, 1).detach()
