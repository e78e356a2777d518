"""The one unit of work: ``run_shard(spec, shard)``, the same under every executor.

It computes the shard on the worker's device (the job kind says how), writes
the shard's region of the store, then its commit marker, and returns a small
``ShardRecord`` (never the arrays). No Ray in here.
"""

from __future__ import annotations

import socket
import time

import numpy as np
import torch

from .kinds import kind_module
from .plan import Shard
from .store import ShardRecord, checksum, record_attempt, write_marker, write_region


def pick_device() -> torch.device:
    """The worker's device: its GPU when it has one (Ray sets CUDA_VISIBLE_DEVICES), else the CPU."""
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda:{torch.cuda.current_device()} {torch.cuda.get_device_name(device)}"
    return "cpu"


def compute_shard(spec, shard: Shard, device: torch.device | None = None):
    """The arrays of one shard (keyed by store array name) and how they were computed."""
    return kind_module(spec).compute(spec, shard, device or pick_device())


def run_shard(spec, shard: Shard) -> ShardRecord:
    """Compute one shard, write its region and commit it; return its record.

    Raises whatever the computation raises (the executor retries); the marker
    is written only after every array of the shard is in the store, so a shard
    either committed completely or is pending.
    """
    store = spec.store.path
    attempt = record_attempt(store, shard.id)
    began = time.perf_counter()
    device = pick_device()
    arrays, info = compute_shard(spec, shard, device)
    write_region(store, arrays, shard.start, shard.stop)
    seconds = time.perf_counter() - began
    record = ShardRecord(
        shard_id=shard.id,
        start=shard.start,
        stop=shard.stop,
        status="done",
        attempts=attempt,
        host=socket.gethostname(),
        device=device_name(device),
        seconds=round(seconds, 4),
        samples_per_second=round(shard.size / seconds, 2) if seconds > 0 else 0.0,
        nonfinite=int(sum(np.count_nonzero(~np.isfinite(a)) for a in arrays.values() if a.dtype.kind == "f")),
        checksum=checksum(arrays),
        method=info.method,
        chunk_size=info.chunk_size,
        peak_memory_bytes=int(info.peak_memory_bytes) if info.peak_memory_bytes is not None else -1,
    )
    write_marker(store, record)
    return record
