"""The public interface: methods, chunking, seeds 000 and 002, fallback, precision, dtypes."""

from __future__ import annotations

import dataclasses
import itertools

import pytest
import torch
from references import autograd_loop, finite_difference, seed000_loop

from pipeline.engine import METHODS, DerivativeResult, compute_derivatives, derivatives

D = torch.float64
FORCED = ("taylor", "forward", "reverse", "forward-over-reverse")


def _mlp(sizes, activation=torch.nn.Tanh, seed=0, dtype=D):
    torch.manual_seed(seed)
    layers = []
    for a, b in itertools.pairwise(sizes):
        layers += [torch.nn.Linear(a, b), activation()]
    return torch.nn.Sequential(*layers[:-1]).to(dtype)


class Sin(torch.nn.Module):
    def forward(self, x):
        return torch.sin(x)


def test_public_names():
    assert METHODS == ("auto", "taylor", "forward", "reverse", "forward-over-reverse", "collapsed")
    result = compute_derivatives(torch.sin, torch.zeros(2, 3), ("value",))
    assert isinstance(result, DerivativeResult)
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.method = "other"  # type: ignore[misc]


@pytest.mark.parametrize("method", FORCED + ("auto",))
@pytest.mark.parametrize("chunk_size", [1, 3, 4, "auto"])
def test_seed000_workload_small_against_the_seed_loop(method, chunk_size):
    net = _mlp([2, 16, 16, 10])
    x = torch.randn(10, 2, dtype=D)  # 10 is not a multiple of 3 or 4: uneven last chunk
    result = compute_derivatives(net, x, ("value", "jacobian", "hessian"), method=method, chunk_size=chunk_size)
    value, jac, hess = seed000_loop(net, x)
    torch.testing.assert_close(result.outputs["value"], value)
    torch.testing.assert_close(result.outputs["jacobian"], jac)
    torch.testing.assert_close(result.outputs["hessian"], hess)
    if chunk_size != "auto":
        assert result.chunk_size == chunk_size
    if method in ("auto", "taylor"):
        assert result.method == "taylor" and result.fallback_reason is None
    else:
        assert result.method == method and result.fallback_reason == f"method={method!r} requested"


@pytest.mark.parametrize("method", FORCED)
@pytest.mark.parametrize("chunk_size", [3, "auto"])
def test_a_forced_method_asked_for_one_order_alone_matches_the_seed_loop(method, chunk_size):
    """Without the lower orders the strategies run the plain nesting (no ``has_aux``): same numbers."""
    net = _mlp([2, 16, 16, 10])
    x = torch.randn(10, 2, dtype=D)
    _, jac, hess = seed000_loop(net, x)
    alone = {
        q: compute_derivatives(net, x, (q,), method=method, chunk_size=chunk_size).outputs[q]
        for q in ("jacobian", "hessian", "laplacian")
    }
    torch.testing.assert_close(alone["jacobian"], jac)
    torch.testing.assert_close(alone["hessian"], hess)
    torch.testing.assert_close(alone["laplacian"], hess.diagonal(dim1=-2, dim2=-1).sum(-1))


def test_seed000_full_size_fp32_precision_against_float64():
    """The issue's bar: fp32 Taylor within 1e-5 of float64, relative to each quantity's max abs."""
    net = _mlp([2, 128, 128, 128, 128, 150], dtype=torch.float32)
    x = torch.randn(64, 2)
    result = compute_derivatives(net, x, ("value", "jacobian", "hessian"))
    assert result.method == "taylor"
    reference = compute_derivatives(
        net.double(), x.double(), ("value", "jacobian", "hessian"), method="forward-over-reverse"
    )
    for name, ref in reference.outputs.items():
        ours = result.outputs[name]
        assert ours.dtype == torch.float32
        error = (ours.double() - ref).abs().max() / ref.abs().max()
        assert error <= 1e-5, (name, float(error))


