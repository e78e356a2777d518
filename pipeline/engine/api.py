"""Public entry points: ``derivatives``, ``compute_derivatives`` and ``compute_operators``."""

from __future__ import annotations

import dataclasses
import gc
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

from pipeline.quantities import OPERATOR_QUANTITIES, canonical_quantities, max_order

from . import chunking
from .choose import MethodPlan, best_torch_func, plan_method
from .collapsed import COLLAPSED_QUANTITIES, auto_collapsed_chunk, collapsed_chunk
from .collapsed import covered as collapsed_gap
from .compiled import CompiledTaylor
from .operators import OperatorOptions, collapsed_operators_chunk, contract_hessian, operator_chunk_size
from .rule_table import NotCovered
from .strategies import TORCH_FUNC_METHODS, torch_func_chunk
from .taylor import estimate_bytes_per_sample, taylor_chunk
from .trace import trace_function

METHODS = ("auto", "taylor", "forward", "reverse", "forward-over-reverse", "collapsed")
PROBE_SAMPLES = 256  # first chunk when chunk_size="auto": measured, then kept as results
MIN_TIMED_SAMPLES = 32  # below this a timing says more about overheads than about the method
TIMING_MIN_SECONDS = 0.005  # a faster timing is mostly per-call cost: time a larger slice (x4) when there is one
TIMING_MAX_SAMPLES = 4096  # the largest slice close candidates are timed on


@dataclass(frozen=True)
class DerivativeResult:
    """What ``compute_derivatives`` returns: the tensors and how they were computed.

    Attributes:
        outputs: quantity name -> tensor with the sample axis first (see ``derivatives``).
        method: the method that actually ran (``"taylor"``, ``"forward"``, ...).
        chunk_size: samples per chunk at the end of the run (after any out-of-memory back-off).
        peak_memory_bytes: peak of one chunk: measured by the CUDA allocator, by the CPU
            tracker on the first chunk or the profiler on one sample (scaled to the final
            chunk), or - Taylor on CPU without a cap - estimated from the traced tensor
            sizes; ``None`` for collapsed mode without a cap, on any device (not measured).
        fallback_reason: why Taylor mode was not used (for a forced ``"collapsed"``: why collapsed
            mode was not), or ``None``.
    """

    outputs: dict[str, torch.Tensor]
    method: str
    chunk_size: int
    peak_memory_bytes: int | None = None
    fallback_reason: str | None = None


def _check_method(method: str) -> str:
    if method not in METHODS:
        raise ValueError(f"unknown derivative method {method!r}; choose from {', '.join(METHODS)}")
    return method


def check_x(x) -> None:
    if not torch.is_tensor(x) or x.ndim < 1:
        raise ValueError(
            f"x must be a tensor [N, *in_shape] with a sample axis first, got {type(x).__name__}"
            + (f" of shape {tuple(x.shape)}" if torch.is_tensor(x) else "")
        )
    if not x.is_floating_point():
        raise ValueError(f"x must be a floating-point tensor to differentiate at, got {x.dtype}; pass x.float()")


def _check_chunk(chunk_size) -> int | None:
    if chunk_size == "auto" or chunk_size is None:
        return None
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int or 'auto', got {chunk_size!r}")
    return chunk_size


def _compute_function(
    fn: Callable, method: str, quantities: tuple[str, ...], traced=None, compile: bool = False
) -> Callable:
    """``compute(chunk, out=None)``: one chunk's quantities, written into ``out`` when given."""
    if method == "collapsed":
        return lambda chunk, out=None: collapsed_chunk(traced, chunk, quantities, out=out)
    if method == "taylor":
        if compile:
            return CompiledTaylor(traced, quantities)
        return lambda chunk, out=None: taylor_chunk(traced, chunk, quantities, out=out)

    def torch_func(chunk, out=None):
        results = torch_func_chunk(fn, chunk, quantities, method)
        if out is None:
            return results
        for name, value in results.items():
            out[name].copy_(value)
        return out

    return torch_func


