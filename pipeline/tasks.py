"""The one unit of work: ``run_shard(spec, shard)``, the same under every executor.

It computes the shard on the worker's device (the job kind says how) in
blocks of whole chunks, each written by a background thread while the next
computes (``writer.BlockWriter``), then writes the shard's commit marker and
returns a small ``ShardRecord`` (never the arrays). No Ray in here.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .cluster import placement
from .encoding import dtype_key, encodings
from .errors import RejectedResults
from .fingerprints import code_fingerprint
from .kinds import ShardInfo, kind_of
from .live import BLOCK_REPORT_MIN_S, clear_block_progress, write_attempt_error, write_block_progress
from .memory import Budget, attempt_budget, block_sizing
from .plan import BLOCKS_PER_SHARD, MAX_BLOCK_BYTES, Plan, Shard, shard_blocks
from .storage import is_remote, mark_transient, set_options
from .store import ShardRecord, open_for_writing, record_attempt, write_marker
from .writer import BlockWriter


class NonFiniteError(RejectedResults):
    """A shard holds NaN or Inf and the job says ``execution.on_nonfinite: fail``: it is not committed."""

    def __init__(self, shard: Shard, counts: dict[str, int]) -> None:
        self.counts = dict(counts)
        what = ", ".join(f"{count} in {name}" for name, count in sorted(counts.items()))
        super().__init__(
            f"execution.on_nonfinite is fail and shard {shard.id} (samples {shard.start}-{shard.stop}) holds "
            f"{sum(counts.values())} non-finite values ({what}); fix the function or its inputs there, or set "
            "execution.on_nonfinite: warn to keep them"
        )

    def __reduce__(self):  # Ray sends the error back pickled
        return (_rebuild_nonfinite, (str(self), self.counts))


def _rebuild_nonfinite(message: str, counts: dict[str, int]) -> NonFiniteError:
    error = NonFiniteError.__new__(NonFiniteError)
    RuntimeError.__init__(error, message)
    error.counts = counts
    return error


class StoredOverflowError(RejectedResults):
    """Finite results that the stored dtype (float16) cannot hold: the shard is not committed, whatever
    ``on_nonfinite`` says (its values would read back as Inf). The driver's check of the first samples
    stops most such jobs before they start; this catches values past them."""

    def __init__(self, shard: Shard, counts: dict[str, int], keys: dict[str, str]) -> None:
        self.counts, self.keys = dict(counts), dict(keys)
        what = "; ".join(
            f"{keys[name]}: {count} values of {name} beyond its range" for name, count in sorted(counts.items())
        )
        super().__init__(
            f"shard {shard.id} (samples {shard.start}-{shard.stop}): the stored dtype overflows ({what}; float16 "
            "holds |x| <= 65504, bfloat16 |x| <= 3.4e38); store these arrays as float32, or a float16 one as "
            "bfloat16 (store.encoding.<name>.dtype)"
        )

    def __reduce__(self):  # Ray sends the error back pickled
        return (_rebuild_overflow, (str(self), self.counts, self.keys))


def _rebuild_overflow(message: str, counts: dict[str, int], keys: dict[str, str]) -> StoredOverflowError:
    error = StoredOverflowError.__new__(StoredOverflowError)
    RuntimeError.__init__(error, message)
    error.counts, error.keys = counts, keys
    return error


def pick_device() -> torch.device:
    """The worker's device: its GPU when it has one (Ray sets CUDA_VISIBLE_DEVICES), else the CPU."""
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda:{torch.cuda.current_device()} {torch.cuda.get_device_name(device)}"
    return "cpu"


def compute_block(
    spec,
    block: Shard,
    device: torch.device | None = None,
    previous: ShardInfo | None = None,
    budget: Budget | None = None,
):
    """The arrays of one block of a shard (keyed by store array name) and how they were computed.

    ``previous`` is how the shard's earlier blocks were computed (``None`` for
    its first block): the kind may reuse their choices (the derivative
    engine's method) instead of choosing again. ``budget`` caps chunks and
    memory (``pipeline.memory``).
    """
    return kind_of(spec).compute(spec, block, device or pick_device(), previous, budget)