def test_w2_workload_goes_through_taylor_and_matches_nested_forward():
    net = _mlp([3, 16, 16, 16, 8], activation=Sin, seed=2)
    x = torch.randn(5, 3, dtype=D)
    quantities = ("jacobian", "hessian", "d3", "d4")
    result = compute_derivatives(net, x, quantities)
    assert result.method == "taylor"
    reference = compute_derivatives(net, x, quantities, method="forward")
    for name in quantities:
        torch.testing.assert_close(result.outputs[name], reference.outputs[name])
    # and the fourth order against differences of a third order computed by nested jacfwd
    numeric = finite_difference(lambda z: compute_derivatives(net, z, ("d3",), method="forward").outputs["d3"], x[:2])
    torch.testing.assert_close(result.outputs["d4"][:2], numeric, atol=1e-6, rtol=1e-5)


def test_seed002_third_derivative_of_x4():
    x = torch.tensor([[[0.0, 1.0], [2.0, 3.0]]], dtype=D)
    d3 = derivatives(lambda v: (v**4).sum(), x, ("d3",))["d3"][0]
    assert d3.shape == (2, 2, 2, 2, 2, 2)
    # what the seed's repeated grad-of-sum computes: d3 summed over the last two input groups
    torch.testing.assert_close(d3.sum(dim=(2, 3, 4, 5)), torch.tensor([[0.0, 24.0], [48.0, 72.0]], dtype=D))
    # the seed's own recipe, run literally
    xs = x[0].clone().requires_grad_(True)
    f = (xs**4).sum()
    for _ in range(3):
        grads = torch.autograd.grad(f, xs, create_graph=True)[0]
        f = grads.sum()
    torch.testing.assert_close(d3.sum(dim=(2, 3, 4, 5)), grads.detach())
    for i in range(2):
        for j in range(2):
            assert d3[i, j, i, j, i, j] == 24 * x[0, i, j]
    assert d3[0, 1, 0, 1, 1, 0] == 0  # mixed partials of a separable function vanish


@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_forced_methods_agree(order):
    torch.manual_seed(order)
    lin = torch.nn.Linear(3, 2).double()

    def fn(x):  # a matrix output from a [3] input, mixing several covered ops
        y = torch.tanh(lin(x)) * x[0] + torch.exp(x[1:]) / (1 + x[2] ** 2)
        return torch.stack([y, y.sin()])

    x = torch.randn(5, 3, dtype=D)
    name = {1: "jacobian", 2: "hessian"}.get(order, f"d{order}")
    results = {m: compute_derivatives(fn, x, ("value", name, "laplacian"), method=m, chunk_size=2) for m in FORCED}
    base = results["reverse"].outputs
    for method, result in results.items():
        for key in ("value", name, "laplacian"):
            torch.testing.assert_close(result.outputs[key], base[key], msg=f"{method} {key}")


def test_uncovered_operation_falls_back_with_a_reason():
    def fn(x):
        return torch.sort(x).values ** 2 * torch.tanh(x).sum()

    x = torch.randn(7, 3, dtype=D)
    for method in ("auto", "taylor"):
        result = compute_derivatives(fn, x, ("value", "jacobian", "hessian"), method=method, chunk_size=3)
        assert result.method in ("forward", "reverse", "forward-over-reverse")
        assert "sort" in result.fallback_reason
        ref = autograd_loop(fn, x, 2)
        for k, name in enumerate(("value", "jacobian", "hessian")):
            torch.testing.assert_close(result.outputs[name], ref[k])


def test_random_ops_are_not_baked_into_one_draw_for_every_sample():
    # dropout in train mode: the trace used to draw one mask at trace time and reuse it for every
    # sample (and every later call), silently; now it is not covered and torch.func refuses randomness
    net = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.Dropout(0.5), torch.nn.Linear(8, 1)).double().train()
    for fn in (net, lambda z: z + torch.randn(2, dtype=D)):
        with pytest.raises(RuntimeError, match="random"):
            compute_derivatives(fn, torch.zeros(5, 2, dtype=D), ("value", "jacobian"))
    result = compute_derivatives(lambda z: z * torch.ones(2, dtype=D), torch.zeros(5, 2, dtype=D), ("value",))
    assert result.method == "taylor"  # input-independent constants still fold at trace time


