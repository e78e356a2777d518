"""The polynomial algebra under the Taylor engine: index sets, truncated products, univariate rules."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from references import autograd_loop

from pipeline.engine import jets, univariate
from pipeline.engine.jets import IndexSet, Jet

D = torch.float64


@pytest.mark.parametrize("dim, order", [(1, 3), (2, 2), (3, 4), (4, 2)])
def test_index_sets_sizes_order_and_closure(dim, order):
    full = IndexSet.full(dim, order)
    assert len(full) == math.comb(dim + order, order)
    assert [sum(a) for a in full.indices] == sorted(sum(a) for a in full.indices)
    diagonal = IndexSet.diagonal(dim, order)
    assert len(diagonal) == 1 + dim * order
    for index_set in (full, diagonal):
        members = set(index_set.indices)
        for alpha in members:  # downward closed: every smaller multi-index is there too
            for beta in itertools.product(*(range(a + 1) for a in alpha)):
                assert beta in members
        assert index_set.count(0) == 1 and index_set.count(1) == 1 + dim and index_set.count(order) == len(index_set)


def _poly_product(a: dict, b: dict, order: int) -> dict:
    """Brute-force truncated product of polynomials stored as {multi-index: coefficient}."""
    out: dict = {}
    for (alpha, x), (beta, y) in itertools.product(a.items(), b.items()):
        gamma = tuple(p + q for p, q in zip(alpha, beta))
        if sum(gamma) <= order:
            out[gamma] = out.get(gamma, 0.0) + x * y
    return out


def _as_dict(jet: Jet, sample: int = 0, element: int = 0) -> dict:
    c = jet.coeffs.reshape(jet.coeffs.shape[0], jet.coeffs.shape[1], -1)
    return {alpha: float(c[i, sample, element]) for i, alpha in enumerate(jet.index_set.indices[: c.shape[0]])}


@pytest.mark.parametrize("dim, order, top_a, top_b", [(2, 2, 2, 2), (3, 4, 4, 4), (3, 4, 1, 4), (2, 3, 2, 1)])
def test_truncated_product_matches_brute_force(dim, order, top_a, top_b):
    index_set = IndexSet.full(dim, order)
    torch.manual_seed(dim * order)
    a = Jet(torch.randn(index_set.count(top_a), 2, 3, dtype=D), top_a, index_set)
    b = Jet(torch.randn(index_set.count(top_b), 2, 3, dtype=D), top_b, index_set)
    product = jets.bilinear(a, b)
    square = jets.square(a)
    for element in range(3):
        expected = _poly_product(_as_dict(a, 1, element), _as_dict(b, 1, element), order)
        got = _as_dict(product, 1, element)
        for alpha, value in expected.items():
            assert got[alpha] == pytest.approx(value, abs=1e-12)
        expected_square = _poly_product(_as_dict(a, 1, element), _as_dict(a, 1, element), order)
        got_square = _as_dict(square, 1, element)
        for alpha, value in expected_square.items():
            assert got_square[alpha] == pytest.approx(value, abs=1e-12)


def test_matmul_product_of_two_jets():
    index_set = IndexSet.full(2, 3)
    a = Jet(torch.randn(len(index_set), 4, 2, 3, dtype=D), 3, index_set)
    b = Jet(torch.randn(len(index_set), 4, 3, 5, dtype=D), 3, index_set)
    product = jets.bilinear(a, b, torch.matmul)
    for i in range(2):
        for j in range(5):
            expected: dict = {}
            for m in range(3):
                term = _poly_product(
                    {alpha: float(a.coeffs[p, 0, i, m]) for p, alpha in enumerate(index_set.indices)},
                    {alpha: float(b.coeffs[p, 0, m, j]) for p, alpha in enumerate(index_set.indices)},
                    3,
                )
                for alpha, value in term.items():
                    expected[alpha] = expected.get(alpha, 0.0) + value
            for p, alpha in enumerate(index_set.indices):
                assert float(product.coeffs[p, 0, i, j]) == pytest.approx(expected[alpha], abs=1e-12)


@pytest.mark.parametrize("name", sorted(univariate.SEQUENCES))
def test_univariate_sequences_match_repeated_autograd(name):
    order = 5
    u = torch.linspace(-1.5, 1.5, 7, dtype=D)
    if name in ("log", "sqrt", "rsqrt", "reciprocal"):
        u = u.abs() + 0.3
    if name == "log1p":
        u = u.abs() * 0.5
    seq = univariate.derivative_sequence(name, u, order)
    func = {"reciprocal": torch.reciprocal, "gelu": torch.nn.functional.gelu, "silu": torch.nn.functional.silu}.get(
        name, getattr(torch, name, None)
    )
    ref = autograd_loop(func, u, order)  # u [7]: seven 0-d samples, so each order is [7]
    torch.testing.assert_close(seq[0], ref[0])
    for j in range(1, order + 1):
        torch.testing.assert_close(seq[j], ref[j], msg=f"{name} derivative {j}")


def test_power_of_integer_exponent_stops_and_is_exact_at_zero():
    u = torch.tensor([0.0, 2.0], dtype=D)
    seq = univariate.power(u, 4, 6)
    assert len(seq) == 5
    torch.testing.assert_close(seq[4], torch.tensor([24.0, 24.0], dtype=D))
    torch.testing.assert_close(seq[3], 24 * u)


def test_softplus_follows_torch_threshold():
    u = torch.tensor([-3.0, 0.0, 30.0], dtype=D)
    seq = univariate.softplus(u, 3)
    torch.testing.assert_close(seq[0], torch.nn.functional.softplus(u))
    assert float(seq[1][2]) == 1.0 and float(seq[2][2]) == 0.0  # linear branch above the threshold


def test_compose_matches_brute_force_power_series():
    index_set = IndexSet.full(2, 4)
    torch.manual_seed(0)
    u = Jet(torch.randn(len(index_set), 1, 1, dtype=D) * 0.5, 4, index_set)
    seq = univariate.derivative_sequence("exp", u.coeffs[0], 4)
    composed = _as_dict(jets.compose(u, seq))
    # exp(u0 + h) = exp(u0) * sum_j h^j / j!
    poly = _as_dict(u)
    h = {a: v for a, v in poly.items() if sum(a) > 0}
    total = {(0, 0): 1.0}
    power = {(0, 0): 1.0}
    for j in range(1, 5):
        power = _poly_product(power, h, 4)
        for alpha, value in power.items():
            total[alpha] = total.get(alpha, 0.0) + value / math.factorial(j)
    scale = math.exp(poly[(0, 0)])
    for alpha, value in total.items():
        assert composed[alpha] == pytest.approx(scale * value, rel=1e-12, abs=1e-12)


def test_derivative_tensor_from_coefficients_uses_factorials():
    index_set = IndexSet.full(2, 3)
    x = torch.tensor([[1.0, 2.0]], dtype=D)
    jet = jets.input_jet(x, index_set)
    cube = jets.bilinear(jets.square(jet), jet)  # x_i^3 elementwise
    d3 = jets.to_derivative(cube, 3, (2,))
    assert d3.shape == (1, 2, 2, 2, 2)
    assert float(d3[0, 0, 0, 0, 0]) == 6.0 and float(d3[0, 1, 1, 1, 1]) == 6.0 and float(d3[0, 0, 1, 1, 1]) == 0.0
