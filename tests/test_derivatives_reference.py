"""Checks of the independent references themselves (``tests/references.py``, which every derivative test uses)."""

from __future__ import annotations

import torch
from references import autograd_loop, finite_difference, seed000_loop


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