def test_switching_train_and_eval_retraces_the_module():
    # the trace cache ignored train/eval: after eval() a trace made in train mode was reused (and the
    # other way round, dropout silently left out in train mode)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.Tanh(), torch.nn.Dropout(0.5), torch.nn.Linear(8, 1))
    net = net.double()
    x = torch.randn(6, 2, dtype=D)
    compute_derivatives(net.eval(), x, ("value",))
    with pytest.raises(RuntimeError, match="random"):
        compute_derivatives(net.train(), x, ("value",))
    result = compute_derivatives(net.eval(), x, ("value",))
    assert result.method == "taylor"
    torch.testing.assert_close(result.outputs["value"], net(x).detach())


@pytest.mark.parametrize("method", ("auto", "forward", "reverse", "forward-over-reverse"))
def test_layer_norm_under_torch_func_gets_right_higher_derivatives(method):
    # torch's layer norm has wrong nested-jacfwd (order >= 2) and nested-jacrev (order >= 3) derivatives;
    # the torch.func strategies differentiate a composite layer norm instead. auto: sort forces a fallback.
    torch.manual_seed(3)
    lin, norm = torch.nn.Linear(3, 4).double(), torch.nn.LayerNorm(4).double()
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-0.5, 0.5)

    def fn(x):
        return norm(lin(x)) * (1 + 0.1 * torch.sort(x).values.sum())

    x = torch.randn(3, 3, dtype=D)
    result = compute_derivatives(fn, x, ("hessian", "d3"), method=method)
    assert result.method in ("forward", "reverse", "forward-over-reverse")
    hessian = autograd_loop(fn, x, 2)[2]  # reverse over reverse: right at order 2
    torch.testing.assert_close(result.outputs["hessian"], hessian)
    numeric = finite_difference(lambda z: autograd_loop(fn, z, 2)[2], x)
    assert (result.outputs["d3"] - numeric).abs().max().item() <= 1e-6 * max(numeric.abs().max().item(), 1.0)
    # and the patch is undone afterwards
    from pipeline.engine.strategies import composite_layer_norm

    assert torch.nn.functional.layer_norm is not composite_layer_norm


def test_a_rule_failing_at_run_time_falls_back_with_the_reason(monkeypatch):
    from pipeline.engine import rule_table

    def broken(*args, **kwargs):
        raise rule_table.NotCovered("tanh with a broken rule")

    monkeypatch.setitem(rule_table.RULES, "tanh", broken)
    net = _mlp([2, 6, 2], seed=9)
    x = torch.randn(5, 2, dtype=D)
    result = compute_derivatives(net, x, ("hessian",), method="taylor")
    assert result.method != "taylor" and "broken rule" in result.fallback_reason
    torch.testing.assert_close(result.outputs["hessian"], autograd_loop(net, x, 2)[2])


def test_laplacian_only_uses_the_diagonal_index_set():
    from pipeline.engine.taylor import index_set_for

    assert index_set_for(("laplacian",), 5).name == "diagonal"
    assert index_set_for(("value", "jacobian", "laplacian"), 5).name == "diagonal"
    assert index_set_for(("hessian", "laplacian"), 5).name == "full"
    net = _mlp([4, 12, 3], activation=torch.nn.SiLU, seed=4)
    x = torch.randn(6, 4, dtype=D)
    result = compute_derivatives(net, x, ("jacobian", "laplacian"), chunk_size=4)
    ref = autograd_loop(net, x, 2)
    torch.testing.assert_close(result.outputs["laplacian"], ref[2].diagonal(dim1=-2, dim2=-1).sum(-1))
    torch.testing.assert_close(result.outputs["jacobian"], ref[1])