def _out_size(fn: Callable, x: torch.Tensor, traced) -> int:
    if traced is not None and traced.output_node is not None:
        value = traced.output_node.args[0]
        meta = getattr(value, "meta", {}).get("val") if hasattr(value, "meta") else None
        if meta is not None:
            return math.prod(meta.shape)
    return sample_output_size(fn, x)


def sample_output_size(fn: Callable, x: torch.Tensor) -> int:
    """Elements of ``fn(x[0])``; a ``ValueError`` when ``fn`` does not return one tensor."""
    with torch.no_grad():
        value = fn(x[0])
    if not torch.is_tensor(value):
        raise ValueError(
            f"fn must return ONE tensor for one sample, got {type(value).__name__}; "
            "put the parts into one tensor (torch.stack or torch.cat), or call the engine once per part"
        )
    return math.prod(value.shape)


def _timed(compute: Callable, x: torch.Tensor) -> tuple[float, dict]:
    """Seconds for ``compute(x)`` after a one-sample warm-up (first-call costs are not the method's).

    Python's cyclic GC is off meanwhile: with torch loaded a full collection takes
    70-130 ms on a small CPU, and one landing in a candidate's timing decided the choice.
    """
    compute(x[:1])
    if x.device.type == "cuda":
        torch.cuda.synchronize(x.device)
    enabled = gc.isenabled()
    gc.disable()
    try:
        start = time.perf_counter()
        outputs = compute(x)
        if x.device.type == "cuda":
            torch.cuda.synchronize(x.device)
        return time.perf_counter() - start, outputs
    finally:
        if enabled:
            gc.enable()