def merge_info(first: ShardInfo, other: ShardInfo) -> ShardInfo:
    """How a shard was computed, from how its blocks were."""
    method = first.method if other.method == first.method else f"{first.method}, {other.method}"
    peaks = [p for p in (first.peak_memory_bytes, other.peak_memory_bytes) if p is not None]
    return ShardInfo(method, max(first.chunk_size, other.chunk_size), max(peaks) if peaks else None)


class StoreNotHere(RuntimeError):
    """The worker's machine does not see the driver's store (a local ``store.path`` on a cluster of several
    machines without a shared filesystem). Retried as any failure: another attempt may run where it is."""


_SHARED_FIX = (
    "on a cluster of several machines, use a bucket URL (s3://..., docs/object-storage.md) or a path on a "
    "filesystem every node sees (NFS, a shared volume)"
)


def _where() -> str:
    node, _ = placement()
    return f"{socket.gethostname()}" + (f", {node}" if node else "")


def check_store_here(path: Any, store_id: str | None = None) -> None:
    """Raise ``StoreNotHere`` unless this machine sees the driver's local store ``path`` (with its ``store_id``).

    Without it, a worker on a machine that does not see the driver's disk failed on the missing ``_shards``
    folder (FileNotFoundError), or wrote into another store made at the same path on its own disk.
    A bucket is the same for every machine: nothing to check.
    """
    if is_remote(path):
        return
    try:
        found = json.loads((Path(path) / "zarr.json").read_text()).get("attributes", {}).get("store_id")
    except FileNotFoundError:
        raise StoreNotHere(
            f"store.path {path} does not exist on this worker's machine ({_where()}): the driver made it on its "
            f"own disk, which this machine does not see; {_SHARED_FIX}"
        ) from None
    except (OSError, ValueError, AttributeError):  # unreadable here: the writes say what is wrong
        return
    if store_id is not None and found is not None and found != store_id:
        raise StoreNotHere(
            f"store.path {path} on this worker's machine ({_where()}) holds another store than the driver's "
            f"(made at the same path: store_id {found}, not {store_id}), so this machine does not see the "
            f"driver's disk; {_SHARED_FIX}"
        )


def run_shard(
    spec: Any, shard: Shard, *, bytes_per_sample: int, memory_retries: int = 0, store_id: str | None = None
) -> ShardRecord:
    """Compute one shard block by block, write its region and commit it; return its record.

    ``bytes_per_sample`` (``Plan.bytes_per_sample``) sizes the blocks, within
    ``execution.memory_limit``; ``memory_retries`` (how many attempts of this
    shard ran out of memory) halves blocks and chunks that many times. Raises
    whatever the computation or a write raises (the executor retries); the
    marker is written only after every block of the shard is in the store,
    so a shard either committed completely or is pending.
    """
    store = spec.store.path
    set_options(store, spec.store.storage_options)  # a worker opens the store from its URL itself
    check_store_here(store, store_id)
    try:
        attempt = record_attempt(store, shard.id)
    except Exception as err:
        mark_transient(err)  # the driver counts a storage outage by it (its causes stay here, under Ray)
        raise
    try:
        return _run_attempt(spec, shard, attempt, bytes_per_sample, memory_retries)
    except Exception as err:
        mark_transient(err)
        # the full traceback goes to the store (manifest, `pipeline inspect --shard`), the console gets one line
        write_attempt_error(store, shard.id, attempt, err)
        raise


def shard_task(plan: Plan, store_id: str | None = None) -> Callable[[Any, Shard, int], ShardRecord]:
    """The unit of work the driver hands its executor: ``run_shard(spec, shard, memory_retries)`` with ``plan``'s block sizing.

    ``store_id``: the store's (a root attribute); a worker that finds another there refuses to write.
    A plain function (not a ``functools.partial``), so that Ray can make a task of it.
    """
    bytes_per_sample = plan.bytes_per_sample()

    def run_planned_shard(spec: Any, shard: Shard, memory_retries: int = 0) -> ShardRecord:
        return run_shard(
            spec, shard, bytes_per_sample=bytes_per_sample, memory_retries=memory_retries, store_id=store_id
        )

    return run_planned_shard


_ENCODINGS: dict[str, dict] = {}