def test_aliases_and_only_requested_quantities():
    out = derivatives(torch.sin, torch.randn(4, 2, dtype=D), ("d1", "d2"))
    assert set(out) == {"jacobian", "hessian"}
    assert out["hessian"].shape == (4, 2, 2, 2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("method", ["taylor", "forward"])
def test_results_in_x_dtype(dtype, method):
    net = _mlp([2, 8, 3], dtype=dtype)
    out = derivatives(net, torch.randn(5, 2, dtype=dtype), ("value", "hessian", "laplacian"), method=method)
    assert all(t.dtype == dtype and t.device.type == "cpu" for t in out.values())


def test_errors_name_the_bad_value_and_the_valid_ones():
    x = torch.randn(3, 2)
    with pytest.raises(ValueError, match=r"'taylr'.*auto, taylor, forward, reverse, forward-over-reverse"):
        derivatives(torch.sin, x, method="taylr")
    with pytest.raises(ValueError, match=r"'hesian'.*value, jacobian, hessian, laplacian"):
        derivatives(torch.sin, x, ("hesian",))
    with pytest.raises(ValueError, match="chunk_size"):
        derivatives(torch.sin, x, chunk_size=0)
    with pytest.raises(ValueError, match="sample axis"):
        derivatives(torch.sin, torch.tensor(1.0))
    for quantities in (("hessian",), ("laplacian_estimate",)):  # not forward-mode AD's ValueError from inside
        with pytest.raises(ValueError, match=r"x must be a floating-point tensor .*torch.int64.*x.float\(\)"):
            derivatives(torch.sin, torch.ones(3, 2, dtype=torch.long), quantities)


def test_one_quantity_name_as_a_string():
    # a bare string was iterated letter by letter: "unknown quantity 'h'"
    x = torch.randn(3, 2, dtype=D)
    out = derivatives(lambda z: (z**3).sum(), x, "hessian")
    torch.testing.assert_close(out["hessian"], torch.diag_embed(6 * x))


@pytest.mark.parametrize("method", ("auto", "taylor", "forward", "reverse"))
def test_a_function_returning_a_tuple_or_dict_is_told_to_return_one_tensor(method):
    # these failed deep inside: "'tuple' object has no attribute 'new_empty'", "Could not infer dtype of dict"
    x = torch.randn(3, 2, dtype=D)
    for fn in (lambda z: (z.sum(), z.prod()), lambda z: {"u": z.sin()}, lambda z: [z.sin(), z.cos()]):
        with pytest.raises(ValueError, match=r"fn must return ONE tensor for one sample, got (tuple|dict|list)"):
            derivatives(fn, x, ("value", "hessian"), method=method)


def test_no_samples_gives_empty_tensors_of_the_right_shape():
    out = derivatives(torch.nn.Linear(3, 2), torch.zeros(0, 3), ("value", "jacobian", "hessian"))
    assert out["value"].shape == (0, 2) and out["hessian"].shape == (0, 2, 3, 3)


def test_auto_prefers_torch_func_when_taylor_coefficients_explode():
    """d = 40 inputs to fourth order is C(44, 4) = 135,751 coefficients: the cost model says no."""
    from pipeline.engine.choose import plan_method

    plan = plan_method(("d4",), in_size=40, out_size=1, taylor_ok=True)
    assert plan.method != "taylor"
    assert plan_method(("value", "jacobian", "hessian"), in_size=2, out_size=150, taylor_ok=True).method == "taylor"
    assert plan_method(("jacobian",), in_size=3, out_size=8, taylor_ok=False).method in ("forward", "reverse")


def test_close_call_times_both_and_records_the_choice():
    """Hessian of a scalar function of 4 inputs: Taylor (15 coefficients) vs forward-over-reverse is close."""
    from pipeline.engine.choose import plan_method

    plan = plan_method(("hessian",), in_size=4, out_size=1, taylor_ok=True)
    assert plan.time_against, plan
    net = _mlp([4, 16, 1], seed=6)
    x = torch.randn(40, 4, dtype=D)
    result = compute_derivatives(net, x, ("hessian",))
    assert result.method in ("taylor",) + plan.time_against
    assert (result.fallback_reason is None) == (result.method == "taylor")
    torch.testing.assert_close(result.outputs["hessian"], autograd_loop(net, x, 2)[2])


def test_compiled_taylor_pass_matches_eager():
    """compile=True: inductor on the flattened Taylor pass; the short last chunk reuses the graph."""
    net = _mlp([2, 8, 3], seed=7, dtype=torch.float32)
    x = torch.randn(20, 2)
    compiled = compute_derivatives(
        net, x, ("value", "jacobian", "hessian"), method="taylor", chunk_size=8, compile=True
    )
    eager = compute_derivatives(net, x, ("value", "jacobian", "hessian"), method="taylor", chunk_size=8)
    assert compiled.method == "taylor"
    for name, value in eager.outputs.items():
        torch.testing.assert_close(compiled.outputs[name], value, rtol=1e-5, atol=1e-6)


def test_a_close_call_is_timed_once_per_function_and_shape(monkeypatch):
    """When the cost model calls Taylor and torch.func close, the first call times both; later calls reuse it."""
    from pipeline.engine import api
    from pipeline.engine.choose import plan_method

    assert plan_method(("value", "jacobian", "hessian"), 3, 1, True).time_against == ("reverse",)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1)).double()
    fn = lambda x: net(x)[0]  # noqa: E731  (a scalar output per sample)
    x = torch.randn(300, 3, dtype=torch.float64)
    timings = []
    real = api._timed
    monkeypatch.setattr(api, "_timed", lambda compute, chunk: timings.append(chunk.shape[0]) or real(compute, chunk))
    first = compute_derivatives(fn, x, ("value", "jacobian", "hessian"))
    # taylor and reverse on the first chunk, in two rounds: the second skips one more than 3x slower;
    # a timing under TIMING_MIN_SECONDS is repeated on the whole (larger) batch
    assert 256 in timings and set(timings) <= {256, 300}
    assert 3 <= len(timings) <= 2 * 2 * api.TIMING_ROUNDS
    timed = len(timings)
    again = compute_derivatives(fn, x, ("value", "jacobian", "hessian"))
    assert len(timings) == timed and again.method == first.method
    reference = torch.vmap(torch.func.hessian(fn))(x)
    for result in (first, again):
        torch.testing.assert_close(result.outputs["hessian"], reference, rtol=1e-10, atol=1e-12)


