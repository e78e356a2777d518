"""Memory: measured footprints, automatic chunks, and the out-of-memory back-off (CPU caps)."""

from __future__ import annotations

import warnings

import pytest
import torch
from references import autograd_loop

from pipeline.engine import chunking, compute_derivatives

D = torch.float64


def _net(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(3, 32), torch.nn.Tanh(), torch.nn.Linear(32, 32), torch.nn.Tanh(), torch.nn.Linear(32, 4)
    ).double()


def test_tracker_counts_live_bytes_and_views_once():
    with chunking.MemoryTracker() as tracker:
        a = torch.ones(1000, dtype=D)  # 8000 bytes
        b = a.view(10, 100)  # a view: no new storage
        c = b * 2  # 8000 more
        del a, b, c
        d = torch.ones(500, dtype=D)  # 4000: the earlier 16000 were freed
    assert tracker.peak_bytes == 16000
    assert tracker.current_bytes == 4000
    del d


def test_tracker_enforces_a_cap_as_out_of_memory():
    with pytest.raises(torch.OutOfMemoryError, match="memory_limit_bytes=10000"):
        with chunking.MemoryTracker(limit_bytes=10_000):
            keep = [torch.ones(1000, dtype=D) for _ in range(3)]  # noqa: F841


def test_is_out_of_memory_recognises_cpu_allocator_messages():
    assert chunking.is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory"))
    assert chunking.is_out_of_memory(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate"))
    assert not chunking.is_out_of_memory(RuntimeError("shape mismatch"))
    assert not chunking.is_out_of_memory(ValueError("out of memory"))  # only runtime errors are allocation failures


def test_run_chunks_halves_on_allocation_failures_and_keeps_every_sample():
    calls = []

    def compute(chunk, out=None):
        calls.append(chunk.shape[0])
        if chunk.shape[0] > 5:
            raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1 bytes")
        return {"double": chunk * 2}

    x = torch.arange(23, dtype=D).reshape(23, 1)
    run = chunking.run_chunks(compute, x, chunk_size=16)
    assert run.chunk_size == 4  # 16 -> 8 -> 4
    torch.testing.assert_close(run.outputs["double"], x * 2)
    assert calls[:3] == [16, 8, 4] and max(calls[3:]) <= 4


def test_run_chunks_gives_up_with_a_remedy_when_one_sample_does_not_fit():
    def compute(chunk, out=None):
        raise torch.OutOfMemoryError("no")

    with pytest.raises(torch.OutOfMemoryError, match="one sample does not fit"):
        chunking.run_chunks(compute, torch.zeros(3, 1), chunk_size=2)


def test_other_errors_are_not_swallowed():
    def compute(chunk, out=None):
        raise RuntimeError("shape mismatch")

    with pytest.raises(RuntimeError, match="shape mismatch"):
        chunking.run_chunks(compute, torch.zeros(3, 1), chunk_size=2)


@pytest.mark.parametrize("method", ["taylor", "forward"])
def test_memory_cap_backs_off_a_too_large_chunk(method):
    net = _net()
    x = torch.randn(40, 3, dtype=D)
    free = compute_derivatives(net, x[:16], ("value", "jacobian", "hessian"), method=method, chunk_size=16)
    # what one 16-sample chunk needs, measured; a cap at a third of it forces at least two halvings
    per_chunk = free.peak_memory_bytes
    assert per_chunk > 30_000
    cap = per_chunk // 3
    result = compute_derivatives(
        net, x, ("value", "jacobian", "hessian"), method=method, chunk_size=16, memory_limit_bytes=cap
    )
    assert result.chunk_size < 16
    assert result.peak_memory_bytes is not None and result.peak_memory_bytes <= cap
    ref = autograd_loop(net, x, 2)
    for k, name in enumerate(("value", "jacobian", "hessian")):
        torch.testing.assert_close(result.outputs[name], ref[k])
    torch.testing.assert_close(result.outputs["hessian"][:16], free.outputs["hessian"])


def test_auto_chunk_fits_the_cap_from_the_measured_footprint():
    net = _net(1)
    x = torch.randn(600, 3, dtype=D)
    unlimited = compute_derivatives(net, x, ("hessian",), method="taylor")
    assert unlimited.chunk_size == 600 and unlimited.peak_memory_bytes > 0  # estimated from tensor sizes
    # a cap far above need: the chunk is measured, not estimated
    measured = compute_derivatives(net, x, ("hessian",), method="taylor", chunk_size=600, memory_limit_bytes=1 << 40)
    assert 0 < measured.peak_memory_bytes <= unlimited.peak_memory_bytes  # the estimate is an upper bound
    cap = measured.peak_memory_bytes // 6  # room for about 100 samples
    capped = compute_derivatives(net, x, ("hessian",), method="taylor", memory_limit_bytes=cap)
    assert capped.chunk_size < 100
    assert capped.peak_memory_bytes <= cap
    torch.testing.assert_close(capped.outputs["hessian"], unlimited.outputs["hessian"])


def test_auto_chunk_arithmetic():
    cpu = torch.device("cpu")
    assert chunking.auto_chunk(1000.0, 10_000, cpu, limit_bytes=1_500_000) == 1000  # 1.5 MB / (1000 B * 1.5)
    assert chunking.auto_chunk(1.0, 10_000_000, cpu, limit_bytes=None) == chunking.CPU_MAX_CHUNK
    assert chunking.auto_chunk(1e12, 5, cpu, limit_bytes=10) == 1


def test_peak_memory_is_reported():
    result = compute_derivatives(_net(), torch.randn(50, 3, dtype=D), ("hessian",), method="taylor", chunk_size=25)
    assert isinstance(result.peak_memory_bytes, int) and result.peak_memory_bytes > 0


def test_profiler_measurement_shows_no_warning(monkeypatch):
    """Measuring a chunk with the profiler (torch.func chunks on CPU) must not warn.

    torch 2.11 warns "Profiler clears events at the end of each cycle" (once per
    process) when a fresh profiler starts; torch 2.13 does not. The warning set is
    reset so that an earlier test's profiling cannot hide the warning here.
    """
    import torch.profiler.profiler as torch_profiler

    if hasattr(torch_profiler, "_WARNINGS_SHOWN"):
        monkeypatch.setattr(torch_profiler, "_WARNINGS_SHOWN", set())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = chunking.measure(lambda x: {"y": x * 2}, torch.ones(1000), tracker=False)
    assert result.peak_bytes is not None and result.peak_bytes > 0
    assert [str(w.message) for w in caught if issubclass(w.category, UserWarning)] == []


def test_a_torch_func_method_measures_its_footprint_once_per_function(monkeypatch):
    """On CPU the profiler (10x slower ops) measures a small slice once; later calls run unmeasured."""
    calls = []
    real = chunking._profiled
    monkeypatch.setattr(chunking, "_profiled", lambda compute, x: calls.append(x.shape[0]) or real(compute, x))
    net = _net()
    x = torch.randn(40, 3, dtype=D)
    first = compute_derivatives(net, x, ("hessian",), method="forward")
    assert calls == [chunking.FOOTPRINT_SAMPLES]
    again = compute_derivatives(net, x, ("hessian",), method="forward")
    assert calls == [chunking.FOOTPRINT_SAMPLES]  # remembered for this function and shape
    reference = torch.vmap(torch.func.hessian(net))(x)
    for result in (first, again):
        torch.testing.assert_close(result.outputs["hessian"], reference, rtol=1e-10, atol=1e-12)
        assert result.peak_memory_bytes > 0
    compute_derivatives(net, x, ("hessian",), method="reverse")  # another method: measured anew
    assert calls == [chunking.FOOTPRINT_SAMPLES] * 2


def test_a_torch_func_method_whose_one_sample_tensors_cannot_fit_stops_before_running(monkeypatch):
    """On CPU running out of memory is the kernel's kill: a Hessian that cannot fit is refused up front."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(50, 16), torch.nn.Tanh(), torch.nn.Linear(16, 100))  # 100 x 50^2
    x = torch.randn(8, 50)
    reference = compute_derivatives(net.double(), x.double(), ("hessian",), method="reverse").outputs["hessian"]
    net.float()
    calls = []
    net.register_forward_hook(lambda *args: calls.append(1))
    hessian_bytes = 100 * 50 * 50 * 4  # 1 MB for one sample
    monkeypatch.setattr(chunking, "available_bytes", lambda device: 2 * hessian_bytes)  # less than 3x
    with pytest.raises(torch.OutOfMemoryError, match=r"order-2 derivatives are 1\.0 MB .*method='auto'"):
        compute_derivatives(net, x, ("laplacian",), method="forward")
    assert len(calls) == 1  # only the one-sample call that finds the output size; nothing was differentiated
    monkeypatch.setattr(chunking, "available_bytes", lambda device: 4 * hessian_bytes)  # fits: one sample measured
    result = compute_derivatives(net, x, ("laplacian",), method="forward")
    torch.testing.assert_close(
        result.outputs["laplacian"].double(), reference.diagonal(dim1=-2, dim2=-1).sum(-1), atol=1e-5, rtol=1e-4
    )


@pytest.mark.parametrize("quantity", ["laplacian_estimate", "weighted_laplacian"])
def test_memory_cap_holds_for_the_operator_quantities(quantity):
    """memory_limit_bytes was silently ignored for weighted_laplacian / *_estimate (a job's execution.memory_limit too)."""
    net = _net()
    x = torch.randn(300, 3, dtype=D)
    options = {"samples": 8, "factor": torch.eye(3, dtype=D)}
    free = compute_derivatives(net, x, (quantity,), options=options)
    with pytest.raises(torch.OutOfMemoryError, match="memory_limit_bytes=64"):
        compute_derivatives(net, x, (quantity,), options=options, memory_limit_bytes=64)
    cap = 200_000
    capped = compute_derivatives(net, x, (quantity,), options=options, memory_limit_bytes=cap)
    assert capped.chunk_size < 300 and capped.peak_memory_bytes is not None and capped.peak_memory_bytes <= cap
    for name, value in free.outputs.items():
        torch.testing.assert_close(capped.outputs[name], value)


def _spy_measure(monkeypatch):
    """Record the size of every chunk that runs measured (the tracker or the profiler); calls through."""
    sizes = []
    real = chunking.measure

    def spy(compute, x, *args, **kwargs):
        sizes.append(x.shape[0])
        return real(compute, x, *args, **kwargs)

    monkeypatch.setattr(chunking, "measure", spy)
    return sizes


@pytest.mark.parametrize(("method", "quantities"), [("taylor", ("value", "hessian")), ("forward", ("hessian",))])
def test_a_cap_measures_once_per_chunk_size(monkeypatch, method, quantities):
    """Under a cap on CPU, equal or smaller chunks run unmeasured once one of their size fitted it.

    Measuring every chunk (a Python dispatch mode around every op) made a capped Taylor jet ~65% slower.
    """
    net = _net()
    x = torch.randn(60, 3, dtype=D)  # chunks of 8: seven full ones and one of 4
    free = compute_derivatives(net, x, quantities, method=method, chunk_size=8)
    sizes = _spy_measure(monkeypatch)
    capped = compute_derivatives(net, x, quantities, method=method, chunk_size=8, memory_limit_bytes=1 << 40)
    # the first chunk (its outputs kept as results), then the first chunk written in place; no more
    assert sizes == [8, 8]
    assert capped.chunk_size == 8 and capped.peak_memory_bytes > 0
    for name in quantities:
        torch.testing.assert_close(capped.outputs[name], free.outputs[name])
    monkeypatch.setattr(chunking, "MEASURE_EVERY_CHUNK", True)  # the old way, for benchmarks
    compute_derivatives(net, x, quantities, method=method, chunk_size=8, memory_limit_bytes=1 << 40)
    assert sizes[2:] == [8] * 7 + [4]


def test_a_cap_measures_each_operator_piece_size_once(monkeypatch):
    """The operators run through the same chunking as every quantity (chunking.run_chunks): measured as it does."""
    net = _net()
    x = torch.randn(60, 3, dtype=D)
    options = {"samples": 4}
    free = compute_derivatives(net, x, ("laplacian_estimate",), options=options, chunk_size=8)
    sizes = _spy_measure(monkeypatch)
    capped = compute_derivatives(
        net, x, ("laplacian_estimate",), options=options, chunk_size=8, memory_limit_bytes=1 << 40
    )
    assert sizes == [8, 8]  # the first chunk, then the first written into the results; not the other six
    assert capped.peak_memory_bytes > 0 and capped.chunk_size == 8
    torch.testing.assert_close(capped.outputs["laplacian_estimate"], free.outputs["laplacian_estimate"])


def test_a_cap_still_stops_the_first_chunk_written_in_place():
    """A chunk that writes into the results is measured even when a returning chunk of its size fitted.

    Here writing in place needs 1.5x the memory of returning (the profiler measured 1% more
    for a forward Hessian): the first in-place chunk of 8 crosses the cap and is halved.
    """
    sizes = []

    def compute(chunk, out=None):
        per_sample = 100 if out is None else 150  # float64 elements held while the chunk runs
        sizes.append((chunk.shape[0], out is not None))
        scratch = torch.ones(chunk.shape[0] * per_sample, dtype=D)
        result = chunk * 2 + scratch[:1]
        if out is None:
            return {"double": result - 1}
        out["double"].copy_(result - 1)
        return out

    x = torch.arange(40, dtype=D).reshape(40, 1)
    cap = 8 * 120 * 8  # bytes: 8 samples fit when returned (800 elements), not in place (1,200)
    run = chunking.run_chunks(compute, x, chunk_size=8, limit_bytes=cap)
    assert run.chunk_size == 4
    assert 0 < run.peak_bytes <= cap
    torch.testing.assert_close(run.outputs["double"], x * 2)
    assert sizes[:3] == [(8, False), (8, True), (4, True)]


@pytest.mark.parametrize("method", ["forward", "reverse", "forward-over-reverse"])
def test_torch_func_results_hold_no_graph_of_the_modules_parameters(method):
    """An nn.Module's parameters require grad: each torch.func chunk built an autograd graph for them, and copying
    the chunks into the results chained every graph on (2,048 forward Hessians of a 20 -> 128 -> 128 -> 1 MLP:
    4.3 GB peak RSS and 2x the time). The results are detached, as Taylor mode's are, and the numbers unchanged."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2))
    x = torch.randn(40, 3, dtype=torch.float64)
    net = net.double()
    result = compute_derivatives(net, x, ("jacobian", "hessian"), method=method, chunk_size=16)
    for value in result.outputs.values():
        assert value.grad_fn is None and not value.requires_grad
    from pipeline.engine.hvp import hvp

    products = hvp(net, x, torch.randn(40, 2, 3, dtype=torch.float64), method="reverse")
    assert products.grad_fn is None
    reference = torch.func.vmap(torch.func.hessian(net))(x)
    torch.testing.assert_close(result.outputs["hessian"], reference.detach(), rtol=1e-12, atol=1e-12)
