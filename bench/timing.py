"""Timing shared by the benchmarks: best wall time of repeated runs, synchronised on CUDA."""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so wall times measure it (no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_time(run: Callable[[], object], device: torch.device, repeats: int = 1) -> tuple[float, object]:
    """Best of ``repeats`` wall times (synchronised), and the last result."""
    best, result = math.inf, None
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        result = run()
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return best, result
