"""The HVP operator (seed 001): built once, one backward pass per product, CG against dense solves."""

from __future__ import annotations

import pytest
import torch

from pipeline.engine.hvp_operator import HessianOperator, conjugate_gradient, newton_step, per_sample_operator

F64 = torch.float64


class Counting:
    """Counts the forward calls of a function."""

    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self, *args):
        self.calls += 1
        return self.fn(*args)


def seed001(w, x):
    """Seed 001's function: y = (w + x)(w + 1), averaged over its elements."""
    return (torch.add(w, x) * torch.add(w, 1)).mean()


def test_seed001_products_match_autograd_and_reuse_the_first_order_graph():
    torch.manual_seed(0)
    w, x = torch.randn(10_000, dtype=F64), torch.randn(10_000, dtype=F64)
    fn = Counting(seed001)
    op = HessianOperator(fn, w, x)
    assert fn.calls == 1
    n = w.numel()
    torch.testing.assert_close(op.gradient[0], (2 * w + x + 1) / n)
    torch.testing.assert_close(op.gradient[1], (w + 1) / n)
    for _ in range(5):
        vw, vx = torch.randn(n, dtype=F64), torch.randn(n, dtype=F64)
        hw, hx = op(vw, vx)
        _, (rw, rx) = torch.autograd.functional.hvp(seed001, (w, x), (vw, vx))
        torch.testing.assert_close(hw, rw)
        torch.testing.assert_close(hx, rx)
    assert fn.calls == 1 and op.products == 5  # the first-order pass was never recomputed


def test_seed001_newton_step_by_cg_matches_the_dense_solve():
    torch.manual_seed(1)
    for n in (10_000, 300):
        w, x = torch.randn(n, dtype=F64), torch.randn(n, dtype=F64)
        fn = Counting(seed001)
        op = HessianOperator(fn, w, x)
        (pw, px), iterations = newton_step(op, tol=1e-12)
        assert fn.calls == 1 and op.products == iterations
        g = torch.cat(op.gradient)
        if n <= 300:  # the full dense Hessian, float64, and a dense solve
            flat = torch.func.hessian(lambda z, n=n: seed001(z[:n], z[n:]))(torch.cat([w, x]))
            expected = torch.linalg.solve(flat, -g)
        else:  # 20,000 unknowns: the Hessian only couples (w_i, x_i): a dense solve per 2x2 block
            blocks = torch.tensor([[2.0, 1.0], [1.0, 0.0]], dtype=F64).expand(n, 2, 2) / n
            expected = torch.linalg.solve(blocks, -torch.stack([g[:n], g[n:]], 1)).T.reshape(-1)
        torch.testing.assert_close(torch.cat([pw, px]), expected, rtol=1e-8, atol=1e-10)


def convex(z):
    a = torch.arange(1.0, z.numel() + 1, dtype=z.dtype)
    return torch.nn.functional.softplus(torch.sin(z) * a).sum() + 0.5 * (z * z).sum() + (z[0] * z[-1]) ** 2


def test_per_sample_cg_matches_dense_per_sample_solves_with_one_forward_pass():
    torch.manual_seed(2)
    x = torch.randn(6, 5, dtype=F64)
    fn = Counting(convex)
    op = per_sample_operator(fn, x)
    calls = fn.calls
    p, iterations = conjugate_gradient(op, -op.gradient, tol=1e-12)
    assert fn.calls == calls and op.products == iterations <= 5 + 2
    h = torch.vmap(torch.func.hessian(convex))(x)
    g = torch.vmap(torch.func.grad(convex))(x)
    torch.testing.assert_close(op.gradient, g)
    torch.testing.assert_close(p, torch.linalg.solve(h, -g), rtol=1e-8, atol=1e-10)


def test_per_sample_operator_refuses_a_function_with_several_outputs():
    # it summed the outputs and silently returned the Hessian of their sum
    with pytest.raises(ValueError, match=r"scalar per sample, got shape \(3,\)"):
        per_sample_operator(lambda z: z**3, torch.randn(4, 3))
    assert per_sample_operator(lambda z: (z**3).sum(), torch.ones(2, 3))(torch.ones(2, 3)).tolist() == [[6.0] * 3] * 2
