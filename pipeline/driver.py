"""The driver: spec -> plan -> store -> executor -> finalized store.

``prepare(spec)`` resolves sizes (reading only input metadata) and runs the
job on a tiny example on the driver's CPU (see ``kinds/``), so bad input fails
here, before any store exists. ``submit(spec, executor)`` checks the
executor's resources, creates the store (or resumes one made by the same spec
from the same files), runs the pending shards and finalizes the store.

Example:
    >>> from pipeline.spec import load_spec
    >>> from pipeline.runner import InlineExecutor
    >>> submit(load_spec("jobs/quickstart.yaml"), InlineExecutor())   # doctest: +SKIP
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from .kinds import Prepared, kind_module
from .live import LiveRun, attempt_traceback
from .lock import store_lock
from .plan import Shard
from .fingerprints import changed_files, fingerprints
from .spec import results_hash, spec_differences
from .store import (
    ShardRecord,
    StoreError,
    any_attempt,
    append_run,
    attempt_count,
    create_store,
    discard_store,
    finalize_store,
    is_pipeline_store,
    read_attributes,
    read_markers,
    read_plan,
    refuse_foreign_path,
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
    notes: list[str] = field(default_factory=list)

    @property
    def samples_per_second(self) -> float:
        seconds = sum(r.seconds for r in self.done)
        return sum(r.stop - r.start for r in self.done) / seconds if seconds else 0.0


def prepare(spec) -> Prepared:
    """Resolve sizes, check the job on a tiny example, and plan the store (no store is touched)."""
    from .cluster import check_store_path as check_ray_job_store_path

    check_ray_job_store_path(spec.store.path)  # not in a Ray job's temporary working dir
    check_store_path(spec.store.path)
    return with_store_layout(kind_module(spec).prepare(spec))


def with_store_layout(prepared: Prepared) -> Prepared:
    """Apply ``store.chunks`` to the plan and check the axis labels of the job file (``labels.check_labels``)."""
    from .labels import check_labels
    from .plan import with_axis_chunks
    from .spec import SpecError

    spec = prepared.spec
    try:
        if spec.kind != "sweep":
            check_labels(spec.function.model_dump(), spec.quantities, in_shape=tuple(prepared.attributes["in_shape"]),
                         out_shape=tuple(prepared.attributes["out_shape"]))
        plan = with_axis_chunks(prepared.plan, dict(getattr(spec.store, "chunks", None) or {}))
    except ValueError as err:
        raise SpecError([str(err)]) from None
    return replace(prepared, plan=plan)


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
    """Root attributes of a new store: the resolved spec, its hash, the files it reads, the kind's own facts."""
    from .provenance import collect

    spec = prepared.spec
    return {
        "provenance": collect(None),  # the CLI's, with the job file's git state, comes in prepared.attributes
        "spec": spec.resolved(),
        "spec_hash": spec.spec_hash(),
        "kind": spec.kind,
        "name": spec.name,
        "files": fingerprints(spec),
        **prepared.attributes,
    }


@dataclass
class Opened:
    """The store of a job, opened for a run: shards to run, how many were committed, what to tell the user."""

    shards: list[Shard]
    skipped: int
    created: bool
    notes: list[str] = field(default_factory=list)


def open_store(prepared: Prepared, *, overwrite: bool = False) -> Opened:
    """Create the store, or check that an existing one may be resumed and find the shards it lacks.

    Only a pipeline store (or a missing path) is ever replaced; a store is
    resumed only when it was made by a spec with the same results view and
    from the same files (see ``fingerprints``).
    """
    spec = prepared.spec
    path = Path(spec.store.path)
    replace_it = overwrite or spec.store.overwrite
    refuse_foreign_path(path)
    if is_pipeline_store(path) and not replace_it:
        return _resume(spec, path)
    replaced = is_pipeline_store(path)
    create_store(
        path,
        prepared.plan,
        store_attributes(prepared),
        overwrite=replace_it,
        compression=spec.store.compression,
        initial_arrays=prepared.initial_arrays,
        tables=prepared.tables,
        array_attributes=prepared.array_attributes,
    )
    notes = []
    if replaced:
        why = "--overwrite" if overwrite else "store.overwrite: true in the job file"
        note = f"replaced the existing store at {path} ({why}): every shard is computed again"
        if spec.store.overwrite:
            note += "; with store.overwrite: true every run starts over, remove it from the job file to resume instead"
        notes.append(note)
    return Opened(list(prepared.plan.shards), 0, True, notes)


