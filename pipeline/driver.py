"""The driver: spec -> plan -> store -> executor -> finalized store.

``prepare(spec)`` resolves sizes (reading only input metadata), builds the
function once on the driver's CPU and runs the engine on two samples, so bad
input fails here, before any store exists. ``submit(spec, executor)`` creates
the store (or resumes one made by the same spec), runs the pending shards and
finalizes the store.

Example:
    >>> from pipeline.spec import load_spec
    >>> from pipeline.runner import InlineExecutor
    >>> submit(load_spec("jobs/quickstart.yaml"), InlineExecutor())   # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from .models import FunctionError, build_function, probe_output_shape
from .plan import Plan, Shard, plan_derivative_job
from .sources import describe_inputs, read_inputs
from .spec import JobSpec, MLPFunction
from .store import (
    ShardRecord,
    StoreError,
    attempt_count,
    create_store,
    finalize_store,
    read_attributes,
    read_markers,
    read_plan,
    store_exists,
)
from .tasks import DTYPES, run_shard


@dataclass(frozen=True)
class Prepared:
    """A validated job with its resolved sizes and plan."""

    spec: JobSpec
    plan: Plan
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    method: str


@dataclass
class RunSummary:
    """What a submit did: shards run, failed, and whether the store is complete."""

    path: str
    total: int
    skipped: int = 0
    done: list[ShardRecord] = field(default_factory=list)
    failed: dict[int, ShardRecord] = field(default_factory=dict)
    complete: bool = False

    @property
    def samples_per_second(self) -> float:
        seconds = sum(r.seconds for r in self.done)
        return sum(r.stop - r.start for r in self.done) / seconds if seconds else 0.0


def prepare(spec: JobSpec) -> Prepared:
    """Resolve sizes, check the function on two samples, and plan the shards."""
    from .derivatives import compute_derivatives

    info = describe_inputs(spec.inputs)
    if isinstance(spec.function, MLPFunction) and info.shape != (spec.function.in_features,):
        raise FunctionError(
            f"function.in_features is {spec.function.in_features} but the samples in {getattr(spec.inputs, 'path', 'inputs')} "
            f"have shape {list(info.shape)}; set function.in_features to match or pick other inputs"
        )
    dtype = DTYPES[spec.derivatives.dtype]
    fn = build_function(spec.function, dtype, "cpu")
    out_shape = probe_output_shape(fn, info.shape, dtype)
    x = torch.as_tensor(read_inputs(spec.inputs, 0, min(2, info.n)), dtype=dtype)
    try:
        result = compute_derivatives(fn, x, spec.quantities, method=spec.derivatives.method, chunk_size=2)
    except (ValueError, RuntimeError, TypeError, NotImplementedError) as err:
        raise FunctionError(
            f"function: computing {list(spec.quantities)} on two samples failed: {type(err).__name__}: {err}"
        ) from None
    plan = plan_derivative_job(
        n=info.n,
        in_shape=info.shape,
        out_shape=out_shape,
        quantities=spec.quantities,
        chunk_size=spec.store.chunk_size,
        shard_size=spec.shard_size,
        dtype=spec.derivatives.dtype,
    )
    return Prepared(spec, plan, info.shape, out_shape, result.method)


def store_attributes(prepared: Prepared) -> dict:
    spec = prepared.spec
    return {
        "spec": spec.resolved(),
        "spec_hash": spec.spec_hash(),
        "kind": spec.kind,
        "name": spec.name,
        "quantities": list(spec.quantities),
        "in_shape": list(prepared.in_shape),
        "out_shape": list(prepared.out_shape),
        "method_preflight": prepared.method,
    }


def pending_shards(prepared: Prepared, *, overwrite: bool = False) -> tuple[list[Shard], int]:
    """Create the store, or find the shards a same-spec store still lacks.

    Returns the shards to run and how many were already committed.
    """
    spec = prepared.spec
    path = Path(spec.store.path)
    overwrite = overwrite or spec.store.overwrite
    if store_exists(path) and not overwrite:
        attrs = read_attributes(path)
        if attrs.get("spec_hash") != spec.spec_hash():
            raise StoreError(
                f"store.path: {path} holds results of another spec (hash {attrs.get('spec_hash')}, this job "
                f"{spec.spec_hash()}); choose another store.path or pass --overwrite to replace it"
            )
        shards = read_plan(path)
        committed = read_markers(path)
        return [s for s in shards if s.id not in committed], len(committed)
    if path.exists() and not overwrite:
        raise StoreError(f"store.path: {path} exists and is not a pipeline store; choose another path or pass --overwrite")
    create_store(
        path, prepared.plan, store_attributes(prepared), overwrite=overwrite, compression=spec.store.compression
    )
    return list(prepared.plan.shards), 0


def submit(spec: JobSpec, executor, *, overwrite: bool = False, progress=None) -> RunSummary:
    """Run a job to completion (or as far as it gets) and finalize its store."""
    prepared = prepare(spec)
    shards, skipped = pending_shards(prepared, overwrite=overwrite)
    plan_shards = read_plan(spec.store.path)
    plan = Plan(
        prepared.plan.n, prepared.plan.chunk_size, prepared.plan.shard_size, tuple(plan_shards), prepared.plan.arrays
    )
    summary = RunSummary(path=spec.store.path, total=len(plan_shards), skipped=skipped)
    if progress is not None:
        progress.start(total_shards=len(plan_shards), total_samples=plan.n, done_shards=skipped,
                       done_samples=sum(s.size for s in plan_shards) - sum(s.size for s in shards))

    def on_done(record: ShardRecord) -> None:
        summary.done.append(record)
        if progress is not None:
            progress.advance(record)

    def on_failed(shard: Shard, attempts: int, error: str) -> None:
        attempts = max(attempts, attempt_count(spec.store.path, shard.id))
        summary.failed[shard.id] = ShardRecord(
            shard.id, shard.start, shard.stop, "failed", attempts, "", "", 0.0, 0.0, 0, "", error=error
        )
        if progress is not None:
            progress.fail(shard, error)

    try:
        if shards:
            executor.run(run_shard, spec, shards, on_done, on_failed)
    finally:
        summary.complete = finalize_store(spec.store.path, plan, summary.failed)
        if progress is not None:
            progress.stop()
    return summary
