"""Public entry points: ``derivatives`` and ``compute_derivatives``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from pipeline.quantities import canonical_quantities

from .strategies import torch_func_chunk

METHODS = ("auto", "taylor", "forward", "reverse", "forward-over-reverse")


@dataclass(frozen=True)
class DerivativeResult:
    """What ``compute_derivatives`` returns: the tensors and how they were computed."""

    outputs: dict[str, torch.Tensor]
    method: str
    chunk_size: int
    peak_memory_bytes: int | None = None
    fallback_reason: str | None = None


def _check_method(method: str) -> str:
    if method not in METHODS:
        raise ValueError(f"unknown derivative method {method!r}; choose from {', '.join(METHODS)}")
    return method


def compute_derivatives(fn, x, quantities, *, method="auto", chunk_size="auto", memory_limit_bytes=None):
    method = _check_method(method)
    quantities = canonical_quantities(quantities)
    n = x.shape[0]
    chunk = n if chunk_size == "auto" else int(chunk_size)
    run = "forward" if method in ("auto", "taylor") else method
    pieces = [torch_func_chunk(fn, x[s : s + chunk], quantities, run) for s in range(0, n, chunk)]
    outputs = {q: torch.cat([p[q] for p in pieces]) for q in quantities}
    return DerivativeResult(outputs, run, chunk)


def derivatives(fn, x, quantities=("value", "jacobian", "hessian"), *, method="auto", chunk_size="auto"):
    return compute_derivatives(fn, x, quantities, method=method, chunk_size=chunk_size).outputs
