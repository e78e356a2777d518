"""The driver: spec -> plan -> store -> executor -> finalized store.

``prepare(spec)`` resolves sizes (reading only input metadata) and runs the
job on a tiny example on the driver's CPU (see ``kinds/``), so bad input fails
here, before any store exists. ``submit(spec, executor)`` owns the rest: it
takes the store's lock, starts the executor (``runner.Executor``) and checks
its resources, creates the store (or resumes one made by the same spec from
the same files), runs the pending shards and finalizes the store. The CLI
only passes callbacks (notes, progress, repair) and turns the outcome into
messages and exit codes.

Example:
    >>> from pipeline.spec import load_spec
    >>> from pipeline.runner import InlineExecutor
    >>> submit(load_spec("jobs/quickstart.yaml"), InlineExecutor())   # doctest: +SKIP
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from .errors import ClusterLost, StorageDown
from .fingerprints import changed_files, fingerprints
from .kinds import CODE_KEYS, Prepared, kind_of
from .live import LiveRun, attempt_traceback
from .lock import held_here, store_lock
from .plan import Shard, ShardFlags
from .runner import Executor, RayExecutor
from .spec import results_hash, spec_differences
from .store import (
    ShardRecord,
    StoreError,
    any_attempt,
    append_run,
    attempt_count,
    committed_ids,
    create_store,
    discard_store,
    finalize_store,
    has_plan,
    is_pipeline_store,
    read_attributes,
    read_manifest,
    read_plan,
    refuse_foreign_path,
    remove_leftovers,
)
from .tasks import shard_task


@dataclass
class RunSummary:
    """What a submit did: shards run, failed, and whether the store is complete.

    Shards that ran are counted, not kept (a job may run a million); the failed
    ones are kept whole (their errors go to the manifest and the console).
    """

    path: str
    total: int
    skipped: int = 0
    ran: int = 0  # shards this run committed
    samples_run: int = 0  # their samples (or cases)
    seconds_run: float = 0.0  # their compute seconds, summed over tasks
    failed: dict[int, ShardRecord] = field(default_factory=dict)
    complete: bool = False
    notes: list[str] = field(default_factory=list)

    def count(self, record: ShardRecord) -> None:
        """Count one committed shard."""
        self.ran += 1
        self.samples_run += record.stop - record.start
        self.seconds_run += record.seconds

    @property
    def samples_per_second(self) -> float:
        """Samples (or cases) per second per task, over the shards this run committed."""
        return self.samples_run / self.seconds_run if self.seconds_run else 0.0


SLOW_CHECK_S = 10.0  # when the driver's check of a job has run this long, ``prepare`` says what it is doing


def prepare(spec, notify: Callable[[str], None] | None = None) -> Prepared:
    """Resolve sizes, check the job on a tiny example, and plan the store (no store is touched).

    ``validate`` and ``submit`` both come here first, so they refuse the same
    store paths (not a pipeline store, not writable, too little free space).
    The check computes the job's first samples (or solves its first cases)
    in this process; when that takes over ``SLOW_CHECK_S`` seconds,
    ``notify`` hears once what it is waiting for.
    """
    import threading

    from .cluster import check_store_path as check_ray_job_store_path

    check_ray_job_store_path(spec.store.path)  # not in a Ray job's temporary working dir
    check_urls(spec)
    refuse_foreign_path(spec.store.path)  # what submit would refuse, validate refuses too
    check_store_path(spec.store.path)
    unit = kind_of(spec).unit
    message = (
        f"checking the job: its first {unit} are being computed here, on the CPU, to check its outputs before "
        f"any store or worker exists (it takes as long as those {unit} do; Ctrl-C stops it)"
    )
    slow = threading.Timer(SLOW_CHECK_S, notify, (message,)) if notify is not None else None
    if slow is not None:
        slow.daemon = True
        slow.start()
    try:
        prepared = with_store_layout(kind_of(spec).prepare(spec))
    finally:
        if slow is not None:
            slow.cancel()
    check_free_space(prepared)
    return prepared


def check_free_space(prepared: Prepared) -> None:
    """Raise ``SpecError`` when a new local store's results (before compression) exceed the disk's free space.

    A store being resumed, a remote store (``s3://...``) and ``store.check_free_space: false`` are not checked.
    """
    import shutil

    from .report import human_size
    from .spec import SpecError

    spec = prepared.spec
    path = spec.store.path
    if "://" in str(path) or not getattr(spec.store, "check_free_space", True) or is_pipeline_store(path):
        return
    ancestor = Path(path).absolute()
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    try:
        free = shutil.disk_usage(ancestor).free
    except OSError:
        return
    needed = prepared.plan.result_bytes()
    if needed > free:
        unit, key = kind_of(spec).unit, kind_of(spec).size_key
        raise SpecError(
            [
                f"store.path: the results of {prepared.plan.n:,} {unit} need {human_size(needed)} before compression, "
                f"but {ancestor} has {human_size(free)} free; reduce {key}, choose a store.path on a disk with more "
                "room, or set store.check_free_space: false if compression will make them fit"
            ]
        )


def with_store_layout(prepared: Prepared) -> Prepared:
    """Apply ``store.chunks`` to the plan and check the axis labels of the job file (``labels.check_labels``)."""
    from .plan import with_axis_chunks
    from .spec import SpecError

    spec = prepared.spec
    try:
        kind_of(spec).check_labels(prepared)
        plan = with_axis_chunks(prepared.plan, dict(getattr(spec.store, "chunks", None) or {}))
    except ValueError as err:
        raise SpecError([str(err)]) from None
    return replace(prepared, plan=plan)


def check_urls(spec) -> None:
    """Raise ``SpecError`` naming the key for a URL with an unknown scheme or a missing package, or a bucket
    that is missing or refuses the credentials; register ``store.storage_options`` for the store's URL."""
    from . import storage
    from .fingerprints import job_files
    from .spec import SpecError

    storage.set_options(spec.store.path, spec.store.storage_options)
    named = {"store.path": spec.store.path, **job_files(spec)}  # a checkpoint is among the job's files
    for key, path in named.items():
        try:
            storage.check_url(path, key)
            if storage.is_remote(path):  # store.storage_options reach the store's URL only: no fix for the others
                covered = storage.is_under(path, spec.store.path)
                storage.check_access(path, key, "store.storage_options" if covered else None)
        except storage.StorageError as err:
            raise SpecError([str(err)]) from None


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

    from . import storage
    from .spec import SpecError

    if storage.is_remote(path):
        return  # check_urls reached the bucket; objects need no parent folders
    path = Path(path)
    target = path.absolute()
    ancestor = target.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise SpecError(
            [
                f"store.path: cannot create {path}: {ancestor} is a file, not a directory; "
                "choose a store.path in a directory"
            ]
        )
    probes = [ancestor] + ([target] if target.is_dir() else [])
    for folder in probes:
        try:
            probe = tempfile.mkdtemp(prefix=".pipeline-write-check-", dir=folder)
        except OSError as err:
            what = "the store in it" if folder == target else path
            raise SpecError(
                [
                    f"store.path: cannot create {what}: {folder} is not writable ({err.strerror or err}); "
                    "choose a store.path in a directory you can write to"
                ]
            ) from None
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

    shards: Sequence[Shard]  # the lazy plan.Shards, or ``Pending`` when a store is resumed (never all held)
    skipped: int
    created: bool
    notes: list[str] = field(default_factory=list)


def open_store(
    prepared: Prepared,
    *,
    overwrite: bool = False,
    accept_changed_code: bool = False,
    notify: Callable[[str], None] | None = None,
) -> Opened:
    """Create the store, or check that an existing one may be resumed and find the shards it lacks.

    Only a pipeline store (or a missing path) is ever replaced; a store is
    resumed only when it was made by a spec with the same results view and
    from the same files (see ``fingerprints``). ``notify`` hears before an
    existing store is deleted (0.3-0.5 s per GB on local disk), so a large
    one's deletion is not a silent wait.
    """
    spec = prepared.spec
    path = spec.store.path if _remote(spec.store.path) else Path(spec.store.path)
    replace_it = overwrite or spec.store.overwrite
    refuse_foreign_path(path)
    if not _remote(path) and held_here(path):  # no other driver is making or replacing this store
        remove_leftovers(path)  # of a driver killed while it did
    existing = is_pipeline_store(path)
    half_made = existing and _half_made(path)
    if existing and not replace_it and not half_made:
        return _resume(spec, path, accept_changed_code=accept_changed_code)
    replaced = existing and not half_made
    why = "--overwrite" if overwrite else "store.overwrite: true in the job file"
    if replaced and notify is not None:
        notify(f"replacing the existing store at {path} ({why}): deleting its old results first")
    create_store(
        path,
        prepared.plan,
        store_attributes(prepared),
        overwrite=replace_it or half_made,
        compression=spec.store.compression,
        initial_arrays=prepared.initial_arrays,
        tables=prepared.tables,
        array_attributes=prepared.array_attributes,
        store_settings=spec.store.model_dump(mode="json"),
    )
    notes = []
    if half_made:
        notes.append(f"made the store at {path} anew: an earlier driver was stopped while creating it (no results)")
    if replaced:
        note = f"replaced the existing store at {path} ({why}): every shard is computed again"
        if spec.store.overwrite:
            note += "; with store.overwrite: true every run starts over, remove it from the job file to resume instead"
        notes.append(note)
    return Opened(prepared.plan.shards, 0, True, notes)  # the lazy plan.Shards: a huge plan is never listed


def _remote(path) -> bool:
    from .storage import is_remote

    return is_remote(path)


def _complete(path) -> bool:
    """A pipeline store at ``path`` whose every shard is committed (``complete`` in its attributes)."""
    return is_pipeline_store(path) and read_attributes(path).get("complete") is True


def _half_made(path) -> bool:
    """A bucket store without its plan and with no shard committed: its driver was killed while making it."""
    return _remote(path) and not has_plan(path) and next(committed_ids(path), None) is None


def check_resumable(spec, *, accept_changed_code: bool = False) -> str | None:
    """What ``validate`` says of an existing store at ``store.path``: None when there is none (or it is replaced).

    Raises ``StoreError`` when ``submit`` would refuse to resume it (another
    spec, changed input files or code), so ``validate`` refuses it too.
    """
    path = spec.store.path if _remote(spec.store.path) else Path(spec.store.path)
    if spec.store.overwrite or not is_pipeline_store(path) or _half_made(path):
        return None
    attrs, _ = _check_resumable(spec, path, accept_changed_code=accept_changed_code)
    committed = sum(1 for _ in committed_ids(path))
    shards = "shard is" if committed == 1 else "shards are"
    kept = "".join(f"; {note}" for note in kept_shard_size(attrs, spec))
    return f"resumes the store at {path}: {committed} {shards} committed (submit --overwrite replaces it instead){kept}"


def _check_resumable(spec, path, *, accept_changed_code: bool) -> tuple[dict, list[str]]:
    """The store's attributes and the changed code files accepted; raises ``StoreError`` when it cannot resume."""
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
    accepted = []
    if changed and accept_changed_code:
        accepted = [line for line in changed if line.split(":", 1)[0] in CODE_KEYS]
        changed = [line for line in changed if line not in accepted]
    if changed:
        raise StoreError(
            f"store.path: {path} was made from files that have changed since, so resuming would mix "
            "results of the old and new files:\n"
            + "\n".join(f"    {line}" for line in changed)
            + "\n  pass --overwrite to recompute the store from the current files, or choose another store.path"
            + (
                "; or, when the edit only fixed shards that failed, --accept-changed-code resumes and records "
                "which shards ran under which code"
                if not accept_changed_code and all(line.split(":", 1)[0] in CODE_KEYS for line in changed)
                else ""
            )
        )
    return attrs, accepted


def _resume(spec, path: Path, *, accept_changed_code: bool = False) -> Opened:
    attrs, accepted = _check_resumable(spec, path, accept_changed_code=accept_changed_code)
    stored = attrs.get("spec")
    notes = []
    old_codec = (stored or {}).get("store", {}).get("compression")
    if old_codec and old_codec != spec.store.compression:
        notes.append(
            f"store.compression: the store at {path} keeps its codec {old_codec} (set when it was created); "
            f"{spec.store.compression} applies to new stores, pass --overwrite to rewrite this one with it"
        )
    notes.extend(kept_shard_size(attrs, spec))
    if attrs.get("name") and attrs.get("name") != spec.name:
        notes.append(f"name: the store keeps its job name {attrs.get('name')!r} (this job is {spec.name!r})")
    if accepted:
        notes.append(accept_code_change(path, attrs, spec, accepted))
    shards = read_plan(path)
    committed = ShardFlags(len(shards), committed_ids(path))
    return Opened(Pending(shards, committed), len(committed), False, notes)


def kept_shard_size(attrs: dict, spec) -> list[str]:
    """A note when ``execution.shard_size`` differs from the shards of the store being resumed (its plan wins)."""
    kept = attrs.get("shard_size")
    if not kept or kept == spec.execution.shard_size:
        return []
    return [
        f"execution.shard_size: the store keeps its shards of {kept} (its plan, set when it was created); "
        f"{spec.execution.shard_size} applies to new stores, pass --overwrite to recompute this one with it"
    ]


def accept_code_change(path: Path, attrs: dict, spec, accepted: list[str]) -> str:
    """Record in the store that its code changed: the new fingerprints, and the old ones in ``code_history``.

    Every commit marker carries the ``code`` fingerprint its shard ran under
    (``fingerprints.code_fingerprint``), so the manifest says which shards ran
    under which code. Returns the note for the user.
    """
    import time

    import zarr

    from .fingerprints import code_fingerprint

    recorded = dict(attrs.get("files") or {})
    now = fingerprints(spec)
    history = list(attrs.get("code_history") or [])
    history.append(
        {
            "accepted": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "before": code_fingerprint_of(recorded),
            "after": code_fingerprint(spec),
            "files_before": {k: v for k, v in recorded.items() if k in CODE_KEYS},
            "changes": accepted,
        }
    )
    for key in CODE_KEYS:
        if key in now:
            recorded[key] = now[key]
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        group = zarr.open_group(str(path), mode="r+")  # keeps the consolidated copy (store.append_run)
        group.attrs.update({"files": recorded, "code_history": history, "complete": False})
    return (
        "--accept-changed-code: resuming with changed code (" + "; ".join(accepted) + "); the shards run "
        "now record code " + code_fingerprint(spec) + " in their marker, the committed ones keep theirs "
        "(manifest column `code`)"
    )


def code_fingerprint_of(files: dict) -> str:
    from .fingerprints import code_digest

    return code_digest({k: v for k, v in files.items() if k in CODE_KEYS})


class Pending(Sequence[Shard]):
    """The shards of a plan without a commit marker, found as they are iterated (never all held).

    Sized, iterable and sliceable like a list of those shards.
    """

    def __init__(self, shards: Sequence[Shard], committed: ShardFlags) -> None:
        self.shards = shards
        self.committed = committed
        self._count = len(shards) - len(committed)

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[Shard]:
        return (s for s in self.shards if s.id not in self.committed)

    def __getitem__(self, index):
        import itertools

        if isinstance(index, slice):
            return list(itertools.islice(iter(self), index.start, index.stop, index.step))
        return next(itertools.islice(iter(self), index, None))


def pending_shards(prepared: Prepared, *, overwrite: bool = False) -> tuple[Sequence[Shard], int]:
    """Create the store, or find the shards a same-spec store still lacks (see ``open_store``).

    Returns the shards to run and how many were already committed.
    """
    opened = open_store(prepared, overwrite=overwrite)
    return opened.shards, opened.skipped


def with_provenance(prepared: Prepared, job: str) -> Prepared:
    """The prepared job with the provenance of this command (host, command line, the job file's git state)."""
    from .provenance import collect

    return replace(prepared, attributes={**prepared.attributes, "provenance": collect(job)})


def submit(
    spec,
    executor: Executor,
    *,
    overwrite: bool = False,
    progress=None,
    notify: Callable[[str], None] | None = None,
    accept_changed_code: bool = False,
    prepared: Prepared | None = None,
    job: str | None = None,
    repair: Callable[[str], object] | None = None,
    on_started: Callable[[str], None] | None = None,
) -> RunSummary:
    """Run a job to completion (or as far as it gets) and finalize its store.

    In this order: ``prepare(spec)`` (bad input stops here, before anything
    starts; ``prepared`` when the caller has it already), the store's driver
    lock (``lock.store_lock``, held to the finalize: a second submit on the same
    store stops with a ``StoreError``), ``executor.start()``
    (then ``on_started(executor.describe())``), ``executor.check(spec)`` (its
    resources, and on Ray that the nodes on other hosts see a local store path, before the store is created, so a job the cluster cannot run
    leaves no store behind; all three skipped for a complete store that is
    resumed, where nothing runs, unless there is a repair),
    ``repair(store.path)`` when given (``submit --repair``: un-commit damaged
    shards, only once the executor has started), the store created or
    resumed, the pending shards run, the store finalized.

    ``job`` is the job file, recorded with the command line in the store's
    provenance. ``notify(message)`` is called with notes about the store
    (replaced, kept settings) before any shard runs; they are also in
    ``RunSummary.notes``. ``progress`` shows the run (``progress.make_progress``).
    """
    if prepared is None or prepared.spec is not spec:
        prepared = prepare(spec, notify)
    if job is not None:
        prepared = with_provenance(prepared, job)
    if isinstance(executor, RayExecutor):
        executor.check_store(spec)  # before Ray starts
    with store_lock(spec.store.path):  # one driver per store, from its creation to its finalize
        started = False

        def start() -> None:
            nonlocal started
            if not started:
                executor.start()
                if on_started is not None:
                    on_started(executor.describe())
                executor.check(spec)
                started = True

        if repair is not None:
            start()  # first: a cluster that cannot be reached stops the repair before it un-commits anything
            repair(spec.store.path)
        if overwrite or spec.store.overwrite or not _complete(spec.store.path):
            start()  # a complete store resumed runs nothing: no Ray started (unless shards turn out pending)
        # the driver record `pipeline status` reads (live.py), deleted when the run ends
        replacing = (overwrite or spec.store.overwrite) and is_pipeline_store(spec.store.path)
        unit = kind_of(spec).unit
        with LiveRun(
            spec.store.path, unit=unit, retries=spec.execution.retries, replacing=replacing, display=progress
        ) as live:
            return _run(
                prepared,
                executor,
                overwrite=overwrite,
                progress=live,
                notify=notify,
                accept_changed_code=accept_changed_code,
                start=start,
            )


def _run(
    prepared: Prepared,
    executor: Executor,
    *,
    overwrite: bool,
    progress: LiveRun | None,
    notify: Callable[[str], None] | None,
    accept_changed_code: bool = False,
    start: Callable[[], None] | None = None,
) -> RunSummary:
    spec = prepared.spec
    opened = open_store(prepared, overwrite=overwrite, accept_changed_code=accept_changed_code, notify=notify)
    shards, skipped = opened.shards, opened.skipped
    for note in opened.notes:
        if notify is not None:
            notify(note)
    plan_shards = read_plan(spec.store.path)
    plan = replace(prepared.plan, shards=plan_shards)
    summary = RunSummary(path=spec.store.path, total=len(plan_shards), skipped=skipped, notes=list(opened.notes))
    if progress is not None:
        progress.start(
            total_shards=len(plan_shards),
            total_samples=plan.n,
            done_shards=skipped,
            done_samples=plan.n - sum(s.size for s in shards) if skipped else 0,
        )

    def on_done(record: ShardRecord) -> None:
        summary.count(record)
        if progress is not None:
            progress.advance(record)

    def on_failed(shard: Shard, attempts: int, error: str) -> None:
        in_run = attempts  # the executor's count: right even when the workers could not record theirs
        try:
            attempts = max(attempts, attempt_count(spec.store.path, shard.id))
            error = attempt_traceback(spec.store.path, shard.id, attempts) or error  # the worker's full traceback
        except Exception:  # the storage itself is what failed (a bucket out of reach): keep the executor's count
            pass
        summary.failed[shard.id] = ShardRecord.failed(shard, attempts=attempts, error=error)
        if progress is not None:
            progress.fail(shard, error, attempts=in_run)

    discard = False
    lost: ClusterLost | StorageDown | None = None
    not_finalized: str | None = None  # why the finalize failed, when an outage already stopped the run
    started = time.time()
    try:
        if shards:
            if start is not None:
                start()  # already, unless the store said complete and a shard's marker has gone since
            store_id = read_attributes(spec.store.path).get("store_id")  # workers check they write this store
            executor.run(shard_task(plan, store_id), spec, shards, on_done, on_failed)
    except (ClusterLost, StorageDown) as err:  # the cluster or the storage went mid-run: finalize, then say so
        lost = err
    except Exception:
        # the executor failed before any shard started (e.g. the cluster refused the tasks):
        # a store this run just created holds nothing, so it goes
        try:
            discard = opened.created and not any_attempt(spec.store.path)
        except Exception:  # the storage is out of reach: keep the store, a re-run resumes it
            discard = False
        raise
    finally:
        try:
            if discard:
                discard_store(spec.store.path)
            else:
                try:
                    from .provenance import run_record

                    append_run(spec.store.path, run_record(started, time.time(), summary.ran, len(summary.failed)))
                    summary.complete = finalize_store(spec.store.path, plan, summary.failed)
                except Exception as err:
                    local = not _remote(spec.store.path)
                    if local and not isinstance(err, OSError):
                        raise
                    text = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
                    if not isinstance(lost, StorageDown):
                        raise StoreError(
                            f"store.path: could not finalize {spec.store.path} ({text}); the shards it committed are "
                            "kept: run the same command again "
                            + (
                                "once the disk has room and the store is writable"
                                if local
                                else "when the storage answers"
                            )
                            + " (it resumes)"
                        ) from err
                    not_finalized = text  # the outage's one line says it
        finally:
            if progress is not None:
                progress.stop()
    if isinstance(lost, StorageDown):
        # not finalized: the manifest (if any) is an earlier run's, so count what this driver saw
        committed = summary.skipped + summary.ran if not_finalized else _committed_in_manifest(spec.store.path, summary)
        raise lost.counted(committed, summary.total, not_finalized)
    if lost is not None:
        raise lost.counted(_committed_in_manifest(spec.store.path, summary), summary.total)
    return summary


def _committed_in_manifest(path, summary: RunSummary) -> int:
    """Shards the finalized manifest lists as done (a worker may commit one whose result never reached us)."""
    try:
        manifest = read_manifest(path)
        return sum(1 for status in manifest.column("status").to_pylist() if status == "done")
    except Exception:  # no manifest to read: what this driver saw
        return summary.skipped + summary.ran
