"""The driver: spec -> plan -> store -> executor -> finalized store.

``prepare(spec)`` resolves sizes (reading only input metadata) and runs the
job on a tiny example on the driver's CPU (see ``kinds/``), so bad input fails
here, before any store exists. ``submit(spec, executor)`` creates
the store (or resumes one made by the same spec), runs the pending shards and
finalizes the store.

Example:
    >>> from pipeline.spec import load_spec
    >>> from pipeline.runner import InlineExecutor
    >>> submit(load_spec("jobs/quickstart.yaml"), InlineExecutor())   # doctest: +SKIP
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

from .kinds import Prepared, kind_module
from .plan import Shard
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
from .tasks import run_shard


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


def prepare(spec) -> Prepared:
    """Resolve sizes, check the job on a tiny example, and plan the store (no store is touched)."""
    check_store_path(spec.store.path)
    return kind_module(spec).prepare(spec)


def check_store_path(path: str | Path) -> None:
    """Raise ``SpecError`` (naming ``store.path``) unless a store can be made (or resumed) at ``path``.

    Probes by creating and removing a temporary directory in the nearest
    existing ancestor of ``path`` (where the store, or the folders leading to
    it, will be created), and in ``path`` itself when it is an existing
    directory (a store to resume); nothing stays behind.

    Example:
        >>> check_store_path("/proc/results.zarr")
        Traceback (most recent call last):
        ...
        pipeline.spec.SpecError: invalid job spec:
          - store.path: cannot create /proc/results.zarr: ...
    """
    import tempfile

    from .spec import SpecError

    path = Path(path)
    target = path.absolute()
    ancestor = target.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise SpecError([
            f"store.path: cannot create {path}: {ancestor} is a file, not a directory; "
            "choose a store.path in a directory"
        ])
    probes = [ancestor] + ([target] if target.is_dir() else [])
    for folder in probes:
        try:
            probe = tempfile.mkdtemp(prefix=".pipeline-write-check-", dir=folder)
        except OSError as err:
            what = "the store in it" if folder == target else path
            raise SpecError([
                f"store.path: cannot create {what}: {folder} is not writable ({err.strerror or err}); "
                "choose a store.path in a directory you can write to"
            ]) from None
        try:
            os.rmdir(probe)
        except OSError:
            pass


def store_attributes(prepared: Prepared) -> dict:
    """Root attributes of a new store: the resolved spec, its hash, and the kind's own facts."""
    spec = prepared.spec
    return {
        "spec": spec.resolved(),
        "spec_hash": spec.spec_hash(),
        "kind": spec.kind,
        "name": spec.name,
        **prepared.attributes,
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
        path,
        prepared.plan,
        store_attributes(prepared),
        overwrite=overwrite,
        compression=spec.store.compression,
        initial_arrays=prepared.initial_arrays,
        tables=prepared.tables,
        array_attributes=prepared.array_attributes,
    )
    return list(prepared.plan.shards), 0


def submit(spec, executor, *, overwrite: bool = False, progress=None) -> RunSummary:
    """Run a job to completion (or as far as it gets) and finalize its store."""
    prepared = prepare(spec)
    shards, skipped = pending_shards(prepared, overwrite=overwrite)
    plan_shards = read_plan(spec.store.path)
    plan = replace(prepared.plan, shards=tuple(plan_shards))
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