def compute_derivatives(
    fn,
    x,
    quantities,
    *,
    method="auto",
    chunk_size="auto",
    memory_limit_bytes=None,
    compile=False,
    options=None,
    offset=0,
):
    """Derivatives of ``fn`` at every sample of ``x``, with how they were computed.

    Args:
        fn: maps ONE sample ``[*in_shape]`` to ``[*out_shape]`` (``nn.Module`` or callable).
        x: samples ``[N, *in_shape]``; results come back in its dtype and device.
        quantities: names from ``pipeline.quantities`` (``value``, ``jacobian``,
            ``hessian``, ``laplacian``, ``d3``...; ``d1``/``d2`` are aliases).
        method: ``"auto"`` (Taylor when the trace covers ``fn`` and the
            coefficient count is moderate, timed against torch.func when close),
            ``"taylor"``, ``"forward"``, ``"reverse"``, ``"forward-over-reverse"``.
        chunk_size: samples per chunk, or ``"auto"`` to size chunks from measured memory.
        memory_limit_bytes: cap on one chunk's memory; above it a chunk counts
            as out of memory and is halved (on CPU the cap is enforced per op).
        compile: run the Taylor pass through ``torch.compile`` (one compile per
            chunk shape; slower on the 2-core CPU it was measured on, meant for GPUs).
        options: :class:`~pipeline.engine.operators.OperatorOptions` (or a dict of its fields)
            for the operator quantities (``weighted_laplacian``, ``laplacian_estimate``, ...):
            factor, samples, seed, distribution.
        offset: global index of ``x[0]`` (seeds the random directions of the estimates).

    Returns:
        A :class:`DerivativeResult`.

    Example:
        >>> net = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
        >>> result = compute_derivatives(net, torch.randn(10, 2), ("value", "hessian"))
        >>> result.method, result.outputs["hessian"].shape
        ('taylor', torch.Size([10, 3, 2, 2]))
    """
    method = _check_method(method)
    quantities = canonical_quantities(quantities)
    fixed_chunk = _check_chunk(chunk_size)
    check_x(x)
    if memory_limit_bytes is not None and memory_limit_bytes <= 0:
        raise ValueError(f"memory_limit_bytes must be positive, got {memory_limit_bytes!r}")
    n, in_shape = x.shape[0], tuple(x.shape[1:])
    in_size = math.prod(in_shape)
    if any(q in OPERATOR_QUANTITIES for q in quantities):
        return compute_operators(
            fn,
            x,
            quantities,
            options,
            method=method,
            chunk_size=chunk_size,
            offset=offset,
            memory_limit_bytes=memory_limit_bytes,
        )
    if n == 0:
        return _empty_result(fn, x, quantities, "auto" if method == "collapsed" else method)

    traced, reason = None, None
    if method in ("auto", "taylor", "collapsed"):
        traced = trace_function(fn, in_shape, x.dtype, x.device)
        reason = traced.reason()
        if reason is not None:
            traced = None
    out_size = _out_size(fn, x, traced)
    collapsible = (
        traced is not None and "laplacian" in quantities and all(q in COLLAPSED_QUANTITIES for q in quantities)
    )
    gap = collapsed_gap(traced) if collapsible else "not a Laplacian"
    forced_collapsed = method == "collapsed"
    if method == "collapsed":
        method = "auto"
        if gap is not None:
            reason = f"collapsed mode not used: {gap}"
    if method == "auto" and gap is None:
        plan = MethodPlan("collapsed")
    elif method == "auto":
        if max_order(quantities) == 0:
            plan = MethodPlan("taylor" if traced is not None else "forward")
        else:
            plan = plan_method(quantities, in_size, out_size, traced is not None)
    elif method == "taylor":
        plan = MethodPlan("taylor" if traced is not None else best_torch_func(quantities, in_size, out_size))
    else:
        plan = MethodPlan(method)
        reason = _requested(method)
    if plan.method != "taylor" and reason is None:
        reason = f"the cost model prefers {plan.method} for d={in_size}, order {max_order(quantities)}"
    try:
        result = _run(fn, x, quantities, plan, traced, fixed_chunk, memory_limit_bytes, reason, compile, out_size)
        return _not_collapsed(result, reason) if forced_collapsed else result
    except Exception as error:
        if traced is None or plan.method not in ("taylor", "collapsed") or chunking.is_out_of_memory(error):
            raise
        if plan.method == "collapsed":  # the collapsed rules refused: the Taylor engine covers more
            reason = f"collapsed mode failed ({type(error).__name__}: {error})"
            result = _run(
                fn, x, quantities, MethodPlan("taylor"), traced, fixed_chunk, memory_limit_bytes, reason, compile
            )
            return _not_collapsed(result, reason) if forced_collapsed else result
        # a rule refused at run time (an argument form it does not handle), or the interpreter broke:
        # the function still gets its derivatives, from torch.func, and the result says why
        if isinstance(error, NotCovered):
            reason = f"operation not covered by the Taylor engine: {error}"
        else:
            reason = f"the Taylor engine failed on this function ({type(error).__name__}: {error})"
        fallback = best_torch_func(quantities, in_size, out_size)
        return _run(
            fn, x, quantities, MethodPlan(fallback), None, fixed_chunk, memory_limit_bytes, reason, out_size=out_size
        )


def _not_collapsed(result: DerivativeResult, reason: str | None) -> DerivativeResult:
    """A forced ``method="collapsed"`` that ran another method says why, even where that method is Taylor.

    (``_run`` gives no reason for a Taylor result: under ``auto`` Taylor is no fallback.)
    """
    if result.method == "collapsed" or result.fallback_reason is not None or reason is None:
        return result
    return dataclasses.replace(result, fallback_reason=reason)


