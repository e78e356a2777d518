"""The one unit of work: ``run_shard(spec, shard)``, the same under every executor.

It reads the shard's inputs, runs the derivative engine on the worker's device,
writes the shard's region of the store, then its commit marker, and returns a
small ``ShardRecord`` (never the arrays). No Ray in here.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import lru_cache

import numpy as np
import torch

from .models import build_function
from .plan import Shard
from .sources import read_inputs
from .spec import JobSpec
from .store import ShardRecord, checksum, host_name, record_attempt, write_marker, write_region

DTYPES = {"float32": torch.float32, "float64": torch.float64}


def pick_device() -> torch.device:
    """The worker's device: its GPU when it has one (Ray sets CUDA_VISIBLE_DEVICES), else the CPU."""
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda:{torch.cuda.current_device()} {torch.cuda.get_device_name(device)}"
    return "cpu"


@lru_cache(maxsize=4)
def _cached_function(function_json: str, dtype: str, device: str) -> Callable:
    # A worker process runs many shards of one job: build (and load) the model once.
    from pydantic import TypeAdapter

    from .spec import Function

    spec = TypeAdapter(Function).validate_json(function_json)
    return build_function(spec, DTYPES[dtype], device)


def job_function(spec: JobSpec, device: torch.device) -> Callable:
    """The job's per-sample function on ``device`` (cached per worker process)."""
    return _cached_function(spec.function.model_dump_json(), spec.derivatives.dtype, str(device))


def compute_shard(spec: JobSpec, shard: Shard, device: torch.device | None = None):
    """Inputs and quantities of a shard as numpy arrays, plus the engine's report."""
    from .derivatives import compute_derivatives

    device = device or pick_device()
    dtype = DTYPES[spec.derivatives.dtype]
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = spec.derivatives.allow_tf32
        torch.backends.cudnn.allow_tf32 = spec.derivatives.allow_tf32
    x = torch.as_tensor(read_inputs(spec.inputs, shard.start, shard.stop), dtype=dtype, device=device)
    result = compute_derivatives(
        job_function(spec, device),
        x,
        spec.quantities,
        method=spec.derivatives.method,
        chunk_size=spec.derivatives.chunk_size,
    )
    arrays = {"inputs": x.detach().cpu().numpy()}
    for name in spec.quantities:
        arrays[name] = result.outputs[name].detach().cpu().numpy()
    return arrays, result


def run_shard(spec: JobSpec, shard: Shard) -> ShardRecord:
    """Compute one shard, write its region and commit it; return its record.

    Raises whatever the computation raises (the executor retries); the marker
    is written only after every array of the shard is in the store, so a shard
    either committed completely or is pending.
    """
    store = spec.store.path
    attempt = record_attempt(store, shard.id)
    began = time.perf_counter()
    device = pick_device()
    arrays, result = compute_shard(spec, shard, device)
    write_region(store, arrays, shard.start, shard.stop)
    seconds = time.perf_counter() - began
    record = ShardRecord(
        shard_id=shard.id,
        start=shard.start,
        stop=shard.stop,
        status="done",
        attempts=attempt,
        host=host_name(),
        device=device_name(device),
        seconds=round(seconds, 4),
        samples_per_second=round(shard.size / seconds, 2) if seconds > 0 else 0.0,
        nonfinite=int(sum(np.count_nonzero(~np.isfinite(a)) for n, a in arrays.items() if n != "inputs")),
        checksum=checksum(arrays),
        method=result.method,
        chunk_size=int(result.chunk_size),
        peak_memory_bytes=int(result.peak_memory_bytes) if result.peak_memory_bytes is not None else -1,
    )
    write_marker(store, record)
    return record
