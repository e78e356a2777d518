"""A batched user solver that runs out of memory when given more than ``max_cases`` cases at once.

``error`` picks how: ``torch`` (``torch.OutOfMemoryError``, what a CUDA
allocation raises), ``python`` (``MemoryError``, the CPU allocator),
``message`` (a RuntimeError saying "out of memory", as some backends do) or
``value`` (a ValueError: not a memory failure, so its retries keep the sizes);
``allocate`` raises nothing: each call really allocates and touches
``bytes_per_case`` bytes per case and holds them ``hold_s`` seconds, for a
memory monitor (Ray's) to see and kill the worker.
Its outputs are elementwise in the case, so they do not depend on how many
cases are solved together: a run that shrank its chunks must match a clean
one bit for bit.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from pipeline.solvers.interface import Solver
from pipeline.solvers.params import ParamInfo

ERRORS = {
    "torch": lambda n: torch.OutOfMemoryError(f"tried to allocate for {n} cases"),
    "python": lambda n: MemoryError(f"{n} cases"),
    "message": lambda n: RuntimeError(f"DefaultCPUAllocator: not enough memory: {n} cases (out of memory)"),
    "value": lambda n: ValueError(f"{n} cases is not a memory problem"),
}


def hungry(params, max_cases: int = 1 << 30, error: str = "torch", bytes_per_case: int = 0, hold_s: float = 0.0):
    a = params["a"]
    if error == "allocate":
        held = np.ones(a.shape[0] * bytes_per_case // 8)  # np.ones writes every page: resident, not just reserved
        time.sleep(hold_s)
        del held
    elif a.shape[0] > max_cases:
        raise ERRORS[error](a.shape[0])
    k = torch.arange(1, 5, dtype=a.dtype, device=a.device)
    return {"y": torch.sin(a[:, None] * k), "s": a * a + 1}


SOLVER = Solver(
    name="hungry",
    fn=hungry,
    default_options={"max_cases": 1 << 30, "error": "torch", "bytes_per_case": 0, "hold_s": 0.0},
    batched=True,
    parameters_fn=lambda options: {"a": ParamInfo((), (), 1.0, "a number")},
    outputs_fn=lambda options: {"y": (("k",), (4,)), "s": ((), ())},
    coords_fn=lambda options: {"k": np.arange(1, 5)},
    description="sin(a k) and a^2 + 1, out of memory above max_cases cases per call",
)