def stored_encodings(group) -> dict:
    """The store's array encodings (``encoding.encodings``), read once per worker process and store.

    Reading them lists the store and opens each array (~20 ms a shard on local
    disk, a LIST and a GET per array in a bucket). They are kept by the store's
    ``store_id`` (a root attribute, already read with ``group``, new each time
    a store is made); a store made before it had one is read every shard.
    """
    store_id = group.attrs.get("store_id")
    if store_id is None:
        return encodings(group)
    found = _ENCODINGS.get(store_id)
    if found is None:
        if len(_ENCODINGS) >= 16:  # a long-lived worker of many jobs keeps the latest few
            _ENCODINGS.pop(next(iter(_ENCODINGS)))
        found = _ENCODINGS[store_id] = encodings(group)
    return found


def _run_attempt(spec: Any, shard: Shard, attempt: int, bytes_per_sample: int, memory_retries: int) -> ShardRecord:
    store = spec.store.path
    started = time.time()
    began = time.perf_counter()
    write_block_progress(store, shard.id, attempt, 0, shard.size)  # started: the driver counts it running
    device = pick_device()
    group = open_for_writing(store)
    per_object = spec.store.chunk_size * (getattr(spec.store, "shards", None) or 1)  # whole Zarr shards per block
    limit = getattr(spec.execution, "memory_limit", None)
    count, block_bytes = block_sizing(BLOCKS_PER_SHARD, MAX_BLOCK_BYTES, limit, memory_retries)
    blocks = shard_blocks(shard, per_object, bytes_per_sample, blocks=count, max_block_bytes=block_bytes)
    budget = attempt_budget(limit, memory_retries)
    info: ShardInfo | None = None
    written, reported = 0, time.monotonic()

    def on_written(start: int, stop: int) -> None:  # in the writer thread, as each block's write finishes
        nonlocal written, reported
        written += stop - start
        if time.monotonic() - reported >= BLOCK_REPORT_MIN_S and written < shard.size:  # the marker says the rest
            write_block_progress(store, shard.id, attempt, written, shard.size)
            reported = time.monotonic()

    threads = max(1, int(getattr(spec.execution, "cpus_per_task", 1)))  # the CPUs the task asked of Ray
    with BlockWriter(
        store,
        group=group,
        on_written=on_written,
        stored_as=stored_encodings(group),
        threads=threads,
        direct=spec.store.direct_writes,
    ) as writer:
        for block in blocks:
            arrays, block_info = compute_block(spec, block, device, info, budget)
            info = block_info if info is None else merge_info(info, block_info)
            writer.submit(block.start, block.stop, arrays)
    if writer.overflow_by_array:
        keys = {name: dtype_key(spec, name) for name in writer.overflow_by_array}
        raise StoredOverflowError(shard, writer.overflow_by_array, keys)
    if writer.nonfinite and getattr(spec.execution, "on_nonfinite", "warn") == "fail":
        raise NonFiniteError(shard, writer.nonfinite_by_array)
    seconds = time.perf_counter() - began
    assert info is not None  # a shard has at least one sample, so at least one block
    node, accelerators = placement()  # the Ray node and GPU ids, when a Ray worker runs this
    record = ShardRecord.done(
        shard,
        attempts=attempt,
        host=socket.gethostname(),
        device=device_name(device) + (f" ({', '.join(filter(None, (node, accelerators)))})" if node else ""),
        seconds=round(seconds, 4),
        samples_per_second=round(shard.size / seconds, 2) if seconds > 0 else 0.0,
        nonfinite=writer.nonfinite,
        checksum=writer.checksum,
        array_checksums=json.dumps(writer.array_checksums),
        nonfinite_by_array=json.dumps(writer.nonfinite_by_array) if writer.nonfinite_by_array else "",
        code=code_fingerprint(spec),
        method=info.method,
        chunk_size=info.chunk_size,
        block_size=max(b.size for b in blocks),
        memory_retries=memory_retries,
        peak_memory_bytes=int(info.peak_memory_bytes) if info.peak_memory_bytes is not None else -1,
        started=round(started, 3),
        finished=round(time.time(), 3),
        worker=f"{socket.gethostname()}:{os.getpid()}",
        job=spec.name,
        spec_hash=spec.spec_hash(),
    )
    write_marker(store, record)
    clear_block_progress(store, shard.id)
    return record