def test_a_fast_close_call_is_timed_on_a_larger_slice_and_remembered_per_batch_size(monkeypatch):
    """Timings of a few ms are mostly per-call cost: the slice grows x4 (up to 4,096) while the best is that fast,
    and the choice is kept per size class of the batch (a 300-sample call does not reuse a 4,096-sample choice)."""
    from pipeline.engine import api

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1)).double()
    fn = lambda x: net(x)[0]  # noqa: E731
    x = torch.randn(5000, 3, dtype=torch.float64)
    timings = []
    real = api._timed
    monkeypatch.setattr(api, "_timed", lambda compute, chunk: timings.append(chunk.shape[0]) or real(compute, chunk))
    monkeypatch.setattr(api, "TIMING_MIN_SECONDS", 10.0)  # every timing counts as fast: the slice grows to its cap
    big = compute_derivatives(fn, x, ("value", "jacobian", "hessian"))
    assert sorted(set(timings)) == [256, 1024, 4096]
    reference = torch.vmap(torch.func.hessian(fn))(x)
    torch.testing.assert_close(big.outputs["hessian"], reference, rtol=1e-10, atol=1e-12)
    count = len(timings)
    compute_derivatives(fn, x[:4500], ("value", "jacobian", "hessian"))  # the same size class: remembered
    assert len(timings) == count
    small = compute_derivatives(fn, x[:300], ("value", "jacobian", "hessian"))  # another class: timed anew
    assert len(timings) > count and set(timings[count:]) == {256, 300}
    torch.testing.assert_close(small.outputs["hessian"], reference[:300], rtol=1e-10, atol=1e-12)
