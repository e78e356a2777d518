"""Memory: measure a chunk's footprint, size chunks to fit, halve them on out-of-memory.

On CUDA the footprint is ``torch.cuda.max_memory_allocated``. On CPU there is
no allocator counter, so :class:`MemoryTracker` (a dispatch mode) adds up the
bytes of every tensor an op creates and subtracts them when the tensor is
freed. With ``memory_limit_bytes`` on CPU the tracker also *enforces* the cap:
crossing it raises ``torch.OutOfMemoryError`` exactly where a real allocator
would, so the back-off path is the one real out-of-memory errors take.

Example:
    >>> with MemoryTracker() as tracker:
    ...     _ = torch.ones(1000, dtype=torch.float64) * 2
    >>> tracker.peak_bytes >= 8000
    True
"""

from __future__ import annotations

import contextlib
import functools
import gc
import math
import os
import warnings
import weakref
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from ..memory import OOM_MESSAGES

# CPU: past this many samples, or this many bytes per chunk, a chunk no longer gets faster,
# only bigger - the coefficient slices fall out of cache (measured on seed-000 and W2, see docs)
CPU_MAX_CHUNK = 4096
CPU_CHUNK_TARGET_BYTES = 48 << 20
GPU_MAX_CHUNK = 1 << 20
SAFETY = 1.5  # head-room over the measured per-sample footprint
# CPU under a cap: measure every chunk, not only the first chunk of each size written into the results (for
# benchmarks and debugging; the measuring runs cost up to 65% on a Taylor jet of many small ops)
MEASURE_EVERY_CHUNK = False


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` is an allocation failure that a smaller chunk may avoid."""
    if isinstance(error, torch.OutOfMemoryError):
        return True
    return isinstance(error, RuntimeError) and any(m in str(error).lower() for m in OOM_MESSAGES)


class MemoryTracker(TorchDispatchMode):
    """Count live bytes of the storages that ops inside the block create; optionally cap them.

    Each new storage is held by a *weak* storage reference, which expires when
    the storage is freed - also when only C++ still held it (autograd's saved
    tensors, functorch internals) - so the count is the real live total of
    what the block allocated. Views share a storage and count once.
    """

    def __init__(self, limit_bytes: int | None = None):
        super().__init__()
        self.limit_bytes = limit_bytes
        self.current_bytes = 0  # an upper bound between rescans (freed storages drop out on rescan)
        self.peak_bytes = 0
        self._live: dict[int, tuple[StorageWeakRef, int]] = {}

    def _rescan(self) -> None:
        expired = [key for key, (ref, _) in self._live.items() if ref.expired()]
        for key in expired:
            del self._live[key]
        self.current_bytes = sum(nbytes for _, nbytes in self._live.values())

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        added = 0
        for tensor in tree_flatten(out)[0]:
            if not isinstance(tensor, torch.Tensor) or tensor.device.type == "meta":
                continue
            try:
                storage = tensor.untyped_storage()
                nbytes = storage.nbytes()
                ref = StorageWeakRef(storage)
            except (RuntimeError, NotImplementedError):  # functorch wrappers have no storage of their own
                continue
            if nbytes == 0 or ref.cdata in self._live:
                continue
            self._live[ref.cdata] = (ref, nbytes)
            added += nbytes
        if added:
            self.current_bytes += added
            if self.current_bytes > self.peak_bytes:
                self._rescan()  # only a new maximum needs the exact figure
                self.peak_bytes = max(self.peak_bytes, self.current_bytes)
                if self.limit_bytes is not None and self.current_bytes > self.limit_bytes:
                    raise torch.OutOfMemoryError(
                        f"memory cap reached: {self.current_bytes} bytes live > memory_limit_bytes={self.limit_bytes}"
                    )
        return out


def must_measure(size: int, measured_size: int, device: torch.device) -> bool:
    """Whether a chunk of ``size`` samples runs measured, when chunks of up to ``measured_size`` were measured.

    The engine's chunk computations allocate the same tensors for the same shape
    (no data-dependent shapes, caches keyed by shape only, filled on the first
    call), and tensors that grow with the sample axis: a chunk's peak is a function
    of its size, and no larger for fewer samples. So on CPU, where measuring means
    a Python dispatch mode around every op (or the profiler's 10x slower ops), a
    chunk no larger than one that already ran measured within the cap runs
    unmeasured. Elsewhere (CUDA's counters cost nothing) every chunk is measured.

    Example:
        >>> cpu = torch.device("cpu")
        >>> must_measure(64, 0, cpu), must_measure(64, 64, cpu), must_measure(65, 64, cpu)
        (True, False, True)
    """
    return MEASURE_EVERY_CHUNK or device.type != "cpu" or size > measured_size


def available_bytes(device: torch.device) -> int:
    """Free memory on ``device``: CUDA's free bytes, or half of the host's MemAvailable."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free * 0.8)
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024 // 2
    except OSError:
        pass
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES") // 2)


@dataclass
class Measured:
    """One chunk's outputs and its measured peak memory."""

    outputs: dict[str, torch.Tensor]
    peak_bytes: int | None


@contextlib.contextmanager
def _quiet_stderr():
    """Silence file descriptor 2 (kineto prints a line on every profiler start and stop)."""
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _profiled(compute: Callable[[torch.Tensor], dict], x: torch.Tensor) -> Measured:
    """Peak of the CPU allocator's own accounting, from the profiler's memory events.

    Every allocation and free goes through the allocator's reporting hook, so
    this sees memory that only C++ holds too (saved tensors inside nested
    transforms) without a Python dispatch mode in the way.
    """
    from torch.profiler import ProfilerActivity, profile

    profiler = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
    with _quiet_stderr(), warnings.catch_warnings():
        # torch 2.11 warns "Profiler clears events at the end of each cycle ..." on the first start
        # of every fresh profiler (torch 2.13 only when one is restarted); one cycle is all we use
        warnings.filterwarnings("ignore", message="Warning: Profiler clears events", category=UserWarning)
        profiler.__enter__()
    try:
        outputs = compute(x)
    finally:
        with _quiet_stderr():
            profiler.__exit__(None, None, None)
    try:
        session = profiler.profiler
        results = session.kineto_results if session is not None else None
        if results is None:
            return Measured(outputs, None)
        events = [e for e in results.events() if e.name() == "[memory]"]
    except (AttributeError, RuntimeError):  # internal API: no measurement rather than no result
        return Measured(outputs, None)
    live = peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):
        # torch's stub of _KinetoEvent lacks nbytes(), which the profiler's memory events have
        live += event.nbytes()  # type: ignore[attr-defined]
        peak = max(peak, live)
    return Measured(outputs, peak)


def measure(
    compute: Callable[[torch.Tensor], dict], x: torch.Tensor, limit_bytes: int | None = None, tracker: bool = True
) -> Measured:
    """Run ``compute(x)`` and measure its peak memory (bytes above what was in use before).

    Args:
        tracker: on CPU, count with :class:`MemoryTracker` (exact, and enforces
            ``limit_bytes`` per op). Set it to ``False`` for torch.func code:
            a Python dispatch mode under nested forward-mode transforms crashes
            torch 2.13, so those chunks are measured from the profiler's
            allocator events and the cap is checked afterwards.
    """
    peak: int | None
    if x.device.type == "cuda":
        torch.cuda.synchronize(x.device)
        base = torch.cuda.memory_allocated(x.device)
        torch.cuda.reset_peak_memory_stats(x.device)
        outputs = compute(x)
        peak = torch.cuda.max_memory_allocated(x.device) - base
    elif tracker:
        with MemoryTracker(limit_bytes) as counter:
            outputs = compute(x)
        return Measured(outputs, counter.peak_bytes)
    else:
        profiled = _profiled(compute, x)
        outputs, peak = profiled.outputs, profiled.peak_bytes
    if limit_bytes is not None and peak is not None and peak > limit_bytes:
        # no allocator cap to hit on the way: enforce the caller's cap on the measurement
        raise torch.OutOfMemoryError(f"chunk used {peak} bytes > memory_limit_bytes={limit_bytes}")
    return Measured(outputs, peak)


FOOTPRINT_SAMPLES = 1  # the slice a torch.func method's footprint is measured on (CPU, profiler): one sample,
# since its intermediates can be far larger than its results (a forced forward d3 at 200 inputs: 10.6 GB for one)


class PerFunction:
    """What was measured about a function, kept per function (weakly) and ``key`` (shape, dtype, method...).

    Memory and relative speed do not depend on the weights, so a measurement holds for as
    long as the function lives; a function that is not weak-referenceable is not remembered.
    """

    def __init__(self) -> None:
        self._by_fn: weakref.WeakKeyDictionary[object, dict] = weakref.WeakKeyDictionary()

    def get(self, fn, key):
        try:
            return self._by_fn.get(fn, {}).get(key)
        except TypeError:
            return None

    def entries(self, fn) -> dict:
        """Everything remembered for ``fn``: ``{key: value}`` (a copy)."""
        try:
            return dict(self._by_fn.get(fn, {}))
        except TypeError:
            return {}

    def put(self, fn, key, value) -> None:
        try:
            self._by_fn.setdefault(fn, {})[key] = value
        except TypeError:
            pass


FOOTPRINTS = PerFunction()  # bytes per sample of a torch.func method (or an hvp) on CPU


def remembered_footprint(fn, key, compute: Callable[[torch.Tensor], dict], sample: torch.Tensor):
    """``(bytes per sample, outputs of sample or None)``: measured under the profiler once per ``fn`` and ``key``.

    The first call measures ``compute(sample)`` (about 10x slower ops) and keeps
    the figure in ``FOOTPRINTS``; its outputs come back so the caller keeps them
    as results. Later calls return the figure and ``None``.
    """
    per_sample = FOOTPRINTS.get(fn, key)
    if per_sample is not None:
        return per_sample, None
    measured = measure(compute, sample, None, tracker=False)
    per_sample = per_sample_bytes(measured.peak_bytes, sample.shape[0])
    FOOTPRINTS.put(fn, key, per_sample)
    return per_sample, measured.outputs


CHOICES = PerFunction()  # the method that measured fastest when the cost model called it close


def auto_chunk(
    per_sample_bytes: float, n: int, device: torch.device, limit_bytes: int | None, cache_cap: bool = True
) -> int:
    """The chunk that fits the budget with head-room, capped where larger stops paying off.

    ``cache_cap=False`` (the torch.func strategies on CPU): no per-chunk byte cap, only the
    sample cap - each vmapped call has a fixed cost, and one call over the whole batch
    measured up to 1.9x faster than chunks of 48 MB (forced reverse Hessian, 50 inputs).
    """
    budget = limit_bytes if limit_bytes is not None else available_bytes(device)
    fits = int(budget // max(per_sample_bytes * SAFETY, 1.0))
    if device.type == "cuda":
        cap = GPU_MAX_CHUNK
    elif not cache_cap:
        cap = CPU_MAX_CHUNK
    else:
        cap = min(CPU_MAX_CHUNK, max(64, int(CPU_CHUNK_TARGET_BYTES // max(per_sample_bytes, 1.0))))
    return max(1, min(n, fits, cap))


@dataclass
class ChunkedRun:
    """Outputs of a chunked run and what it took."""

    outputs: dict[str, torch.Tensor]
    chunk_size: int
    peak_bytes: int | None


def run_chunks(
    compute: Callable[..., dict],
    x: torch.Tensor,
    chunk_size: int,
    start: int = 0,
    done: list[dict] | None = None,
    limit_bytes: int | None = None,
    peak_bytes: int | None = None,
    track: bool = False,
    tracker: bool = True,
) -> ChunkedRun:
    """Run ``compute`` over ``x[start:]`` in chunks, halving the chunk on out-of-memory.

    Args:
        compute: ``compute(chunk, out=None)`` maps a chunk ``[B, *in]`` to a dict of
            ``[B, ...]`` tensors; given ``out`` (a dict of destination slices) it
            writes the results there, which saves gathering the chunks afterwards.
        x: all samples.
        chunk_size: the chunk to start with.
        start: samples before ``start`` are already computed (their outputs in ``done``).
        limit_bytes: cap each chunk's measured memory at this (CPU: enforced by the tracker).
        track: measure the chunks' memory (otherwise only what ``peak_bytes`` already says). On CPU
            only the first chunk of each size that is written into the results runs measured
            (see :func:`must_measure`); it fits the cap, so smaller or equal chunks do too.
        tracker: how to measure on CPU (see ``measure``).

    Never fails for lack of memory while a smaller chunk might fit; raises the
    last out-of-memory error when even one sample does not fit.
    """
    n = x.shape[0]
    chunk = max(1, int(chunk_size))
    position = start
    results: dict[str, torch.Tensor] | None = None
    measured_size = 0  # chunks up to this size were measured, within the cap, writing into the results
    if done:
        results = _allocate(done[0], n)
        offset = 0
        for piece_outputs in done:
            size = next(iter(piece_outputs.values())).shape[0]
            for name, value in piece_outputs.items():
                results[name][offset : offset + size].copy_(value)
            offset += size
    while position < n:
        piece = x[position : position + chunk]
        stop = position + piece.shape[0]
        destination = None if results is None else {k: v[position:stop] for k, v in results.items()}
        work = functools.partial(compute, out=destination)
        try:
            if (track or limit_bytes is not None) and must_measure(piece.shape[0], measured_size, x.device):
                result = measure(work, piece, limit_bytes, tracker)
                outputs = result.outputs
                if result.peak_bytes is not None:
                    peak_bytes = max(peak_bytes or 0, result.peak_bytes)
                if destination is not None:
                    # a chunk that returns its outputs is no model for one that writes in place: the profiler
                    # measured a forward Hessian 1% larger written in place (the tracker: the same)
                    measured_size = max(measured_size, piece.shape[0])
            else:
                outputs = work(piece)
        except Exception as error:
            if not is_out_of_memory(error):
                raise
            del error
            _free(x.device)
            if chunk == 1:
                raise torch.OutOfMemoryError(
                    "one sample does not fit in memory"
                    + (f" under memory_limit_bytes={limit_bytes}" if limit_bytes is not None else "")
                    + "; free memory, raise the limit, or ask for fewer/lower-order quantities"
                ) from None
            chunk = max(1, chunk // 2)
            continue
        if results is None and position == 0 and stop == n and all(map(_owns_storage, outputs.values())):
            return ChunkedRun(dict(outputs), chunk, peak_bytes)  # one chunk: its outputs are the results
        if results is None:
            results = _allocate(outputs, n)
        for name, value in outputs.items():
            target = results[name][position:stop]
            if value.data_ptr() != target.data_ptr():  # computed elsewhere, not written in place
                target.copy_(value)
        position = stop
    return ChunkedRun(results or {}, chunk, peak_bytes)


def _owns_storage(value: torch.Tensor) -> bool:
    """Whether ``value`` is all of its storage, perhaps permuted (not a view keeping a larger buffer alive)."""
    return value.untyped_storage().nbytes() == value.numel() * value.element_size()


def _allocate(example: dict[str, torch.Tensor], n: int) -> dict[str, torch.Tensor]:
    """Result tensors for all ``n`` samples, shaped like one chunk's outputs."""
    return {name: value.new_empty((n,) + tuple(value.shape[1:])) for name, value in example.items()}


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def per_sample_bytes(peak_bytes: int | None, samples: int) -> float:
    """Bytes per sample from a measured chunk (at least a few bytes, never zero)."""
    if not peak_bytes or samples <= 0:
        return 1.0
    return math.ceil(peak_bytes / samples)
