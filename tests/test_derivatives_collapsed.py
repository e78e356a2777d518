"""Collapsed Taylor mode and the second-order operators, against float64 torch.func and finite differences."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pipeline.driver import submit
from pipeline.engine import compute_derivatives, compute_operators
from pipeline.engine.operators import OperatorOptions
from pipeline.runner import InlineExecutor
from pipeline.spec import validate_spec
from pipeline.store import open_results

F64 = torch.float64


def mlp(d, out, seed=0, act=torch.nn.Tanh):
    torch.manual_seed(seed)
    layers = [torch.nn.Linear(d, 12), act(), torch.nn.Linear(12, 10), torch.nn.Tanh(), torch.nn.Linear(10, out)]
    net = torch.nn.Sequential(*layers).to(F64)
    if out == 1:
        return lambda x: net(x)[0]  # a scalar output
    return net


def hessians(fn, x):
    return torch.vmap(torch.func.hessian(fn))(x)  # [N, *out, d, d]


def fd_laplacian(fn, x, h=1e-4):
    """Central second differences along every axis, float64."""
    total = 0
    with torch.no_grad():
        f0 = torch.stack([fn(xi) for xi in x])
        for i in range(x.shape[1]):
            e = torch.zeros(x.shape[1], dtype=F64)
            e[i] = h
            fp = torch.stack([fn(xi + e) for xi in x])
            fm = torch.stack([fn(xi - e) for xi in x])
            total = total + (fp - 2 * f0 + fm) / h**2
    return total


@pytest.mark.parametrize("d", [1, 3, 17])
@pytest.mark.parametrize("out", [1, 4])
@pytest.mark.parametrize("chunk", [1, 3, "auto"])
def test_laplacian_is_collapsed_and_exact(d, out, chunk):
    fn = mlp(d, out, seed=d + out)
    x = torch.randn(7, d, dtype=F64)
    result = compute_derivatives(fn, x, ("value", "jacobian", "laplacian"), chunk_size=chunk)
    assert result.method == "collapsed"
    h = hessians(fn, x)
    torch.testing.assert_close(
        result.outputs["laplacian"], h.diagonal(dim1=-2, dim2=-1).sum(-1), rtol=1e-10, atol=1e-12
    )
    torch.testing.assert_close(result.outputs["jacobian"], torch.vmap(torch.func.jacrev(fn))(x), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(result.outputs["value"], torch.stack([fn(xi) for xi in x]).detach())
    if chunk == 3:
        torch.testing.assert_close(result.outputs["laplacian"], fd_laplacian(fn, x), rtol=1e-5, atol=1e-6)


def _ops(x):
    """Products of two input-dependent values, many unary functions, reductions, a division, relu."""
    a = torch.sin(x) * torch.exp(0.3 * x)
    b = torch.nn.functional.softplus(x[..., :2].sum() - x) / (2.0 + torch.cos(x))
    c = torch.relu(x - 0.1) * x + torch.sigmoid(x) ** 3 + torch.sqrt(1.5 + torch.tanh(x))
    return torch.stack([(a * b).sum(), c.mean() + torch.log1p(x * x).sum(), torch.nn.functional.gelu(x).sum()])


@pytest.mark.parametrize("d", [1, 3, 17])
def test_covered_ops_match_torch_func(d):
    x = torch.randn(5, d, dtype=F64) * 0.7
    fn = _ops if d > 1 else (lambda z: _ops(torch.cat([z, z * 0.5])))
    result = compute_derivatives(fn, x, ("laplacian",), chunk_size=2)
    assert result.method == "collapsed"
    torch.testing.assert_close(
        result.outputs["laplacian"], hessians(fn, x).diagonal(dim1=-2, dim2=-1).sum(-1), rtol=1e-9, atol=1e-10
    )


def test_leaky_relu_keeps_its_slope_in_float64():
    # the slope was drawn from torch.where(mask, 1.0, slope): float32, so 0.2 became 0.2000000030 and the
    # float64 value, Jacobian and Laplacian were wrong by ~1e-8 relative
    def fn(z):
        return torch.sin(torch.nn.functional.leaky_relu(z, 0.2).sum() ** 2)

    x = torch.tensor([[-1.3, -0.7, -2.1], [0.4, -0.9, 1.1]], dtype=F64)
    result = compute_derivatives(fn, x, ("value", "jacobian", "laplacian"))
    assert result.method == "collapsed"
    torch.testing.assert_close(result.outputs["value"], torch.stack([fn(xi) for xi in x]), rtol=1e-13, atol=1e-14)
    torch.testing.assert_close(result.outputs["jacobian"], torch.vmap(torch.func.jacrev(fn))(x), rtol=1e-12, atol=1e-13)
    expected = hessians(fn, x).diagonal(dim1=-2, dim2=-1).sum(-1)
    torch.testing.assert_close(result.outputs["laplacian"], expected, rtol=1e-12, atol=1e-12)


def test_an_uncovered_op_falls_back_to_taylor_with_the_same_numbers():
    torch.manual_seed(1)
    net = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.LayerNorm(8), torch.nn.Tanh(), torch.nn.Linear(8, 2)).to(
        F64
    )
    x = torch.randn(6, 3, dtype=F64)
    result = compute_derivatives(net, x, ("laplacian",))
    assert result.method == "taylor"
    forced = compute_derivatives(net, x, ("laplacian",), method="collapsed")
    assert forced.method == "taylor" and "collapsed mode not used" in forced.fallback_reason
    torch.testing.assert_close(result.outputs["laplacian"], fd_laplacian(net, x), rtol=1e-5, atol=1e-6)


RUN_TIME_REFUSALS = pytest.mark.parametrize(
    "fn",
    [lambda z: torch.nn.functional.gelu(z, approximate="tanh").sum(), lambda z: torch.pow(2.0, z).sum()],
    ids=["gelu-tanh", "scalar-base-pow"],
)


@RUN_TIME_REFUSALS
def test_a_forced_collapsed_laplacian_says_why_it_fell_back(fn):
    """method="collapsed" whose rules refuse at run time: Taylor computes it, and the result says why.

    The reason was lost (``fallback_reason=None``, as if collapsed mode had run or been declined by auto).
    """
    x = torch.randn(5, 3, dtype=F64)
    forced = compute_derivatives(fn, x, ("value", "laplacian"), method="collapsed")
    assert forced.method == "taylor"
    assert forced.fallback_reason is not None and forced.fallback_reason.startswith("collapsed mode failed (")
    expected = hessians(fn, x).diagonal(dim1=-2, dim2=-1).sum(-1)
    torch.testing.assert_close(forced.outputs["laplacian"], expected, rtol=1e-10, atol=1e-12)
    chosen = compute_derivatives(fn, x, ("value", "laplacian"))  # auto: Taylor is no fallback, no reason
    assert chosen.method == "taylor" and chosen.fallback_reason is None


@RUN_TIME_REFUSALS
@pytest.mark.parametrize("method", ["auto", "collapsed", "taylor"])
def test_operators_fall_back_when_a_collapsed_rule_refuses_at_run_time(fn, method):
    # these ops have collapsed rules that refuse the argument form only when they run: compute_operators
    # raised NotCovered instead of contracting a Hessian, as compute_derivatives falls back for a Laplacian
    x = torch.randn(4, 3, dtype=F64)
    factor = torch.randn(3, 2, dtype=F64)
    options = OperatorOptions(factor=factor, samples=4, seed=3)
    result = compute_operators(fn, x, ("weighted_laplacian", "laplacian_estimate"), options, method=method)
    assert "collapsed" in result.fallback_reason
    h = hessians(fn, x)
    expected = torch.einsum("nij,ij->n", h, factor @ factor.T)
    torch.testing.assert_close(result.outputs["weighted_laplacian"], expected, rtol=1e-10, atol=1e-12)
    forced = compute_operators(fn, x, ("laplacian_estimate",), options, method="forward")
    torch.testing.assert_close(
        result.outputs["laplacian_estimate"], forced.outputs["laplacian_estimate"], rtol=1e-10, atol=1e-12
    )


@pytest.mark.parametrize("d", [1, 3, 17])
@pytest.mark.parametrize("out", [1, 4])
def test_weighted_laplacian_constant_and_state_dependent_factor(d, out):
    fn = mlp(d, out, seed=2 * d + out)
    x = torch.randn(5, d, dtype=F64)
    h = hessians(fn, x)
    s = torch.randn(d, 2, dtype=F64)
    result = compute_derivatives(fn, x, ("weighted_laplacian",), options=OperatorOptions(factor=s), chunk_size=3)
    assert result.method == "collapsed"
    expected = torch.einsum("b...ij,ij->b...", h, s @ s.T)
    torch.testing.assert_close(result.outputs["weighted_laplacian"], expected, rtol=1e-10, atol=1e-12)

    def factor(z):  # a diffusion matrix that depends on the state
        return torch.eye(d, 3, dtype=z.dtype) * (1 + z[0] ** 2) + 0.1 * torch.outer(
            torch.sin(z), torch.ones(3, dtype=z.dtype)
        )

    result = compute_derivatives(fn, x, ("weighted_laplacian",), options=OperatorOptions(factor=factor), chunk_size=1)
    c = torch.vmap(lambda z: factor(z) @ factor(z).T)(x)
    torch.testing.assert_close(
        result.outputs["weighted_laplacian"], torch.einsum("b...ij,bij->b...", h, c), rtol=1e-10, atol=1e-12
    )
    # a forced torch.func method contracts its Hessian: the same numbers
    forced = compute_derivatives(fn, x, ("weighted_laplacian",), options=OperatorOptions(factor=s), method="forward")
    assert forced.method == "forward"
    torch.testing.assert_close(forced.outputs["weighted_laplacian"], expected, rtol=1e-10, atol=1e-12)


def test_compute_operators_called_directly_takes_aliases_and_adds_the_stderr():
    # compute_operators took its quantities verbatim: "d2" was a KeyError and an estimate came without its stderr
    fn = mlp(3, 2, seed=5)
    x = torch.randn(4, 3, dtype=F64)
    for method in ("auto", "forward"):
        result = compute_operators(fn, x, ("laplacian_estimate", "d2"), method=method)
        assert set(result.outputs) == {"laplacian_estimate", "laplacian_estimate_stderr", "hessian"}
        torch.testing.assert_close(result.outputs["hessian"], hessians(fn, x))


def test_options_as_a_dict_are_the_operator_options():
    # a dict was "'dict' object has no attribute 'checked'"
    fn, x = mlp(3, 2, seed=6), torch.randn(4, 3, dtype=F64)
    quantities = ("laplacian_estimate", "weighted_laplacian")
    s = torch.randn(3, 2, dtype=F64)
    as_dict = compute_derivatives(fn, x, quantities, options={"samples": 16, "seed": 5, "factor": s})
    expected = compute_derivatives(fn, x, quantities, options=OperatorOptions(samples=16, seed=5, factor=s))
    for name, value in expected.outputs.items():
        torch.testing.assert_close(as_dict.outputs[name], value)


def test_estimate_does_not_depend_on_chunking_or_the_shard_it_is_in():
    fn = mlp(5, 2, seed=3)
    x = torch.randn(11, 5, dtype=F64)
    options = OperatorOptions(samples=8, seed=7)
    whole = compute_derivatives(fn, x, ("laplacian_estimate",), options=options, chunk_size="auto").outputs
    assert set(whole) == {"laplacian_estimate", "laplacian_estimate_stderr"}
    for chunk in (1, 3, 4):
        other = compute_derivatives(fn, x, ("laplacian_estimate",), options=options, chunk_size=chunk).outputs
        torch.testing.assert_close(other["laplacian_estimate"], whole["laplacian_estimate"], rtol=1e-13, atol=1e-14)
    tail = compute_derivatives(fn, x[4:], ("laplacian_estimate",), options=options, offset=4).outputs
    torch.testing.assert_close(tail["laplacian_estimate"], whole["laplacian_estimate"][4:], rtol=1e-13, atol=1e-14)
    # a forced torch.func method uses the very same directions
    forced = compute_derivatives(fn, x, ("laplacian_estimate",), options=options, method="forward").outputs
    torch.testing.assert_close(forced["laplacian_estimate"], whole["laplacian_estimate"], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(
        forced["laplacian_estimate_stderr"], whole["laplacian_estimate_stderr"], rtol=1e-10, atol=1e-12
    )
    # another seed gives other directions
    moved = compute_derivatives(fn, x, ("laplacian_estimate",), options=OperatorOptions(samples=8, seed=8)).outputs
    assert not torch.allclose(moved["laplacian_estimate"], whole["laplacian_estimate"])


@pytest.mark.parametrize("distribution", ["rademacher", "gaussian"])
@pytest.mark.parametrize("weighted", [False, True])
def test_estimates_are_unbiased_within_their_standard_error(distribution, weighted):
    d, seeds = 17, 300
    fn = mlp(d, 1, seed=4)
    x = torch.randn(2, d, dtype=F64)
    h = hessians(fn, x)
    s = torch.randn(d, 4, dtype=F64) if weighted else None
    exact = torch.einsum("bij,ij->b", h, s @ s.T) if weighted else h.diagonal(dim1=-2, dim2=-1).sum(-1)
    name = "weighted_laplacian_estimate" if weighted else "laplacian_estimate"
    # one call with many samples: 300 seeds' worth of sample indices, each a fresh set of directions
    many = x.repeat(seeds, 1)
    out = compute_derivatives(
        fn, many, (name,), options=OperatorOptions(factor=s, samples=16, seed=11, distribution=distribution)
    ).outputs
    est = out[name].reshape(seeds, 2)
    stderr = out[name + "_stderr"].reshape(seeds, 2)
    mean_error = (est.mean(0) - exact).abs()
    spread = est.std(0) / math.sqrt(seeds)
    assert (mean_error < 4 * spread).all(), (mean_error, spread)
    # the stored standard error describes the scatter of one estimate
    ratio = stderr.pow(2).mean(0).sqrt() / est.std(0)
    assert ((ratio > 0.7) & (ratio < 1.4)).all(), ratio


def _job(tmp_path, name, **derivatives):
    data = {
        "schema_version": 1,
        "name": "ops",
        "function": {"kind": "mlp", "in_features": 3, "hidden": [16, 16], "out_features": 2, "activation": "tanh"},
        "inputs": {"kind": "normal", "n": 24, "shape": [3], "seed": 1},
        "quantities": ["value", "laplacian", "weighted_laplacian", "laplacian_estimate"],
        "derivatives": {
            "dtype": "float64",
            "factor": [[1.0, 0.0], [0.5, 1.0], [0.0, 2.0]],
            "samples": 8,
            "seed": 3,
            **derivatives,
        },
        "store": {"path": str(tmp_path / name), "chunk_size": 4},
        "execution": {"shard_size": 8, "retries": 0},
    }
    return validate_spec(data)


def test_a_job_stores_the_operators_and_the_standard_error_the_same_for_any_sharding(tmp_path):
    from pipeline.models import build_function

    spec = _job(tmp_path, "a.zarr")
    assert spec.quantities[-1] == "laplacian_estimate_stderr"
    submit(spec, InlineExecutor())
    other = _job(tmp_path, "b.zarr", chunk_size=3)
    other = other.model_copy(update={"execution": other.execution.model_copy(update={"shard_size": 12})})
    submit(other, InlineExecutor())
    a, b = open_results(spec.store.path), open_results(other.store.path)
    fn = build_function(spec.function, F64)
    x = torch.as_tensor(a.inputs.values)
    h = hessians(fn, x).detach()
    s = torch.tensor(spec.derivatives.factor, dtype=F64)
    np.testing.assert_allclose(
        a["weighted_laplacian"].values, torch.einsum("bkij,ij->bk", h, s @ s.T).numpy(), rtol=1e-10, atol=1e-12
    )
    np.testing.assert_allclose(
        a["laplacian"].values, h.diagonal(dim1=-2, dim2=-1).sum(-1).numpy(), rtol=1e-10, atol=1e-12
    )
    for name in ("laplacian_estimate", "laplacian_estimate_stderr"):
        assert a[name].shape == (24, 2)
        np.testing.assert_allclose(a[name].values, b[name].values, rtol=1e-12, atol=1e-13, err_msg=name)


@pytest.mark.parametrize("groups", [1, 4])
def test_wide_rows_take_the_row_loop_and_match_the_hessian(groups):
    """Rows of at least ``LOOP_MIN_ROW`` elements sum their squares row by row on CPU: same numbers."""
    from pipeline.engine import collapsed

    torch.manual_seed(5)
    net = torch.nn.Sequential(torch.nn.Linear(3, 160), torch.nn.Tanh(), torch.nn.Linear(160, 2)).to(F64)
    x = torch.randn(40, 3, dtype=F64)
    assert 40 * 160 >= collapsed.LOOP_MIN_ROW  # one chunk's first-order row after the first layer
    h = hessians(net, x)
    exact = h.diagonal(dim1=-2, dim2=-1).sum(-1)
    if groups == 1:
        got = compute_derivatives(net, x, ("laplacian",), chunk_size=40)
        assert got.method == "collapsed"
        torch.testing.assert_close(got.outputs["laplacian"], exact, rtol=1e-10, atol=1e-12)
        return
    # groups > 1: the estimate's group sums, against the same directions contracting the Hessian (forced method)
    options = OperatorOptions(samples=8, groups=groups, seed=2)
    got = compute_derivatives(net, x, ("laplacian_estimate",), options=options, chunk_size=40).outputs
    forced = compute_derivatives(net, x, ("laplacian_estimate",), options=options, method="forward").outputs
    for name in ("laplacian_estimate", "laplacian_estimate_stderr"):
        torch.testing.assert_close(got[name], forced[name], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("factor", ["none", "constant", "function"])
def test_shared_directions_are_the_same_for_every_sample_chunk_and_method(factor):
    """``directions="shared"``: one set of directions for all samples, from the seed alone."""
    from pipeline.engine.operators import random_directions

    d = 5
    fn = mlp(d, 2, seed=3)
    x = torch.randn(11, d, dtype=F64)
    s = torch.randn(d, 3, dtype=F64)
    weights = {"none": None, "constant": s, "function": lambda z: s * (1 + z[:, None] ** 2)}[factor]
    name = "laplacian_estimate" if factor == "none" else "weighted_laplacian_estimate"
    options = OperatorOptions(factor=weights, samples=8, seed=7, directions="shared")
    whole = compute_derivatives(fn, x, (name,), options=options, chunk_size="auto")
    assert whole.method == "collapsed"
    got = whole.outputs
    # the Hessian contracted with the same directions for every sample: an independent float64 reference
    z = random_directions(1, 0, d if factor == "none" else 3, options, F64, "cpu")
    assert z.shape == (8, d if factor == "none" else 3)
    assert torch.equal(z, random_directions(4, 900, z.shape[1], options, F64, "cpu"))  # no sample index in it
    h = hessians(fn, x)  # [N, out, d, d]
    if factor == "none":
        v = z.expand(x.shape[0], 8, d)
    elif factor == "constant":
        v = torch.einsum("dk,rk->rd", s, z).expand(x.shape[0], 8, d)
    else:
        v = torch.einsum("bdk,rk->brd", torch.vmap(weights)(x), z)
    quad = torch.einsum("brd,bode,bre->bro", v, h, v)  # z_r^T H z_r per sample, output, direction
    torch.testing.assert_close(got[name], quad.mean(1), rtol=1e-10, atol=1e-12)
    means = quad.reshape(x.shape[0], 8, 1, 2).mean(2)  # 8 groups of one direction each
    torch.testing.assert_close(got[name + "_stderr"], means.std(1) / math.sqrt(8), rtol=1e-10, atol=1e-12)
    for chunk in (1, 3, 4):
        other = compute_derivatives(fn, x, (name,), options=options, chunk_size=chunk).outputs
        torch.testing.assert_close(other[name], got[name], rtol=1e-13, atol=1e-14)
    tail = compute_derivatives(fn, x[4:], (name,), options=options, offset=4).outputs
    torch.testing.assert_close(tail[name], got[name][4:], rtol=1e-13, atol=1e-14)
    forced = compute_derivatives(fn, x, (name,), options=options, method="forward").outputs
    torch.testing.assert_close(forced[name], got[name], rtol=1e-10, atol=1e-12)
    # per-sample directions are other directions
    per_sample = OperatorOptions(factor=weights, samples=8, seed=7)
    assert not torch.allclose(compute_derivatives(fn, x, (name,), options=per_sample).outputs[name], got[name])


@pytest.mark.parametrize("distribution", ["rademacher", "gaussian"])
def test_shared_estimates_are_unbiased_over_seeds(distribution):
    d, seeds = 17, 200
    fn = mlp(d, 1, seed=4)
    x = torch.randn(2, d, dtype=F64)
    exact = hessians(fn, x).diagonal(dim1=-2, dim2=-1).sum(-1)
    est, stderr = [], []
    for seed in range(seeds):  # the directions come from the seed alone: one call per seed
        options = OperatorOptions(samples=16, seed=seed, distribution=distribution, directions="shared")
        out = compute_derivatives(fn, x, ("laplacian_estimate",), options=options).outputs
        est.append(out["laplacian_estimate"])
        stderr.append(out["laplacian_estimate_stderr"])
    est, stderr = torch.stack(est), torch.stack(stderr)
    assert (est.mean(0) - exact).abs().max() < 4 * (est.std(0) / math.sqrt(seeds)).min()
    ratio = stderr.pow(2).mean(0).sqrt() / est.std(0)
    assert ((ratio > 0.7) & (ratio < 1.4)).all(), ratio


def test_a_job_asks_for_shared_directions_and_the_default_keeps_its_hash(tmp_path):
    from pipeline.spec import SpecError

    plain = _job(tmp_path, "a.zarr")
    assert plain.derivatives.directions == "per_sample"
    assert _job(tmp_path, "a.zarr", directions="per_sample").spec_hash() == plain.spec_hash()
    shared = _job(tmp_path, "s.zarr", directions="shared")
    assert shared.spec_hash() != plain.spec_hash()
    assert shared.derivatives.operator_options().directions == "shared"
    submit(shared, InlineExecutor())
    a = open_results(shared.store.path)
    # every sample's estimate uses the same directions: identical inputs give identical estimates
    fn_x = torch.as_tensor(a.inputs.values)
    from pipeline.models import build_function

    fn = build_function(shared.function, F64)
    again = compute_derivatives(
        fn, fn_x[:1].repeat(3, 1), ("laplacian_estimate",), options=shared.derivatives.operator_options(), offset=17
    ).outputs
    np.testing.assert_allclose(
        again["laplacian_estimate"].numpy(), np.repeat(a["laplacian_estimate"].values[:1], 3, 0), rtol=1e-12, atol=1e-13
    )
    with pytest.raises(SpecError, match=r"derivatives\.directions"):
        _job(tmp_path, "bad.zarr", directions="each")
    assert not (tmp_path / "bad.zarr").exists()
