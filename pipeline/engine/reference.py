"""Plain ``torch.autograd.grad`` loops: the seed-000 recipe generalised, for tests and benchmarks.

One backward pass per entry of the previous derivative (per output, then per
output and input, ...), with ``create_graph=True`` to go one order higher.
Slow on purpose and independent of the engine (no torch.func, no tracing):
it is the reference every strategy is checked against.

Example:
    >>> out = autograd_loop(lambda x: (x ** 4).sum(), torch.tensor([[1.0, 2.0]]), 3)
    >>> out[3][0, 1, 1, 1]
    tensor(48.)
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
            next_entries = []
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