def _run(
    fn, x, quantities, plan: MethodPlan, traced, fixed_chunk, limit_bytes, reason, compile=False, out_size=None
) -> DerivativeResult:
    n = x.shape[0]
    first = min(n, fixed_chunk if fixed_chunk is not None else PROBE_SAMPLES)
    # a choice holds for batches of the size it was timed on: per-call costs weigh more on small ones
    # (the shape grid's 10-input Hessian: Taylor faster on 64 samples, forward-over-reverse 2x on 4,096;
    # a 2-input, 8-output Jacobian: vmap(jacrev) faster on 256, Taylor 1.65x faster on 4,096)
    choice_key = (
        tuple(x.shape[1:]),
        x.dtype,
        str(x.device),
        quantities,
        plan.method,
        plan.time_against,
        compile,
        _size_class(n if fixed_chunk is None else first),
    )
    chosen = chunking.CHOICES.get(fn, choice_key) if plan.time_against else None
    if chosen is not None:  # an earlier call of this function and shape timed the candidates
        plan = MethodPlan(chosen)
        if chosen != "taylor" and reason is None:
            reason = f"{chosen} measured faster than taylor on the first chunk of an earlier call"
    method = plan.method
    compute = _compute_function(fn, method, quantities, traced, compile)
    probe = None
    if plan.time_against and first >= MIN_TIMED_SAMPLES:
        # close call: time each candidate on the first chunk and keep the faster (and its results);
        # timed unmeasured, since measuring costs differ between methods
        candidates = (method,) + plan.time_against
        best = _time_candidates(fn, candidates, quantities, traced, compile, x[:first])
        # a timing of a few ms is mostly per-call cost, which a larger batch does not pay per sample:
        # time a larger slice while there is one (its results are kept all the same)
        while (
            best is not None
            and best[0] < TIMING_MIN_SECONDS
            and fixed_chunk is None
            and first < min(n, TIMING_MAX_SAMPLES)
        ):
            first = min(n, TIMING_MAX_SAMPLES, 4 * first)
            best = _time_candidates(fn, candidates, quantities, traced, compile, x[:first])
        if best is not None:
            _, method, compute, outputs = best
            chunking.CHOICES.put(fn, choice_key, method)
            if method != "taylor" and reason is None:
                reason = f"{method} measured faster than taylor on the first chunk"
            # the footprint of the winner, from a small slice, scaled to the first chunk
            sample = x[: max(1, first // 4)]
            footprint = chunking.measure(compute, sample, None, method == "taylor" and not compile).peak_bytes
            scaled = None if footprint is None else int(footprint * first / sample.shape[0])
            if limit_bytes is not None and scaled is not None and scaled > limit_bytes:
                best = None  # the first chunk would not have fitted the cap: recompute it in smaller chunks
            else:
                probe = chunking.Measured(outputs, scaled)
    elif method == "collapsed" and limit_bytes is None:
        chunk = fixed_chunk or auto_collapsed_chunk(traced, 2 + math.prod(x.shape[1:]), x)
        run = chunking.run_chunks(compute, x, chunk)
        outputs = {name: run.outputs[name].to(dtype=x.dtype, device=x.device) for name in quantities}
        return DerivativeResult(outputs, method, min(run.chunk_size, n), None, None)
    elif method == "taylor" and x.device.type != "cuda" and limit_bytes is None:
        # CPU without a cap: size chunks from the trace's tensor sizes - no measuring run, whose
        # dispatch-mode bookkeeping would cost more than a small batch itself
        per_sample = estimate_bytes_per_sample(traced, quantities, math.prod(x.shape[1:]), x.element_size())
        chunk = fixed_chunk or chunking.auto_chunk(per_sample, n, x.device, None)
        run = chunking.run_chunks(compute, x, chunk)
        outputs = {name: run.outputs[name].to(dtype=x.dtype, device=x.device) for name in quantities}
        return DerivativeResult(outputs, method, min(run.chunk_size, n), per_sample * min(run.chunk_size, n), None)
    elif method in TORCH_FUNC_METHODS and x.device.type == "cpu" and limit_bytes is None:
        return _run_torch_func_cpu(fn, x, quantities, method, compute, fixed_chunk, reason, out_size)
    else:
        try:
            probe = chunking.measure(compute, x[:first], limit_bytes, method in ("taylor", "collapsed") and not compile)
        except Exception as error:
            if not chunking.is_out_of_memory(error):
                raise
    if probe is None:  # even the first chunk did not fit: start again at half of it
        done, start, peak, chunk = [], 0, None, max(1, first // 2)
    else:
        done, start, peak = [probe.outputs], first, probe.peak_bytes
        if fixed_chunk is not None:
            chunk = fixed_chunk
        else:
            chunk = chunking.auto_chunk(chunking.per_sample_bytes(peak, first), n, x.device, limit_bytes)
    track = limit_bytes is not None or x.device.type == "cuda"
    run = chunking.run_chunks(
        compute,
        x,
        chunk,
        start=start,
        done=done,
        limit_bytes=limit_bytes,
        peak_bytes=peak,
        track=track,
        tracker=method in ("taylor", "collapsed") and not compile,
    )
    peak_bytes = run.peak_bytes
    if peak_bytes is not None and not track and run.chunk_size > first and probe is not None:
        peak_bytes = int(peak_bytes / first * run.chunk_size)  # CPU: measured on the first chunk, scaled
    outputs = {name: run.outputs[name].to(dtype=x.dtype, device=x.device) for name in quantities}
    return DerivativeResult(
        outputs, method, min(run.chunk_size, n), peak_bytes, reason if method not in ("taylor", "collapsed") else None
    )


def _requested(method: str) -> str:
    """The reason a result gives when its method was forced (also how the refusals below tell auto from a user)."""
    return f"method={method!r} requested"


def _size_class(n: int) -> int:
    """Batches whose timed choice is shared: below 256 samples, 256-1,023, 1,024-4,095, 4,096 and more."""
    if n < PROBE_SAMPLES:
        return 0
    return 1 + min(2, int(math.log(min(n, TIMING_MAX_SAMPLES) / PROBE_SAMPLES, 4) + 1e-9))


TIMING_ROUNDS = 2  # rounds of timing, candidates interleaved: one round let a 2x slower method win a close call


def _time_candidates(fn, candidates, quantities, traced, compile, x):
    """``(seconds, method, compute, outputs)`` of the fastest candidate on ``x``, or None when none fit.

    Candidates are timed in turn, then again in a second round while they are
    within 3x of the best (the best of each is kept): single timings of a few ms
    vary by 30% on a busy host, and a one-round timing on 256 samples once kept
    Taylor for a 10-input Hessian that forward-over-reverse computes 2.5x faster.
    """
    timings: dict[str, tuple[float, Callable, dict]] = {}
    for round_ in range(TIMING_ROUNDS):
        fastest = min((t[0] for t in timings.values()), default=math.inf)
        for candidate in candidates:
            if round_ and (candidate not in timings or timings[candidate][0] > 3 * fastest):
                continue
            compute = _compute_function(fn, candidate, quantities, traced, compile)
            try:
                seconds, outputs = _timed(compute, x)
            except Exception as error:
                if not chunking.is_out_of_memory(error):
                    raise
                continue
            if candidate not in timings or seconds < timings[candidate][0]:
                timings[candidate] = (seconds, compute, outputs)
    if not timings:
        return None
    winner = min(timings, key=lambda c: timings[c][0])
    seconds, compute, outputs = timings[winner]
    return seconds, winner, compute, outputs


def _run_torch_func_cpu(fn, x, quantities, method, compute, fixed_chunk, reason, out_size=None) -> DerivativeResult:
    """A torch.func method on CPU without a cap: its footprint measured once per function and shape.

    The only CPU measurement that works under nested forward-mode transforms is the
    profiler's, which slows those ops about 10x: it measures a small slice, once
    (``chunking.FOOTPRINTS``), and every other sample runs unmeasured.
    """
    n = x.shape[0]
    key = (tuple(x.shape[1:]), x.dtype, method, quantities)
    sample = x[: min(n, chunking.FOOTPRINT_SAMPLES)]
    if chunking.FOOTPRINTS.get(fn, key) is None:
        # the full derivative tensors of one sample (a Laplacian's Hessian too), and their temporaries,
        # must fit before anything runs: on CPU running out of memory is the kernel's kill, not an error
        order = max_order(quantities)
        outputs_per_sample = out_size if out_size is not None else _out_size(fn, x, None)
        tensor_bytes = outputs_per_sample * math.prod(x.shape[1:]) ** order * x.element_size()
        free = chunking.available_bytes(x.device)
        if 3 * tensor_bytes > free:
            forced = reason == _requested(method)
            hint = "or use method='auto' " if forced else "fewer outputs or inputs, "
            chosen = "" if forced else " (the engine's choice)"
            raise torch.OutOfMemoryError(
                f"method={method!r}{chosen}: one sample's order-{order} derivatives "
                f"are {tensor_bytes / 1e6:,.1f} MB (outputs x inputs^{order}), more than a third of the "
                f"{free / 1e6:,.0f} MB free; ask for fewer quantities, {hint}"
                "(a Laplacian in collapsed Taylor mode never forms the Hessian)"
            )
    per_sample, measured = chunking.remembered_footprint(fn, key, compute, sample)
    done, start = ([], 0) if measured is None else ([measured], sample.shape[0])
    chunk = fixed_chunk or chunking.auto_chunk(per_sample, n, x.device, None, cache_cap=False)
    run = chunking.run_chunks(compute, x, chunk, start=start, done=done)
    outputs = {name: run.outputs[name].to(dtype=x.dtype, device=x.device) for name in quantities}
    return DerivativeResult(outputs, method, min(run.chunk_size, n), int(per_sample * min(run.chunk_size, n)), reason)


def _empty_result(fn, x, quantities, method) -> DerivativeResult:
    """No samples: the right shapes with a zero-length sample axis."""
    dummy = torch.zeros((1,) + tuple(x.shape[1:]), dtype=x.dtype, device=x.device)
    run = "forward" if method in ("auto", "taylor") else method
    outputs = torch_func_chunk(fn, dummy, quantities, run)
    return DerivativeResult({k: v[:0] for k, v in outputs.items()}, run, 0, None, None)


def derivatives(fn, x, quantities=("value", "jacobian", "hessian"), *, method="auto", chunk_size="auto"):
    """Batched derivatives of a one-sample function: ``{quantity: tensor}``.

    Args:
        fn: maps ONE sample ``[*in]`` to ``[*out]`` (a scalar output is fine).
        x: samples ``[N, *in]``.
        quantities: any of ``value`` ``[N,*out]``, ``jacobian`` ``[N,*out,*in]``,
            ``hessian`` ``[N,*out,*in,*in]``, ``laplacian`` ``[N,*out]``,
            ``dK`` ``[N,*out,*in*K]``.
        method: see :func:`compute_derivatives`.
        chunk_size: an int, or ``"auto"`` to size chunks from measured memory.

    Example:
        >>> out = derivatives(lambda x: (x ** 4).sum(), torch.tensor([[0.0, 1.0, 2.0]]), ("jacobian", "laplacian"))
        >>> out["jacobian"], out["laplacian"]
        (tensor([[ 0.,  4., 32.]]), tensor([60.]))
    """
    return compute_derivatives(fn, x, quantities, method=method, chunk_size=chunk_size).outputs


def compute_operators(
    fn,
    x: torch.Tensor,
    quantities,
    options: OperatorOptions | Mapping | None = None,
    *,
    method: str = "auto",
    chunk_size="auto",
    offset: int = 0,
    memory_limit_bytes: int | None = None,
):
    """Operator quantities (and any ordinary ones) of ``fn`` at every sample of ``x``.

    Args:
        fn: maps ONE sample ``[*in]`` to ``[*out]``.
        x: samples ``[N, *in]``.
        quantities: canonical names; operator ones from ``OPERATOR_QUANTITIES``.
        options: :class:`OperatorOptions`, or a dict of its fields (factor, samples, seed, distribution).
        method: ``auto`` / ``collapsed`` use the collapsed interpreter when it covers ``fn``;
            any other method contracts that method's Hessian.
        chunk_size: samples per chunk, or ``"auto"``.
        offset: global index of ``x[0]`` (a shard's start), which seeds the random directions.
        memory_limit_bytes: cap on one chunk's memory, as in :func:`compute_derivatives`
            (chunks are sized to it and halved when one crosses it).

    Returns:
        A :class:`~pipeline.engine.api.DerivativeResult` (in collapsed mode ``peak_memory_bytes`` is measured only under a cap).
    """
    if isinstance(options, Mapping):  # the job file's keys, e.g. {"samples": 16, "seed": 1}
        options = OperatorOptions(**options)
    options = (options or OperatorOptions()).checked()
    check_x(x)
    quantities = canonical_quantities(quantities)
    ordinary = tuple(q for q in quantities if q not in OPERATOR_QUANTITIES)
    n, in_shape = x.shape[0], tuple(x.shape[1:])
    traced = trace_function(fn, in_shape, x.dtype, x.device) if method in ("auto", "collapsed", "taylor") else None
    gap = collapsed_gap(traced) if traced is not None else _requested(method)
    outputs: dict[str, torch.Tensor] = {}
    peak: int | None = None
    if gap is None and n > 0:
        chunk = operator_chunk_size(traced, x, options, chunk_size, quantities, memory_limit_bytes)

        def pass_over(rows: torch.Tensor, out=None) -> dict[str, torch.Tensor]:
            # the chunking runs over sample indices: a chunk's directions are seeded by its global position
            first = int(rows[0])
            piece = x[first : first + rows.shape[0]]
            return collapsed_operators_chunk(traced, piece, quantities, offset + first, options)

        try:  # chunked, measured under a cap and halved on out-of-memory as every other quantity is
            run = chunking.run_chunks(
                pass_over, torch.arange(n, device=x.device), chunk, limit_bytes=memory_limit_bytes
            )
        except Exception as error:
            if chunking.is_out_of_memory(error):
                raise
            # a collapsed rule refused an argument form at run time: contract a Hessian instead
            gap = f"collapsed mode failed ({type(error).__name__}: {error})"
        else:
            outputs = {name: value.to(x.dtype) for name, value in run.outputs.items()}
            chunk, peak = run.chunk_size, run.peak_bytes
    if gap is None and n > 0:
        used, reason = "collapsed", None
        if ordinary:
            extra = compute_derivatives(
                fn,
                x,
                ordinary,
                method=method if method != "collapsed" else "auto",
                chunk_size=chunk_size,
                memory_limit_bytes=memory_limit_bytes,
            )
            outputs.update(extra.outputs)
    else:
        base_method = "auto" if method == "collapsed" else method
        result = compute_derivatives(
            fn,
            x,
            tuple(dict.fromkeys(ordinary + ("hessian",))),
            method=base_method,
            chunk_size=chunk_size,
            memory_limit_bytes=memory_limit_bytes,
        )
        out_ndim = result.outputs["hessian"].ndim - 1 - 2 * len(in_shape)
        outputs.update(contract_hessian(result.outputs["hessian"], x, quantities, offset, options, out_ndim))
        outputs.update({k: v for k, v in result.outputs.items() if k in ordinary})
        used, chunk, peak = result.method, result.chunk_size, result.peak_memory_bytes
        reason = f"collapsed mode not used ({gap}): contracted the {used} Hessian"
    return DerivativeResult(
        {name: outputs[name] for name in quantities}, used, min(chunk, max(n, 1)) if n else 0, peak, reason
    )
