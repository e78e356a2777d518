"""Hessian-vector products against the full Hessian contracted with the vectors."""

from __future__ import annotations

import pytest
import torch
from references import autograd_loop

from pipeline.engine import hvp

D = torch.float64


def _net(in_size=3, out_size=2, seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(in_size, 12), torch.nn.Tanh(), torch.nn.Linear(12, out_size)).double()


def _reference(fn, x, vectors):
    hessian = autograd_loop(fn, x, 2)[2]  # [N, *out, d, d] for vector inputs
    return torch.einsum("n...im,nkm->nk...i", hessian, vectors)


@pytest.mark.parametrize("method", ["reverse", "taylor", "auto"])
@pytest.mark.parametrize("chunk_size", [1, 3, 1024, "auto"])
def test_hvp_matches_hessian_times_vectors(method, chunk_size):
    net = _net()
    x = torch.randn(7, 3, dtype=D)
    vectors = torch.randn(7, 4, 3, dtype=D)
    result = hvp(net, x, vectors, method=method, chunk_size=chunk_size)
    assert result.shape == (7, 4, 2, 3)
    torch.testing.assert_close(result, _reference(net, x, vectors))


@pytest.mark.parametrize("method", ["reverse", "taylor"])
def test_shared_vectors_and_scalar_output(method):
    fn = lambda v: (v**3).sum() * torch.sin(v[0])  # noqa: E731
    x = torch.randn(5, 3, dtype=D)
    shared = torch.randn(2, 3, dtype=D)
    result = hvp(fn, x, shared, method=method)
    assert result.shape == (5, 2, 3)
    torch.testing.assert_close(result, _reference(fn, x, shared.expand(5, 2, 3)))


def test_matrix_input():
    fn = lambda m: (m @ m).tanh().sum()  # noqa: E731
    x = torch.randn(3, 2, 2, dtype=D)
    vectors = torch.randn(3, 2, 2, 2, dtype=D)
    result = hvp(fn, x, vectors, method="reverse")
    flat_h = autograd_loop(fn, x, 2)[2].reshape(3, 4, 4)
    expected = torch.einsum("nim,nkm->nki", flat_h, vectors.reshape(3, 2, 4)).reshape(3, 2, 2, 2)
    torch.testing.assert_close(result, expected)
    torch.testing.assert_close(hvp(fn, x, vectors, method="taylor"), expected)


@pytest.mark.parametrize("method", ["reverse", "taylor"])
def test_one_linearization_serves_every_vector(method):
    """The function runs a fixed number of times whatever the number of vectors (seed 001's reuse)."""
    net = _net(seed=3)
    calls = []

    def counted(v):
        calls.append(1)
        return net(v)

    x = torch.randn(4, 3, dtype=D)
    for k in (1, 16):  # warm any cache (the footprint is measured once per vector count)
        hvp(counted, x, torch.randn(4, k, 3, dtype=D), method=method)
    counts = []
    for k in (1, 16):
        calls.clear()
        hvp(counted, x, torch.randn(4, k, 3, dtype=D), method=method)
        counts.append(len(calls))
    assert counts[0] == counts[1]


def test_bad_vector_shape_names_the_expected_shapes():
    with pytest.raises(ValueError, match=r"\[N, k, \*in\]"):
        hvp(torch.sin, torch.zeros(4, 3), torch.zeros(4, 2, 5))
    with pytest.raises(ValueError, match="unknown hvp method"):
        hvp(torch.sin, torch.zeros(4, 3), torch.zeros(2, 3), method="fast")
    for method in ("auto", "reverse", "taylor"):
        with pytest.raises(ValueError, match="fn must return ONE tensor for one sample, got tuple"):
            hvp(lambda z: (z.sum(), z.prod()), torch.zeros(4, 3), torch.zeros(2, 3), method=method)
    with pytest.raises(ValueError, match="x must be a floating-point tensor"):
        hvp(torch.sin, torch.ones(4, 3, dtype=torch.long), torch.zeros(2, 3))