def _resume(spec, path: Path) -> Opened:
    attrs = read_attributes(path)
    stored = attrs.get("spec")
    # the stored spec's hash is computed again, so that keys which do not change results (and
    # were hashed by older versions) do not block a resume
    stored_hash = results_hash(stored) if isinstance(stored, dict) else attrs.get("spec_hash")
    if stored_hash != spec.spec_hash():
        differences = spec_differences(stored, spec.resolved()) if isinstance(stored, dict) else []
        detail = (
            "; these keys differ (store -> this job):\n" + "\n".join(f"    {line}" for line in differences) + "\n  "
            if differences
            else f" (spec hash {attrs.get('spec_hash')}, this job {spec.spec_hash()}); "
        )
        raise StoreError(
            f"store.path: {path} holds results of another spec{detail}"
            "choose another store.path, or pass --overwrite to replace the store"
        )
    changed = changed_files(attrs.get("files") or {}, spec)
    if changed:
        raise StoreError(
            f"store.path: {path} was made from files that have changed since, so resuming would mix "
            "results of the old and new files:\n" + "\n".join(f"    {line}" for line in changed)
            + "\n  pass --overwrite to recompute the store from the current files, or choose another store.path"
        )
    notes = []
    old_codec = (stored or {}).get("store", {}).get("compression")
    if old_codec and old_codec != spec.store.compression:
        notes.append(
            f"store.compression: the store at {path} keeps its codec {old_codec} (set when it was created); "
            f"{spec.store.compression} applies to new stores, pass --overwrite to rewrite this one with it"
        )
    if attrs.get("name") and attrs.get("name") != spec.name:
        notes.append(f"name: the store keeps its job name {attrs.get('name')!r} (this job is {spec.name!r})")
    shards = read_plan(path)
    committed = read_markers(path)
    return Opened([s for s in shards if s.id not in committed], len(committed), False, notes)


def pending_shards(prepared: Prepared, *, overwrite: bool = False) -> tuple[list[Shard], int]:
    """Create the store, or find the shards a same-spec store still lacks (see ``open_store``).

    Returns the shards to run and how many were already committed.
    """
    opened = open_store(prepared, overwrite=overwrite)
    return opened.shards, opened.skipped


def submit(spec, executor, *, overwrite: bool = False, progress=None, notify=None,
           prepared: Prepared | None = None) -> RunSummary:
    """Run a job to completion (or as far as it gets) and finalize its store.

    The executor checks its resources (``executor.check``) before the store
    is created, so a job the cluster cannot run leaves no store behind. The
    driver holds ``<store.path>.lock`` meanwhile (``lock.store_lock``): a
    second submit on the same store stops with a ``StoreError``.
    ``notify(message)`` is called with notes about the store (replaced, kept
    settings) before any shard runs; they are also in ``RunSummary.notes``.
    ``prepared`` is ``prepare(spec)`` when the caller already has it (the CLI
    prepares before it starts Ray).
    """
    if prepared is None or prepared.spec is not spec:
        prepared = prepare(spec)
    check = getattr(executor, "check", None)
    if check is not None:
        check(spec)
    with store_lock(spec.store.path):  # one driver per store, from its creation to its finalize
        # the driver record `pipeline status` reads (live.py), deleted when the run ends
        replacing = (overwrite or spec.store.overwrite) and is_pipeline_store(spec.store.path)
        unit = "cases" if spec.kind == "sweep" else "samples"
        with LiveRun(spec.store.path, unit=unit, retries=spec.execution.retries, replacing=replacing,
                     display=progress) as live:
            return _run(prepared, executor, overwrite=overwrite, progress=live, notify=notify)


def _run(prepared: Prepared, executor, *, overwrite: bool, progress, notify) -> RunSummary:
    spec = prepared.spec
    opened = open_store(prepared, overwrite=overwrite)
    shards, skipped = opened.shards, opened.skipped
    for note in opened.notes:
        if notify is not None:
            notify(note)
    plan_shards = read_plan(spec.store.path)
    plan = replace(prepared.plan, shards=tuple(plan_shards))
    summary = RunSummary(path=spec.store.path, total=len(plan_shards), skipped=skipped, notes=list(opened.notes))
    if progress is not None:
        progress.start(total_shards=len(plan_shards), total_samples=plan.n, done_shards=skipped,
                       done_samples=sum(s.size for s in plan_shards) - sum(s.size for s in shards))

    def on_done(record: ShardRecord) -> None:
        summary.done.append(record)
        if progress is not None:
            progress.advance(record)

    def on_failed(shard: Shard, attempts: int, error: str) -> None:
        attempts = max(attempts, attempt_count(spec.store.path, shard.id))
        error = attempt_traceback(spec.store.path, shard.id, attempts) or error  # the worker's full traceback
        summary.failed[shard.id] = ShardRecord(
            shard.id, shard.start, shard.stop, "failed", attempts, "", "", 0.0, 0.0, 0, "", error=error
        )
        if progress is not None:
            progress.fail(shard, error)

    discard = False
    started = time.time()
    try:
        if shards:
            executor.run(run_shard, spec, shards, on_done, on_failed)
    except Exception:
        # the executor failed before any shard started (e.g. the cluster refused the tasks):
        # a store this run just created holds nothing, so it goes
        discard = opened.created and not any_attempt(spec.store.path)
        raise
    finally:
        try:
            if discard:
                discard_store(spec.store.path)
            else:
                from .provenance import run_record

                append_run(spec.store.path, run_record(started, time.time(), len(summary.done), len(summary.failed)))
                summary.complete = finalize_store(spec.store.path, plan, summary.failed)
        finally:
            if progress is not None:
                progress.stop()
    return summary
