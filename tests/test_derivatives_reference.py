"""Independent references for the derivative tests, and checks of the references themselves.

The other ``test_derivatives_*`` files import ``finite_difference`` and
``seed000_loop`` from here; ``autograd_loop`` lives in
``pipeline.engine.reference`` because the benchmark uses it too.
"""

from __future__ import annotations

import math

import torch

from pipeline.engine.reference import autograd_loop


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


def test_autograd_loop_matches_polynomial_by_hand():
    x = torch.tensor([[1.0, 2.0], [0.5, -1.0]], dtype=torch.float64)
    # f = x0^3 x1 ; df = [3 x0^2 x1, x0^3] ; d2f = [[6 x0 x1, 3 x0^2], [3 x0^2, 0]]
    value, jac, hess, d3 = autograd_loop(lambda v: v[0] ** 3 * v[1], x, 3)
    x0, x1 = x[:, 0], x[:, 1]
    torch.testing.assert_close(value, x0**3 * x1)
    torch.testing.assert_close(jac, torch.stack([3 * x0**2 * x1, x0**3], -1))
    torch.testing.assert_close(hess[:, 0, 1], 3 * x0**2)
    torch.testing.assert_close(d3[:, 0, 0, 0], 6 * x1)
    torch.testing.assert_close(d3[:, 0, 0, 1], 6 * x0)
    torch.testing.assert_close(d3[:, 1, 1, 1], torch.zeros_like(x0))


def test_finite_difference_of_sine_is_cosine():
    x = torch.linspace(-2, 2, 7, dtype=torch.float64).reshape(7, 1)
    torch.testing.assert_close(finite_difference(torch.sin, x)[..., 0], torch.cos(x), atol=1e-9, rtol=0)


def test_seed000_loop_agrees_with_autograd_loop():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)).double()
    x = torch.randn(5, 2, dtype=torch.float64)
    value, jac, hess = seed000_loop(net, x)
    ref = autograd_loop(net, x, 2)
    for mine, theirs in zip((value, jac, hess), ref):
        torch.testing.assert_close(mine, theirs)
