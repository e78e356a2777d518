"""Timing shared by the benchmarks: best wall time of repeated runs, synchronised on CUDA."""

from __future__ import annotations

import contextlib
import gc
import math
import os
import time
from collections.abc import Callable, Iterator

import torch


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so wall times measure it (no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def no_gc_pause(collect: bool = True) -> Iterator[None]:
    """Collect first (unless ``collect`` is false), then keep Python's cyclic GC off while timing (as ``timeit`` does).

    With torch imported a full (generation 2) collection takes 70-130 ms on this
    CPU: landing inside a 3 ms call it made a row read 40x slow, and a row timed
    on a slice and scaled read 250x (issue 12's shape grid, forced ``reverse``).
    """
    if collect:
        gc.collect()
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def best_time(run: Callable[[], object], device: torch.device, repeats: int = 1) -> tuple[float, object]:
    """Best of ``repeats`` wall times (synchronised), and the last result."""
    best, result = math.inf, None
    for _ in range(repeats):
        with no_gc_pause():
            synchronize(device)
            start = time.perf_counter()
            result = run()
            synchronize(device)
            best = min(best, time.perf_counter() - start)
    return best, result


def machine_cpu() -> float:
    """Seconds of CPU the whole machine has used so far: every core, kernel threads too (Linux ``/proc/stat``).

    What a write costs beyond its own process: the kernel's writeback and
    reclaim of the page cache run in kernel threads.
    """
    with open("/proc/stat") as handle:
        ticks = [int(v) for v in handle.readline().split()[1:]]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")  # less idle and iowait
