"""Every operation the Taylor engine covers, against autograd loops and finite differences (float64)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from references import autograd_loop, finite_difference

from pipeline.engine import compute_derivatives
from pipeline.engine.trace import trace_function

torch.manual_seed(1234)
D = torch.float64
LIN = torch.nn.Linear(3, 4).double()
LIN2 = torch.nn.Linear(4, 3).double()
W34 = torch.randn(3, 4, dtype=D)
B234 = torch.randn(2, 3, 4, dtype=D)
LN = torch.nn.LayerNorm(4).double()
CONV1 = torch.nn.Conv1d(1, 2, 2, padding=1).double()
CONV2 = torch.nn.Conv2d(1, 2, 2, bias=False).double()
with torch.no_grad():
    LN.weight.normal_()
    LN.bias.normal_()


def _inplace(x):
    y = x.clone()
    y.mul_(2.0)
    y[0] = x[1] ** 2
    y[1:] += x[:-1]
    return y * x


def _buffer(x):
    out = torch.zeros(5, dtype=x.dtype)
    out[1:4] = x.sin()
    return out + torch.ones(5, dtype=x.dtype) * x.sum()


# name -> (function of ONE sample [3], input range); positive inputs where the function needs them
OPS = {
    "linear": (LIN, None),
    "tanh": (lambda x: torch.tanh(LIN(x)), None),
    "sigmoid": (lambda x: torch.sigmoid(LIN(x)), None),
    "sin_cos": (lambda x: torch.sin(LIN(x)) * torch.cos(x).sum(), None),
    "exp": (lambda x: torch.exp(LIN(x) / 2), None),
    "log": (lambda x: torch.log(x), "positive"),
    "log1p_expm1": (lambda x: torch.log1p(x.exp()) + torch.expm1(x / 3), None),
    "softplus": (lambda x: F.softplus(LIN(x)).sum() + F.softplus(x, beta=2.0, threshold=1.0), None),
    "gelu": (lambda x: F.gelu(LIN(x)), None),
    "gelu_tanh": (lambda x: F.gelu(LIN(x), approximate="tanh"), None),
    "silu": (lambda x: F.silu(LIN(x)), None),
    "relu": (lambda x: F.relu(LIN(x)) * x.sum(), None),
    "leaky_relu_abs_clamp": (lambda x: F.leaky_relu(x) * x.abs() + x.clamp(-0.5, 0.5) * x[0], None),
    "pow_scalar": (lambda x: x**3 + x**2 + x[0] ** 4, None),
    "pow_fractional": (lambda x: x**2.5, "positive"),
    "pow_tensor_exponent": (lambda x: x ** torch.tensor([1.5, 2.0, 3.0], dtype=D), "positive"),
    "exponent_is_input": (lambda x: 2.0**x + x ** x[0], "positive"),
    "sqrt_rsqrt": (lambda x: torch.sqrt(x) + torch.rsqrt(x), "positive"),
    "reciprocal_div": (lambda x: 1 / x + x / (x.sum() + 1) + x / 3.0, "positive"),
    "erf_sinh_cosh": (lambda x: torch.erf(x) + torch.sinh(x) * torch.cosh(x[0]), None),
    "layer_norm": (lambda x: LN(LIN(x)), None),
    "softmax": (lambda x: torch.softmax(LIN(x), -1), None),
    "log_softmax": (lambda x: torch.log_softmax(LIN(x), 0), None),
    "reshape_permute": (lambda x: torch.outer(x, x.sin()).reshape(9).reshape(3, 3).permute(1, 0).T[1], None),
    "index_select_slice": (lambda x: x[[0, 2]] * x[1] + x[1:] * x[:-1].flip(0) + x.narrow(0, 1, 2) ** 2, None),
    "cat_stack": (lambda x: torch.cat([x, x**2, torch.ones(2, dtype=D)]) + torch.stack([x, x], -1).sum(-1).sum(), None),
    "sum_mean_var_norm": (lambda x: x.sum() * x.mean() + x.var() + torch.linalg.vector_norm(x), None),
    "matmul_vector": (lambda x: W34.T @ x.sin() + x @ W34, None),
    "matmul_jets": (lambda x: (torch.outer(x, x) @ torch.outer(x, x.cos())).sum(0), None),
    "bmm_einsum": (lambda x: torch.einsum("bij,i->bj", B234, x * x[0]) + torch.einsum("i,j->ij", x, x).sum(0)[0], None),
    "where_maximum": (lambda x: torch.where(x > 0.1, x**2, x**3) + torch.maximum(x, x.sin()), None),
    "cumsum": (lambda x: x.cumsum(0) ** 2, None),
    "inplace_ops": (_inplace, None),
    "constants_inside": (_buffer, None),
    "expand_unsqueeze": (lambda x: (x.unsqueeze(0).expand(2, 3) * x[:2].unsqueeze(1)).sum(0), None),
    "two_layers": (lambda x: LIN2(torch.tanh(LIN(x))), None),
    "conv1d_conv2d": (
        lambda x: (
            torch.tanh(CONV1(x.reshape(1, 3))).sum(0) + CONV2(torch.outer(x, x.sin()).reshape(1, 3, 3)).sum(0).flatten()
        ),
        None,
    ),
}


def _inputs(kind, n=4, shape=(3,)):
    x = torch.randn((n,) + shape, dtype=D)
    if kind == "positive":
        x = x.abs() + 0.5
    return x


@pytest.mark.parametrize("name", sorted(OPS))
def test_op_matches_autograd_loop_up_to_third_order(name):
    fn, kind = OPS[name]
    x = _inputs(kind)
    result = compute_derivatives(fn, x, ("value", "jacobian", "hessian", "d3", "laplacian"), method="taylor")
    assert result.method == "taylor", result.fallback_reason
    ref = autograd_loop(fn, x, 3)
    out = result.outputs
    torch.testing.assert_close(out["value"], ref[0])
    torch.testing.assert_close(out["jacobian"], ref[1])
    torch.testing.assert_close(out["hessian"], ref[2])
    torch.testing.assert_close(out["laplacian"], ref[2].diagonal(dim1=-2, dim2=-1).sum(-1))
    if name != "layer_norm":  # autograd's third derivative of layer_norm is wrong (see the next test)
        torch.testing.assert_close(out["d3"], ref[3])


@pytest.mark.parametrize("name", sorted(OPS))
def test_op_highest_order_matches_finite_differences(name):
    fn, kind = OPS[name]
    x = _inputs(kind, n=3)
    d3 = compute_derivatives(fn, x, ("d3",), method="taylor").outputs["d3"]
    # differentiate the autograd Hessian numerically: independent of both the engine and third-order autograd
    numeric = finite_difference(lambda z: autograd_loop(fn, z, 2)[2], x)
    scale = max(numeric.abs().max().item(), 1.0)
    assert (d3 - numeric).abs().max().item() <= 1e-6 * scale


def test_layer_norm_third_derivative_differs_from_torch_autograd_but_matches_differences():
    """torch 2.13's third derivative through native_layer_norm's backward is off; ours follows the math."""
    fn = OPS["layer_norm"][0]
    x = _inputs(None, n=2)
    ours = compute_derivatives(fn, x, ("d3",), method="taylor").outputs["d3"]
    numeric = finite_difference(lambda z: autograd_loop(fn, z, 2)[2], x)
    torch.testing.assert_close(ours, numeric, atol=1e-6, rtol=1e-6)


def _nested_jacrev(fn, x, order):
    per_sample = fn
    for _ in range(order):
        per_sample = torch.func.jacrev(per_sample)
    return torch.func.vmap(per_sample)(x)


@pytest.mark.parametrize("order", [1, 2, 3, 4])
@pytest.mark.parametrize("in_size", [1, 2, 3, 4])
def test_orders_and_input_sizes_of_an_mlp(order, in_size):
    torch.manual_seed(order * 10 + in_size)
    net = torch.nn.Sequential(
        torch.nn.Linear(in_size, 5), torch.nn.Tanh(), torch.nn.Linear(5, 5), torch.nn.Sigmoid(), torch.nn.Linear(5, 2)
    ).double()
    x = torch.randn(3, in_size, dtype=D)
    name = {1: "jacobian", 2: "hessian"}.get(order, f"d{order}")
    result = compute_derivatives(net, x, (name,), method="taylor")
    assert result.method == "taylor"
    # nested reverse mode (torch.func) everywhere; the plain autograd loop too where it is quick
    torch.testing.assert_close(result.outputs[name], _nested_jacrev(net, x, order))
    if in_size**order <= 27:
        torch.testing.assert_close(result.outputs[name], autograd_loop(net, x, order)[order])


@pytest.mark.parametrize(
    "in_shape, out_fn",
    [
        ((2, 2), lambda x: (x @ x).sin()),  # matrix in, matrix out
        ((2, 2), lambda x: (x[0, 0] * x[1, 1] - x[0, 1] * x[1, 0]) ** 2),  # scalar out
        ((1,), lambda x: torch.cat([x, x**2, x.exp()])),  # one input element
        ((), lambda x: torch.stack([x.sin(), x**3])),  # scalar samples: x is [N]
        ((2, 1, 2), lambda x: x.reshape(4).tanh().reshape(2, 2)),  # 3-d input
        ((4,), lambda x: x[0] * x[1] * x[2] * x[3]),
    ],
)
def test_input_and_output_shapes(in_shape, out_fn):
    x = torch.randn((5,) + in_shape, dtype=D)
    result = compute_derivatives(out_fn, x, ("value", "jacobian", "hessian", "d3"), method="taylor")
    assert result.method == "taylor"
    ref = autograd_loop(out_fn, x, 3)
    for k, name in enumerate(("value", "jacobian", "hessian", "d3")):
        assert result.outputs[name].shape == ref[k].shape
        torch.testing.assert_close(result.outputs[name], ref[k])


def test_trace_is_cached_per_function_shape_and_dtype():
    fn = OPS["tanh"][0]
    first = trace_function(fn, (3,), D, "cpu")
    assert trace_function(fn, (3,), D, "cpu") is first
    assert trace_function(fn, (3,), torch.float32, "cpu") is not first


def test_module_retraced_after_recast():
    net = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Tanh())
    x32 = torch.randn(4, 2)
    compute_derivatives(net, x32, ("hessian",), method="taylor")
    net.double()
    x64 = x32.double()
    result = compute_derivatives(net, x64, ("hessian",), method="taylor")
    assert result.outputs["hessian"].dtype == D
    torch.testing.assert_close(result.outputs["hessian"], autograd_loop(net, x64, 2)[2])


def test_data_dependent_control_flow_is_refused_by_the_tracer():
    def branchy(x):
        return x * 2 if x.sum() > 0 else -x

    traced = trace_function(branchy, (3,), D, "cpu")
    assert not traced.covered and "could not trace" in traced.reason()


def test_output_independent_of_input():
    result = compute_derivatives(
        lambda x: torch.ones(2, dtype=D), torch.randn(3, 2, dtype=D), ("value", "jacobian", "hessian"), method="taylor"
    )
    torch.testing.assert_close(result.outputs["value"], torch.ones(3, 2, dtype=D))
    assert result.outputs["hessian"].abs().max() == 0 and result.outputs["hessian"].shape == (3, 2, 2, 2)


def test_taylor_cost_is_independent_of_output_count():
    from pipeline.engine.taylor import taylor_cost

    assert taylor_cost(("value", "jacobian", "hessian"), 2) == math.comb(4, 2)
    assert taylor_cost(("d4",), 3) == math.comb(7, 4)
    assert taylor_cost(("laplacian",), 10) == 21


def test_many_inputs_build_their_index_set_from_multisets_and_match_torch_func():
    """``IndexSet.full`` lists C(d + K, K) indices directly (it once enumerated (K + 1)^d tuples: 2^60 here)."""
    import itertools

    from pipeline.engine.jets import IndexSet

    assert len(IndexSet.full(60, 2)) == math.comb(62, 2)
    small = IndexSet.full(4, 3)
    assert sorted(small.indices) == sorted(a for a in itertools.product(range(4), repeat=4) if sum(a) <= 3)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(60, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2)).double()
    x = torch.randn(5, 60, dtype=torch.float64)
    result = compute_derivatives(net, x, ("jacobian", "hessian"), method="taylor")
    assert result.method == "taylor"
    torch.testing.assert_close(
        result.outputs["jacobian"], torch.vmap(torch.func.jacrev(net))(x), rtol=1e-10, atol=1e-12
    )
    torch.testing.assert_close(
        result.outputs["hessian"], torch.vmap(torch.func.hessian(net))(x), rtol=1e-10, atol=1e-12
    )
