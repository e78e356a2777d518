"""The bi-Laplacian ``sum_ij d4f/dxi2 dxj2``, against float64 torch.func, finite differences and an analytic case."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from pipeline.driver import submit
from pipeline.engine import compute_derivatives
from pipeline.engine.jets import IndexSet
from pipeline.engine.taylor import index_set_for, taylor_cost
from pipeline.runner import InlineExecutor
from pipeline.spec import validate_spec
from pipeline.store import open_results

F64 = torch.float64


def mlp(d, out, seed=0):
    torch.manual_seed(seed)
    net = torch.nn.Sequential(
        torch.nn.Linear(d, 12), torch.nn.Tanh(), torch.nn.Linear(12, 10), torch.nn.Sigmoid(), torch.nn.Linear(10, out)
    ).to(F64)
    if out == 1:
        return lambda x: net(x)[0]  # a scalar output
    return net


def laplacian_fn(fn):
    """One sample's Laplacian per output, by torch.func: trace of the Hessian."""

    def lap(x):
        h = torch.func.hessian(fn)(x)  # [*out, d, d]
        return h.diagonal(dim1=-2, dim2=-1).sum(-1)

    return lap


def reference(fn, x):
    """The Laplacian of the Laplacian, nested torch.func in float64 (independent of the d4 contraction)."""
    return torch.vmap(laplacian_fn(laplacian_fn(fn)))(x)


@pytest.mark.parametrize("d", [1, 3, 17])
@pytest.mark.parametrize("out", [1, 2])
@pytest.mark.parametrize("chunk", [1, 3, "auto"])
def test_bilaplacian_in_taylor_mode_matches_the_laplacian_of_the_laplacian(d, out, chunk):
    fn = mlp(d, out, seed=d)
    x = torch.randn(7, d, dtype=F64)  # 7 samples: chunks of 3 leave an uneven last one
    result = compute_derivatives(fn, x, ("value", "jacobian", "laplacian", "bilaplacian"), chunk_size=chunk)
    assert result.method == "taylor"
    expected = reference(fn, x)
    assert result.outputs["bilaplacian"].shape == expected.shape == ((7,) if out == 1 else (7, out))
    torch.testing.assert_close(result.outputs["bilaplacian"], expected, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(result.outputs["laplacian"], torch.vmap(laplacian_fn(fn))(x), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(result.outputs["jacobian"], torch.vmap(torch.func.jacrev(fn))(x), rtol=1e-10, atol=1e-12)


def test_bilaplacian_against_finite_differences_of_the_laplacian():
    d, h = 3, 1e-3
    fn = mlp(d, 2, seed=5)
    x = torch.randn(4, d, dtype=F64)
    lap = torch.vmap(laplacian_fn(fn))
    fd = sum((lap(x + h * e) - 2 * lap(x) + lap(x - h * e)) / h**2 for e in torch.eye(d, dtype=F64))
    got = compute_derivatives(fn, x, ("bilaplacian",)).outputs["bilaplacian"]
    torch.testing.assert_close(got, fd, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("d", [1, 3, 6])
def test_bilaplacian_of_r4_is_8d_d_plus_2(d):
    """``Delta^2 |x|^4 = 8 d (d + 2)`` everywhere; ``|x|^2`` (a jet that never reaches degree 4) gives 0."""
    x = torch.randn(5, d, dtype=F64)
    quartic = compute_derivatives(lambda z: (z * z).sum() ** 2, x, ("bilaplacian",))
    assert quartic.method == "taylor"
    torch.testing.assert_close(quartic.outputs["bilaplacian"], torch.full((5,), 8.0 * d * (d + 2), dtype=F64))
    quadratic = compute_derivatives(lambda z: (z * z).sum(), x, ("bilaplacian",)).outputs["bilaplacian"]
    torch.testing.assert_close(quadratic, torch.zeros(5, dtype=F64))


@pytest.mark.parametrize("method", ["forward", "reverse", "forward-over-reverse"])
def test_forced_torch_func_methods_contract_their_fourth_derivative(method):
    fn = mlp(3, 2, seed=2)
    x = torch.randn(5, 3, dtype=F64)
    got = compute_derivatives(fn, x, ("value", "bilaplacian"), method=method)
    assert got.method == method
    torch.testing.assert_close(got.outputs["bilaplacian"], reference(fn, x), rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(got.outputs["value"], torch.vmap(fn)(x))


def test_with_a_hessian_the_full_index_set_gives_the_same_bilaplacian():
    fn = mlp(3, 2, seed=3)
    x = torch.randn(5, 3, dtype=F64)
    assert index_set_for(("hessian", "bilaplacian"), 3).name == "full"
    got = compute_derivatives(fn, x, ("hessian", "bilaplacian"), method="taylor").outputs
    torch.testing.assert_close(got["bilaplacian"], reference(fn, x), rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(got["hessian"], torch.vmap(torch.func.hessian(fn))(x), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("d", [1, 2, 5, 10])
def test_the_biharmonic_index_set_is_downward_closed_and_priced_by_its_size(d):
    index_set = IndexSet.biharmonic(d)
    members = set(index_set.indices)
    assert len(members) == len(index_set) == taylor_cost(("bilaplacian",), d) == 1 + 4 * d + 2 * d * (d - 1)
    for alpha in members:
        for beta in itertools.product(*(range(a + 1) for a in alpha)):
            assert beta in members, (alpha, beta)
    assert index_set_for(("value", "laplacian", "bilaplacian"), d) is index_set
    if d == 10:
        assert len(index_set) == 221 and len(IndexSet.full(10, 4)) == 1001


def test_a_job_stores_the_bilaplacian(tmp_path):
    from pipeline.models import build_function

    data = {
        "schema_version": 1,
        "name": "biharmonic",
        "function": {"kind": "mlp", "in_features": 3, "hidden": [16, 16], "out_features": 2, "activation": "tanh"},
        "inputs": {"kind": "normal", "n": 12, "shape": [3], "seed": 1},
        "quantities": ["value", "laplacian", "bilaplacian"],
        "derivatives": {"dtype": "float64"},
        "store": {"path": str(tmp_path / "b.zarr"), "chunk_size": 4},
        "execution": {"shard_size": 8, "retries": 0},
    }
    spec = validate_spec(data)
    submit(spec, InlineExecutor())
    results = open_results(spec.store.path)
    assert results["bilaplacian"].dims == ("sample", "output")
    fn = build_function(spec.function, F64)
    x = torch.as_tensor(results.inputs.values)
    np.testing.assert_allclose(results["bilaplacian"].values, reference(fn, x).detach().numpy(), rtol=1e-9, atol=1e-10)
