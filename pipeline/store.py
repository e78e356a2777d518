"""The result store: a Zarr v3 group with Parquet tables beside the arrays.

Driver side (once): ``create_store`` makes the group and every array up front
and writes ``plan.parquet``; ``finalize_store`` writes ``manifest.parquet``
from the shards' commit markers, consolidates the metadata and sets the
``complete`` flag last. Worker side (per shard): ``write_region`` writes whole
chunks of the shard's own sample range, then ``write_marker`` commits it.
Reading: ``open_results(path)`` returns an ``xarray.Dataset``.

Layout::

    store.zarr/
      zarr.json            root attributes: spec, spec_hash, versions, complete
      inputs/ value/ ...   arrays, sample axis first, with dimension_names
      plan.parquet         one row per shard: id, start, stop
      manifest.parquet     one row per shard: status, attempts, host, seconds, ...
      _shards/<id>.json    commit markers (the commit point of a shard)
      _shards/<id>.attempts one line per attempt

Example:
    >>> ds = open_results("results/quickstart.zarr")   # doctest: +SKIP
    >>> ds.hessian.sel(output=0).mean().item()         # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import tempfile
import time
import uuid
import warnings
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import storage
from .errors import BadInput
from .plan import Plan, Shard, ShardFlags, Shards

BATCH_ROWS = (
    1 << 13
)  # plan and manifest rows written per Parquet batch: memory stays bounded (~10 MB of records) for huge plans

MARKERS = "_shards"
PLAN_FILE = "plan.parquet"
MANIFEST_FILE = "manifest.parquet"
CASES_FILE = "cases.parquet"
TABLE_ROW_GROUP = 65536  # rows per row group of cases.parquet, about (table_row_group_size)
FORMAT_VERSION = 1


class StoreError(BadInput, RuntimeError):
    """The store is missing, belongs to another job, or cannot be written."""


@dataclass(frozen=True, kw_only=True)
class ShardRecord:
    """What one shard reports: written into its commit marker and the manifest (one row, these columns).

    Made by its named constructors: ``done`` (a worker, after the commit),
    ``failed`` (the driver, when the retries are spent), ``pending`` (the
    finalize, for a shard without a marker) and ``from_marker`` (a commit
    marker read back).

    Example:
        >>> ShardRecord.failed(Shard(3, 12, 16), attempts=2, error="ValueError: boom").status
        'failed'
    """

    shard_id: int
    start: int
    stop: int
    status: str
    attempts: int = 0
    host: str = ""
    device: str = ""
    seconds: float = 0.0
    samples_per_second: float = 0.0
    nonfinite: int = 0
    checksum: str = ""
    method: str = ""
    chunk_size: int = 0
    block_size: int = 0  # rows per block of the shard's last attempt (smaller after a memory failure)
    memory_retries: int = 0  # attempts of the shard that ran out of memory (each retry halves blocks and chunks)
    peak_memory_bytes: int = -1
    error: str = ""
    started: float = 0.0  # when the last attempt began and committed (epoch s, UTC; manifest: null if none did)
    finished: float = 0.0
    worker: str = ""  # host:pid of the process that ran it (a shard timeline per worker)
    job: str = ""  # the job name and spec hash, so that manifests of many stores can be grouped
    spec_hash: str = ""
    array_checksums: str = ""  # JSON {array: CRC32C hex} of the shard's region (``pipeline verify`` names the array)
    nonfinite_by_array: str = ""  # JSON {array: count} of the arrays holding NaN or Inf
    code: str = ""  # digest of the function's or solver's module the shard ran under (fingerprints.code_fingerprint)

    @classmethod
    def done(cls, shard: Shard, **facts: Any) -> ShardRecord:
        """A committed shard: its range and status, with ``facts`` (attempts, host, device, seconds, checksum, ...)."""
        return cls(shard_id=shard.id, start=shard.start, stop=shard.stop, status="done", **facts)

    @classmethod
    def failed(cls, shard: Shard, *, attempts: int, error: str) -> ShardRecord:
        """A shard whose every attempt raised: ``error`` is the last attempt's traceback."""
        return cls(
            shard_id=shard.id, start=shard.start, stop=shard.stop, status="failed", attempts=attempts, error=error
        )

    @classmethod
    def pending(cls, shard: Shard, *, attempts: int = 0) -> ShardRecord:
        """A shard without a commit marker (never run, or stopped before it committed)."""
        return cls(shard_id=shard.id, start=shard.start, stop=shard.stop, status="pending", attempts=attempts)

    @classmethod
    def from_marker(cls, data: dict[str, Any]) -> ShardRecord:
        """The record a commit marker holds (its JSON object, as ``write_marker`` wrote it)."""
        return cls(**data)


# ------------------------------------------------------------------ driver


def _zarr():
    import zarr

    return zarr


def check_readable(path: str | Path, key: str = "STORE", options: str | None = None) -> None:
    """For a URL: raise ``StorageError`` when its bucket is missing or unreachable or the credentials are refused.

    What the commands that read a store (``status``, ``inspect``, ``verify``,
    ``report``, ``open_results``) check first, so such a store is not
    reported as "not a pipeline store". They read with the environment's
    credentials and endpoint (or ``open_results(storage_options=)``).

    One HEAD of the store's ``zarr.json`` when it is there (a reader allowed
    only under a prefix is not asked to list the bucket); only when that
    fails or finds nothing is the store's prefix listed (``storage.check_access``:
    a missing bucket, refused or no credentials, an unreachable endpoint), to
    say why. Nothing wrong with the bucket: returns, and the command says
    what it finds (no store yet, not a store).
    """
    if not storage.is_remote(path):
        return
    try:
        if storage.isfile(storage.join(str(path), "zarr.json")):
            return
    except Exception:
        storage.check_access(str(path), key, options=options)  # the cause, said as such
        raise  # the bucket answers: this error is the store's own
    storage.check_access(str(path), key, options=options)


def store_exists(path: str | Path) -> bool:
    """True when ``path`` holds a Zarr group."""
    if storage.is_remote(path):
        return storage.isfile(storage.join(path, "zarr.json"))
    return (Path(path) / "zarr.json").is_file()


# ---- object storage (a URL store.path): the same files, as objects through ``storage``


def _read_json(path: str | Path, name: str) -> Any:
    """``name`` under the store as JSON (OSError / ValueError as for a local file)."""
    if storage.is_remote(path):
        return json.loads(storage.read_bytes(storage.join(path, name)))
    return json.loads((Path(path) / name).read_text())


def _write_table(path: str | Path, name: str, table, row_group_size: int | None = None) -> None:
    import pyarrow.parquet as pq

    if storage.is_remote(path):
        import pyarrow as pa

        sink = pa.BufferOutputStream()
        pq.write_table(table, sink, row_group_size=row_group_size)
        storage.write_bytes(storage.join(str(path), name), sink.getvalue().to_pybytes())
    else:
        pq.write_table(table, Path(path) / name, row_group_size=row_group_size)


def table_row_group_size(plan: Plan) -> int:
    """Rows per Parquet row group of a table with one row per sample or case (``cases.parquet``).

    Whole shards per group while shards are small (up to ``TABLE_ROW_GROUP``
    rows: a worker's shard lies in one group, and a million-case table has a
    short footer, not one entry per 64-case shard), else whole chunks (a block
    of a large shard is whole chunks): a worker reads only the groups covering
    its rows (``read_cases``).

    Example:
        >>> from pipeline.plan import plan_derivative_job
        >>> plan = plan_derivative_job(10**6, (2,), (1,), ("value",), 64, 192, "float32")
        >>> table_row_group_size(plan), table_row_group_size(plan) % plan.shard_size
        (65472, 0)
    """
    unit = plan.shard_size if plan.shard_size <= TABLE_ROW_GROUP else plan.chunk_size
    return unit * max(1, TABLE_ROW_GROUP // unit)


def _read_table(path: str | Path, name: str):
    import pyarrow.parquet as pq

    if storage.is_remote(path):
        import pyarrow as pa

        return pq.read_table(pa.BufferReader(storage.read_bytes(storage.join(str(path), name))))
    return pq.read_table(Path(path) / name)


def is_pipeline_store(path: str | Path) -> bool:
    """True when ``path`` is a store made by pipeline: a Zarr group whose root attributes carry ``format_version``.

    Only such a store (or a missing path) may be replaced by ``--overwrite``;
    any other directory or file is never deleted.
    """
    try:
        meta = _read_json(path, "zarr.json")
    except (OSError, ValueError):
        return False
    if not isinstance(meta, dict) or meta.get("node_type") != "group":
        return False
    attrs = meta.get("attributes")
    return isinstance(attrs, dict) and "format_version" in attrs


def _replaceable(path: str | Path) -> bool:
    """A missing path, an empty directory or a pipeline store: what a new store may take the place of."""
    if storage.is_remote(path):  # (an object named like the store: refused by refuse_foreign_path first)
        return is_pipeline_store(path) or not storage.listdir(str(path))
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return True
    return path.is_dir() and (is_pipeline_store(path) or (not path.is_symlink() and not any(path.iterdir())))


def refuse_foreign_path(path: str | Path, key: str = "store.path") -> None:
    """Raise a StoreError when ``path`` exists and is not a pipeline store (it is never deleted)."""
    if storage.is_remote(path):
        if storage.isfile(str(path)):  # not replaceable: a recursive delete of the prefix would take it too
            raise StoreError(
                f"{key}: {path} is an existing object (a file), so it is left untouched (only a store written by "
                f"pipeline is ever replaced); choose another {key}, a prefix with no objects (e.g. "
                f"{storage.parent(str(path))}/<job>.zarr)"
            )
        if not _replaceable(path):
            raise StoreError(
                f"{key}: {path} holds objects that were not written by pipeline, so they are left untouched "
                f"(only a store written by pipeline is ever replaced); choose another {key} (a prefix with no objects)"
            )
        return
    path = Path(path)
    damaged = _damaged_metadata(path)
    if damaged:
        raise StoreError(f"{key}: {damaged}")
    if not _replaceable(path):
        what = "a file" if path.is_file() else "a directory that was not written by pipeline"
        raise StoreError(
            f"{key}: {path} exists and is {what}, so it is left untouched (only a store written by pipeline "
            f"is ever replaced); choose another {key}, one that does not exist yet (e.g. results/<job>.zarr)"
        )


def _damaged_metadata(path: Path, *, arrays: bool = True) -> str | None:
    """What is wrong when the local folder ``path`` or one of its arrays has a ``zarr.json`` that is not JSON.

    None when every one reads (or ``path`` has none: not a store, said elsewhere).
    """
    broken = _not_json(path / "zarr.json")
    if broken is not None:
        return (
            f"{path} has a damaged zarr.json ({broken}), so it cannot be read as a store and is left untouched; "
            f"restore {path / 'zarr.json'} from a copy, or remove {path} and run its job again"
        )
    if not arrays or not (path / "zarr.json").is_file():
        return None
    for array in sorted(path.iterdir()):
        broken = _not_json(array / "zarr.json")
        if broken is not None:
            return (
                f"{path}: the metadata of its array {array.name!r} is damaged ({array / 'zarr.json'}: {broken}), "
                f"so the array cannot be read; restore that file from a copy, or remove {path} and run its job again"
            )
    return None


def _not_json(file: Path) -> ValueError | None:
    """The parse error of ``file`` when it is there and not JSON; None when it reads or is absent."""
    try:
        json.loads(file.read_text())
    except OSError:
        return None
    except ValueError as err:
        return err
    return None


def read_attributes(path: str | Path, *, arrays: bool = True) -> dict[str, Any]:
    """The root attributes of a store (spec, spec_hash, complete, ...).

    A local store whose ``zarr.json`` (or, with ``arrays``, an array's) is not JSON raises ``StoreError``
    saying which; ``open_results`` passes ``arrays=False``, as it reads the arrays' consolidated copy.
    """
    if not store_exists(path):
        if not storage.is_remote(path) and not Path(path).exists():
            raise StoreError(
                f"{path} is not a pipeline store: it does not exist; check the path (`pipeline submit JOB` makes "
                "the store at the job's store.path)"
            )
        raise StoreError(f"{path} is not a pipeline store (no zarr.json); check the path")
    damaged = None if storage.is_remote(path) else _damaged_metadata(Path(path), arrays=arrays)
    if damaged:
        raise StoreError(damaged)
    metadata = _read_json(path, "zarr.json")
    attributes = dict(metadata.get("attributes", {}))
    if metadata.get("node_type") != "group" or "format_version" not in attributes:
        if storage.is_remote(path):
            raise StoreError(
                f"{path} is a Zarr node but not a pipeline store; give the URL of a store that `pipeline submit` wrote"
            )
        raise StoreError(_not_a_store_root(Path(path), metadata.get("node_type")))
    return attributes


def _not_a_store_root(path: Path, node_type: str | None) -> str:
    what = "a Zarr array" if node_type == "array" else "a Zarr group but not a pipeline store (no format_version)"
    parent = path.absolute().parent
    for folder in (parent, *parent.parents):
        try:
            is_store = "format_version" in json.loads((folder / "zarr.json").read_text()).get("attributes", {})
        except (OSError, ValueError):
            continue
        if is_store:
            return f"{path} is {what} inside the pipeline store {folder}; give the store's own path: {folder}"
    return f"{path} is {what}; give the path of a store that `pipeline submit` wrote"


def package_versions() -> dict[str, str]:
    """Versions of the packages that shape the results."""
    from importlib import metadata

    versions = {}
    for name in ("pipeline", "torch", "zarr", "numpy", "pyarrow", "ray"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def with_crc32c(options: dict[str, Any]) -> dict[str, Any]:
    """``create_array`` options whose codec chain ends with Zarr v3's ``crc32c``: a damaged chunk fails on read.

    New stores get it on every array; a resumed store keeps the codecs it was made with.
    """
    from zarr.codecs import Crc32cCodec

    inner = options.get("compressors")
    inner = [] if inner is None else list(inner) if isinstance(inner, (list, tuple)) else [inner]
    return {**options, "compressors": [*inner, Crc32cCodec()]}


def create_store(
    path: str | Path,
    plan: Plan,
    attributes: dict[str, Any],
    *,
    overwrite: bool = False,
    compression: str = "auto",
    initial_arrays: dict[str, np.ndarray] | None = None,
    tables: dict[str, Any] | None = None,
    array_attributes: dict[str, dict[str, Any]] | None = None,
    store_settings: dict[str, Any] | None = None,
) -> None:
    """Create the group, every array (fill NaN), the root attributes and ``plan.parquet``.

    ``initial_arrays`` are written whole (coordinates, a sweep's case
    parameters: data the driver knows up front); ``tables`` maps file names to
    ``pyarrow.Table`` written as Parquet beside the arrays (``cases.parquet``);
    ``array_attributes`` adds attributes per array (e.g. xarray's
    ``coordinates``); ``store_settings`` (the spec's ``store``: codec, level,
    Zarr shards, stored dtypes) go through ``encoding.create_options``.

    The store is built in a temporary sibling directory and renamed into place,
    so a failure here never leaves a half-made store at ``path``.
    """
    if storage.is_remote(path):
        return _create_remote(
            str(path),
            plan,
            attributes,
            overwrite=overwrite,
            compression=compression,
            initial_arrays=initial_arrays,
            tables=tables,
            array_attributes=array_attributes,
            store_settings=store_settings,
        )
    path = Path(path)
    refuse_foreign_path(path)  # never delete what pipeline did not write, --overwrite or not
    if store_exists(path) and not overwrite:
        raise StoreError(
            f"store.path: {path} already holds a pipeline store; pass --overwrite "
            "(store.overwrite: true) to replace it, or choose another store.path"
        )
    if path.is_symlink():
        raise StoreError(
            f"store.path: {path} is a symbolic link; to replace the store it points to, "
            f"use its real path {path.resolve()} as store.path"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=staging_prefix(path), dir=path.parent))
    try:
        _write_template(
            str(staging),
            plan,
            attributes,
            compression=compression,
            initial_arrays=initial_arrays,
            array_attributes=array_attributes,
            store_settings=store_settings,
        )
        consolidate_template(staging)
        (staging / MARKERS).mkdir()
        _write_plan(staging, plan)
        for file_name, table in (tables or {}).items():
            _write_table(staging, file_name, table, table_row_group_size(plan))
        old = None
        if path.exists():
            refuse_foreign_path(path)  # checked again just before deleting
            # moved aside whole first: a driver stopped while deleting it (Ctrl-C, SIGKILL) never leaves
            # a half-deleted store at path for the next run to resume as complete
            old = staging.with_name(staging.name + ".old")
            os.replace(path, old)
        os.replace(staging, path)
        if old is not None:
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def staging_prefix(path: Path) -> str:
    """The name a new local store is made under, beside ``path``, before it is renamed into place."""
    return f".{path.name}.staging-"


def remove_leftovers(path: str | Path) -> list[Path]:
    """Remove what a driver killed while creating or replacing the local store ``path`` left beside it.

    A half-made template (killed while creating) or a whole old store moved aside by ``--overwrite``
    (killed before deleting it: gigabytes, hidden). Only for the holder of the store's lock
    (``lock.store_lock``): no other driver can be making them. Returns what it removed.
    """
    if storage.is_remote(path):
        return []
    path = Path(path)
    removed = [p for p in sorted(path.parent.glob(staging_prefix(path) + "*")) if p.is_dir() and not p.is_symlink()]
    for leftover in removed:
        shutil.rmtree(leftover, ignore_errors=True)
    return removed


def _create_remote(
    url: str,
    plan: Plan,
    attributes: dict[str, Any],
    *,
    overwrite: bool,
    compression: str,
    initial_arrays,
    tables,
    array_attributes,
    store_settings,
) -> None:
    """``create_store`` on object storage: no rename there, so the objects are written in place.

    The root ``zarr.json`` is written first without ``complete``, everything
    else after it and ``plan.parquet`` last; a failure here deletes what was
    written (only a pipeline store is ever deleted), and a store a killed
    driver left without its plan is replaced by the next run (``has_plan``).
    Commit markers make a shard's region count, not the presence of its
    chunks, so a store made here holds no results until shards commit.
    """
    refuse_foreign_path(url)
    if store_exists(url) and not overwrite:
        raise StoreError(
            f"store.path: {url} already holds a pipeline store; pass --overwrite "
            "(store.overwrite: true) to replace it, or choose another store.path"
        )
    if store_exists(url):
        refuse_foreign_path(url)  # checked again just before deleting
        storage.remove_tree(url)
    try:
        _write_template(
            storage.zarr_target(url),
            plan,
            attributes,
            compression=compression,
            initial_arrays=initial_arrays,
            array_attributes=array_attributes,
            store_settings=store_settings,
        )
        consolidate_template(url)
        for file_name, table in (tables or {}).items():
            _write_table(url, file_name, table, table_row_group_size(plan))
        _write_plan(url, plan)  # last: a store with its plan was made whole (``has_plan``)
    except BaseException:
        if is_pipeline_store(url):
            storage.remove_tree(url)
        raise


def _write_template(
    target,
    plan: Plan,
    attributes: dict[str, Any],
    *,
    compression: str,
    initial_arrays,
    array_attributes,
    store_settings,
) -> None:
    """The root attributes (without ``complete``) and every array of a new store, local or remote alike.

    Each array's codecs come from ``encoding.create_options`` and end with a
    crc32c checksum (``with_crc32c``), so a flipped bit fails loudly on read.
    """
    from .encoding import create_options

    zarr = _zarr()
    attrs = {
        **attributes,
        "complete": False,
        "format_version": FORMAT_VERSION,
        "versions": package_versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "store_id": uuid.uuid4().hex,  # this store, not another made at the same path (workers' caches)
        "n": plan.n,
        "chunk_size": plan.chunk_size,
        "shard_size": plan.shard_size,
        "n_shards": len(plan.shards),
    }
    group = zarr.open_group(target, mode="w", attributes=attrs)
    for layout in plan.arrays:
        array_attrs = dict((array_attributes or {}).get(layout.name, {}))
        group.create_array(
            layout.name,
            shape=layout.shape,
            chunks=layout.chunks,
            dtype=layout.dtype,
            dimension_names=layout.dims,
            attributes=array_attrs,
            **{
                "fill_value": np.nan if np.dtype(layout.dtype).kind == "f" else 0,  # encoding may set its own
                **with_crc32c(create_options(layout, store_settings or {"compression": compression}, array_attrs)),
            },
        )
    direct = (store_settings or {}).get("direct_writes", True)
    for name, values in (initial_arrays or {}).items():  # a sweep's case parameters and coordinates
        _write_whole(group[name], values, direct=direct)


def _write_whole(array, values, direct: bool = True) -> None:
    """All of ``array`` set to ``values``: on local disk as chunk files in this thread, else through Zarr.

    A sweep's case parameters are written here, with the store, in chunks of
    ``plan.PARAMETER_CHUNK_CASES`` cases. Chunked like the results and
    written through Zarr, as before session 15, a 262,144-case sweep made
    20,480 files in 33.7 s before its first shard; now 10 files in 0.15 s
    (``bench/sweep_store.py``, BENCHMARKS.md). ``direct``: the store's
    ``direct_writes`` (a parameter chunk is 1 MiB, written past the page cache).
    """
    from .chunk_files import chunk_writer

    array = _for_writing(array)
    files = chunk_writer(array, direct=direct)
    if files is None or not files.write(0, np.asarray(values, dtype=array.dtype)):
        array[...] = values


def consolidate_template(path: str | Path) -> None:
    """Consolidate the metadata of a new store, so that readers never list its folder.

    Listing the group (what zarr does without consolidated metadata) warns
    about every entry that is not Zarr (``plan.parquet``, ``_shards/``, ...);
    with the template's metadata consolidated up front, ``xarray.open_zarr``
    and ``open_results`` open a store that is still being written without a
    warning. The arrays never change shape after creation, and
    ``finalize_store`` consolidates again (the root attributes are read from
    ``zarr.json`` itself, never from the consolidated copy).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zarr warns that consolidated v3 metadata is not in the spec yet
        _zarr().consolidate_metadata(storage.zarr_target(path))


def has_consolidated_metadata(path: str | Path) -> bool:
    """True when the store's ``zarr.json`` holds consolidated metadata (every store since the template is)."""
    try:
        return bool(_read_json(path, "zarr.json").get("consolidated_metadata"))
    except (OSError, ValueError):
        return False


def _write_plan(path: str | Path, plan: Plan) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    if storage.is_remote(path):  # one PUT per object
        table = pa.table(
            {
                "shard_id": pa.array([s.id for s in plan.shards], pa.int64()),
                "start": pa.array([s.start for s in plan.shards], pa.int64()),
                "stop": pa.array([s.stop for s in plan.shards], pa.int64()),
            }
        )
        _write_table(path, PLAN_FILE, table)
        return
    path = Path(path)
    schema = pa.schema([("shard_id", pa.int64()), ("start", pa.int64()), ("stop", pa.int64())])
    with pq.ParquetWriter(path / PLAN_FILE, schema) as writer:
        for batch in _batches(plan.shards):
            writer.write_table(
                pa.table(
                    {
                        "shard_id": pa.array([s.id for s in batch], pa.int64()),
                        "start": pa.array([s.start for s in batch], pa.int64()),
                        "stop": pa.array([s.stop for s in batch], pa.int64()),
                    },
                    schema=schema,
                )
            )


def _batches(items, size: int = BATCH_ROWS):
    """Lists of ``size`` items; each is emptied when the next is asked for (one batch is alive at a time)."""
    batch: list = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch.clear()  # the caller is done with it: its rows are gone before the next batch fills
    if batch or size == 0:
        yield batch


def has_plan(path: str | Path) -> bool:
    """Whether the store's creation finished: on object storage its plan is the last object written.

    A driver killed while it made a bucket store leaves one without a plan
    (and without results), which the next run replaces; a local store is
    renamed into place whole.
    """
    if storage.is_remote(path):
        return storage.isfile(storage.join(str(path), PLAN_FILE))
    return (Path(path) / PLAN_FILE).is_file()


def read_plan(path: str | Path):
    """The shards recorded in ``plan.parquet`` (a lazy ``plan.Shards`` when they are the regular split, locally)."""
    import pyarrow.parquet as pq

    try:
        if storage.is_remote(path):
            table = _read_table(path, PLAN_FILE).to_pydict()
            return [Shard(i, a, b) for i, a, b in zip(table["shard_id"], table["start"], table["stop"])]
        file = pq.ParquetFile(Path(path) / PLAN_FILE)
    except FileNotFoundError:
        # on object storage a store is written in place, plan last: a driver killed while it made
        # the store leaves one without a plan (a local store appears whole, by a rename, or not at all)
        if not storage.is_remote(path):  # renamed into place whole: the file was removed since
            raise StoreError(
                f"{path} has no {PLAN_FILE}: the file was removed, so the store cannot be resumed; restore it "
                "from a copy, or run its job with --overwrite to replace the store (every shard is computed again)"
            ) from None
        try:
            committed = next(iter(committed_ids(path)), None) is not None
        except Exception:  # the storage itself fails: say what the plan's absence means either way
            committed = False
        if committed:  # not a half-made store: the file was removed since, as on local disk
            raise StoreError(
                f"{path} has no {PLAN_FILE} but has committed shards: the file was removed, so the store cannot "
                "be resumed; restore it from a copy, or run its job with --overwrite to replace the store (every "
                "shard is computed again)"
            ) from None
        raise StoreError(
            f"{path} has no {PLAN_FILE}: a driver was stopped while creating it, or the file was removed; "
            "run its job again (`pipeline submit JOB`), which makes a bucket store without commits anew, "
            "or pass --overwrite to replace the store"
        ) from None
    try:
        attrs = read_attributes(path)
        regular = Shards(int(attrs["n"]), int(attrs["shard_size"]))
    except (StoreError, KeyError, TypeError, ValueError):
        regular = None
    if regular is not None and len(regular) == file.metadata.num_rows and file.metadata.num_rows:
        first = file.read_row_group(0).slice(0, 1).to_pydict()
        if (first["shard_id"][0], first["start"][0], first["stop"][0]) == tuple(
            getattr(regular[0], k) for k in ("id", "start", "stop")
        ):
            return regular
    table = file.read().to_pydict()
    return [Shard(i, a, b) for i, a, b in zip(table["shard_id"], table["start"], table["stop"])]


def read_cases(path: str | Path, start: int, stop: int) -> dict[str, np.ndarray]:
    """Rows ``[start, stop)`` of a sweep's ``cases.parquet`` as columns (without the ``case`` index).

    Reads only the row groups covering the rows (a bucket store: by byte range through ``storage``).
    """
    from .parquet import open_parquet, read_rows

    file = open_parquet(storage.join(str(path), CASES_FILE) if storage.is_remote(path) else Path(path) / CASES_FILE)
    columns = [name for name in file.schema_arrow.names if name != "case"]
    table = read_rows(file, start, stop, columns)
    return {name: table.column(name).to_numpy() for name in columns}


def finalize_store(path: str | Path, plan: Plan, failed: dict[int, ShardRecord] | None = None) -> bool:
    """Write the manifest and, when every shard committed, consolidate and set ``complete``.

    Returns True when the store is complete.
    """
    path = path if storage.is_remote(path) else Path(path)
    # each shard's marker is read as its row is written (a million shards are never all held)
    markers = _Markers(path, len(plan.shards))
    failed = failed or {}
    attempted = attempted_shards(path)  # one listing, instead of asking shard by shard
    complete = True
    attrs = read_attributes(path)
    job = {"job": str(attrs.get("name", "")), "spec_hash": str(attrs.get("spec_hash", ""))}

    def with_job(record: ShardRecord) -> ShardRecord:  # every row names its job (queries over many stores)
        from dataclasses import replace

        return record if record.job else replace(record, job=job["job"], spec_hash=job["spec_hash"])

    def rows():
        nonlocal complete
        for shard in plan.shards:
            marker = markers.get(shard.id)
            if marker is not None:
                yield with_job(marker)
                continue
            complete = False
            if shard.id in failed:
                yield with_job(failed[shard.id])
            else:
                yield with_job(ShardRecord.pending(shard, attempts=attempts_of(path, shard.id, attempted)))

    _write_manifest(path, rows())
    _clear_finished_progress(path)
    if complete:
        remove_temporaries(path)
        zarr = _zarr()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # zarr warns about our Parquet files and markers
            zarr.consolidate_metadata(storage.zarr_target(path))
            group = zarr.open_group(storage.zarr_target(path), mode="r+")  # keeps the consolidated metadata
            group.attrs["complete"] = True  # set last: readers trust it
    return complete


def _clear_finished_progress(path: str | Path) -> None:
    """Remove the block-progress entries (``<id>.progress``) of committed shards, and their temporary files.

    A worker removes its own right after the shard's marker; one stopped or
    killed between the two leaves it, and no later attempt of that shard runs
    to remove it. A worker killed while it wrote a marker or a progress entry
    leaves its temporary file (``.<id>.json.<pid>.tmp``); once the shard has
    committed no attempt of it writes again, so that file is stale.
    """
    for name in marker_names(path):
        if name.startswith(".") and name.endswith(".tmp"):  # `.<id>.json.<pid>.tmp`: a write killed before its rename
            stem, ext = name[1:].partition(".")[0], "progress"
        else:
            stem, _, ext = name.partition(".")
        if ext != "progress" or not stem.isdigit() or read_marker(path, int(stem)) is None:
            continue
        try:
            if storage.is_remote(path):
                storage.remove(storage.join(str(path), MARKERS, name))
            else:
                (Path(path) / MARKERS / name).unlink()
        except FileNotFoundError:
            pass


def remove_temporaries(path: str | Path) -> list[Path]:
    """Remove the temporary files of writes killed before their rename from a complete local store; what it removed.

    A chunk file is written as ``<chunk>.<uuid>.partial`` (``chunk_files``), the
    manifest as ``.manifest.parquet.<pid>.tmp``, the driver's record beside the
    store as ``.<store>.driver.json.<pid>.<thread>.tmp``; a worker or driver
    killed (SIGKILL, the memory monitor) between the write and the rename
    leaves the file, which no reader looks at but which takes its space. Only
    once every shard has committed (``finalize_store``), by the holder of the
    store's lock: then no attempt is writing. This process's own are kept. A
    bucket has none: each object is one PUT.
    """
    if storage.is_remote(path):
        return []
    path = Path(path)
    own = f".{os.getpid()}."
    found = [*path.glob(f".{MANIFEST_FILE}.*.tmp"), *path.parent.glob(f".{path.name}.driver.json.*.tmp")]
    for folder, subfolders, files in os.walk(path):
        if folder == str(path):
            subfolders[:] = [f for f in subfolders if f != MARKERS]  # markers: _clear_finished_progress
        found += [Path(folder) / f for f in files if f.endswith(".partial")]
    removed = []
    for leftover in found:
        if own in leftover.name and not leftover.name.endswith(".partial"):
            continue
        try:
            leftover.unlink()
        except FileNotFoundError:
            continue
        removed.append(leftover)
    return removed


def append_run(path: str | Path, run: dict[str, Any]) -> None:
    """Add one run (``provenance.run_record``) to the store's ``runs`` root attribute (the driver, before finalize)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # opened through the consolidated copy (when there is one), so that it is kept: a store left
        # incomplete by this run still opens in xarray without a warning (finalize re-consolidates a complete one)
        group = _zarr().open_group(storage.zarr_target(path), mode="r+")
        group.attrs["runs"] = [*list(group.attrs.get("runs") or []), run]


def _manifest_columns(rows) -> dict[str, Any]:
    """The manifest's columns of ``rows``: ``started`` and ``finished`` are null where no attempt committed.

    A failed or pending shard's record holds 0.0 there (the dataclass default),
    which reads as 1970-01-01 once turned into a time; null reads as NaN/NaT.
    """
    import pyarrow as pa

    columns: dict[str, Any] = {key: [getattr(r, key) for r in rows] for key in ShardRecord.__dataclass_fields__}
    for key in ("started", "finished"):
        values = [value if row.status == "done" else None for row, value in zip(rows, columns[key])]
        columns[key] = pa.array(values, type=pa.float64())
    return columns


def _write_manifest(path: str | Path, rows) -> None:
    """The manifest, written in batches of ``BATCH_ROWS`` rows (to a temporary file, then renamed)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if storage.is_remote(path):  # one PUT per object
        _write_table(path, MANIFEST_FILE, pa.table(_manifest_columns(list(rows))))
        return
    path = Path(path)
    temporary = path / f".{MANIFEST_FILE}.{os.getpid()}.tmp"
    writer = None
    try:
        for batch in _batches(rows):
            columns = _manifest_columns(batch)
            table = pa.table(columns) if writer is None else pa.table(columns, schema=writer.schema)
            if writer is None:
                writer = pq.ParquetWriter(temporary, table.schema)
            writer.write_table(table)
    except BaseException:  # Ctrl-C or a full disk mid-write: no half-written temporary left in the store
        if writer is not None:
            with contextlib.suppress(Exception):  # the first error is the one to tell
                writer.close()
        temporary.unlink(missing_ok=True)
        raise
    if writer is not None:
        writer.close()
    if writer is None:
        return
    os.replace(temporary, path / MANIFEST_FILE)


def read_manifest(path: str | Path):
    """The manifest as a ``pyarrow.Table`` (None before the first finalize).

    Raises ``StoreError`` when the file is not Parquet (damaged): the driver writes it anew from the markers.
    """
    try:
        if storage.is_remote(path):
            try:
                return _read_table(path, MANIFEST_FILE)
            except FileNotFoundError:
                return None
        import pyarrow.parquet as pq

        file = Path(path) / MANIFEST_FILE
        return pq.read_table(file) if file.is_file() else None
    except ValueError as err:  # pyarrow's ArrowInvalid: no Parquet footer, a cut-short file
        raise StoreError(
            f"{path}: its {MANIFEST_FILE} is damaged ({str(err).splitlines()[0]}); run the store's job again "
            "(`pipeline submit JOB`): it writes the manifest anew from the commit markers and computes nothing "
            "that is committed"
        ) from None


# ------------------------------------------------------------------ worker


def open_for_writing(path: str | Path):
    """The store's Zarr group, opened once by a worker for all of a shard's writes."""
    if storage.is_remote(path):  # the worker writes straight to the bucket
        target = storage.zarr_target(path)
        return storage.retry_zarr(target, _zarr().open_group, target, mode="r+", use_consolidated=False)
    return _zarr().open_group(str(path), mode="r+", use_consolidated=False)


def write_region(
    path: str | Path,
    arrays: dict[str, np.ndarray],
    start: int,
    stop: int,
    group=None,
    targets: dict | None = None,
    pool=None,
    direct: bool = True,
) -> None:
    """Write samples ``[start, stop)`` of each named array (whole chunks of the shard's region).

    ``targets`` caches the opened arrays between calls (``writer.BlockWriter``
    keeps one per shard): opening an array reads its ``zarr.json``, a GET on a
    bucket, which every block of a shard would otherwise repeat. On local disk
    the chunks are encoded in this thread and written by another, one file
    while the next chunk encodes (``chunk_files``: the same bytes as Zarr's,
    without its event loop), or encoded and written by the threads of
    ``pool`` (a ``concurrent.futures`` executor) when one is given, large
    chunks past the page cache unless ``direct`` is false (the store's
    ``direct_writes``); in a bucket, by Zarr.
    """
    from .chunk_files import chunk_writer, write_chunks

    group = open_for_writing(path) if group is None else group
    targets = {} if targets is None else targets
    remote = storage.is_remote(path)
    chunks: list[tuple[Any, tuple[int, ...], np.ndarray]] = []  # (writer, chunk coordinates, values), written below
    for name, values in arrays.items():
        if name not in targets:
            array = _for_writing(group[name])
            targets[name] = (array, None if remote else chunk_writer(array, direct=direct))
        target, files = targets[name]
        if values.shape[0] != stop - start or tuple(values.shape[1:]) != tuple(target.shape[1:]):
            raise StoreError(
                f"shard [{start}, {stop}) of {name!r} has shape {values.shape}, the store expects "
                f"{(stop - start, *target.shape[1:])}"
            )
        values = values.astype(target.dtype, copy=False)
        parts = None if files is None else files.parts(start, values)
        if remote:  # transient errors (5xx, timeouts) retried; a chunk PUT is idempotent
            storage.retry_zarr(target.store, target.__setitem__, slice(start, stop), values)
        elif parts is None:
            target[start:stop] = values
        else:
            chunks.extend((files, coords, part) for coords, part in parts)
    if pool is None or len(chunks) < 2:  # encoded in this thread, each file written while the next one encodes
        write_chunks(chunks)
    else:  # the encoders (Blosc, Zstd) and the file writes release the GIL: the chunks are written in parallel
        list(pool.map(lambda chunk: chunk[0].write_chunk(chunk[1], chunk[2]), chunks))


def _for_writing(array):
    """``array`` set to write every chunk, skipping Zarr's all-fill check.

    A shard's chunks hold results, not fill, and Zarr's check (a comparison
    of each chunk with a full array of the fill value) took about a quarter of
    an uncompressed write's time. An all-NaN chunk is then stored instead of
    skipped, and reads the same.
    """
    with_config = getattr(array, "with_config", None)  # zarr >= 3.1
    return with_config({"write_empty_chunks": True}) if with_config is not None else array


def record_attempt(path: str | Path, shard_id: int) -> int:
    """Note one more attempt of a shard; returns the attempt number (1 for the first)."""
    if storage.is_remote(path):  # objects cannot be appended to: one object per attempt
        import uuid

        name = f"{shard_id}.attempts.{time.time():.3f}.{uuid.uuid4().hex[:8]}"
        storage.write_bytes(storage.join(str(path), MARKERS, name), socket.gethostname().encode())
        return attempt_count(path, shard_id)
    file = Path(path) / MARKERS / f"{shard_id}.attempts"
    with open(file, "a") as handle:
        handle.write(f"{time.time():.3f} {socket.gethostname()}\n")
    return attempt_count(path, shard_id)


def any_attempt(path: str | Path) -> bool:
    """True when some shard of the store has started at least once."""
    return any(".attempts" in name for name in marker_names(path))


def discard_store(path: str | Path) -> None:
    """Delete a pipeline store (never anything else): one a failed run created and never used."""
    if is_pipeline_store(path):
        if storage.is_remote(path):
            storage.remove_tree(str(path))
        else:
            shutil.rmtree(path, ignore_errors=True)


def attempted_shards(path: str | Path) -> dict[int, int]:
    """Shards with attempts, from one listing of ``_shards/``: {id: its attempt objects (a bucket) or files (a
    folder: one ``<id>.attempts`` file, whose lines count them; see ``attempts_of``)}."""
    counts: dict[int, int] = {}
    for name in marker_names(path):
        stem, _, ext = name.partition(".")
        if ext.startswith("attempts") and stem.isdigit():
            counts[int(stem)] = counts.get(int(stem), 0) + 1
    return counts


def attempts_of(path: str | Path, shard_id: int, attempted: dict[int, int]) -> int:
    """A shard's attempts, given ``attempted_shards(path)``: a folder's file is read only for an attempted shard."""
    seen = attempted.get(shard_id, 0)
    return attempt_count(path, shard_id) if seen and not storage.is_remote(path) else seen


def attempt_count(path: str | Path, shard_id: int) -> int:
    if storage.is_remote(path):
        prefix = f"{shard_id}.attempts."
        return sum(name.startswith(prefix) for name in storage.listdir(storage.join(str(path), MARKERS)))
    file = Path(path) / MARKERS / f"{shard_id}.attempts"
    return len(file.read_text().splitlines()) if file.is_file() else 0


def write_marker(path: str | Path, record: ShardRecord) -> None:
    """Commit a shard: atomically write its marker after its data is written."""
    if storage.is_remote(path):  # one PUT: the object appears whole or not at all
        storage.write_bytes(
            storage.join(str(path), MARKERS, f"{record.shard_id}.json"), json.dumps(vars(record)).encode()
        )
        return
    folder = Path(path) / MARKERS
    final = folder / f"{record.shard_id}.json"
    temporary = folder / f".{record.shard_id}.json.{os.getpid()}.tmp"
    try:
        temporary.write_text(json.dumps(vars(record)))
        os.replace(temporary, final)
    except BaseException:  # a full disk: no half-written temporary left in _shards/
        temporary.unlink(missing_ok=True)
        raise


def marker_names(path: str | Path) -> Iterator[str]:
    """The names in a store's ``_shards/`` (none when it has none yet).

    Streamed from a folder with ``os.scandir``, listed once in a bucket. Never
    ``Path.glob`` here: it lists a whole folder into memory first (2.4e6 markers,
    ~600 MB).
    """
    if storage.is_remote(path):
        try:
            yield from storage.listdir(storage.join(str(path), MARKERS))
        except FileNotFoundError:
            return
        return
    try:
        entries = os.scandir(Path(path) / MARKERS)
    except FileNotFoundError:
        return
    with entries:
        for entry in entries:
            yield entry.name


def committed_ids(path: str | Path) -> Iterator[int]:
    """The ids of the committed shards, from the names of their markers (none is read)."""
    for name in marker_names(path):
        stem, _, ext = name.partition(".")
        if ext == "json" and stem.isdigit():
            yield int(stem)


def read_marker(path: str | Path, shard_id: int) -> ShardRecord | None:
    """One shard's commit marker (a file, or one GET in a bucket); None when the shard has none."""
    try:
        if storage.is_remote(path):
            data = json.loads(storage.read_bytes(storage.join(str(path), MARKERS, f"{shard_id}.json")))
        else:
            data = json.loads((Path(path) / MARKERS / f"{shard_id}.json").read_bytes())
    except FileNotFoundError:
        return None
    return ShardRecord.from_marker(data)


def read_markers(path: str | Path) -> dict[int, ShardRecord]:
    """Committed shards by id (every record held: for a store's summary, not for a huge finalize)."""
    records = {}
    for shard_id in committed_ids(path):
        record = read_marker(path, shard_id)
        if record is not None:
            records[shard_id] = record
    return records


class _Markers:
    """A store's commit markers, read one by one on demand (``get(shard_id)``, None when uncommitted).

    In a bucket the committed ids come from one listing (a byte per shard), so
    an uncommitted shard costs no request and a committed one a GET.
    """

    def __init__(self, path: str | Path, shards: int) -> None:
        self.path = path
        self.committed = ShardFlags(shards, committed_ids(path)) if storage.is_remote(path) else None

    def get(self, shard_id: int) -> ShardRecord | None:
        if self.committed is not None and shard_id not in self.committed:
            return None  # a bucket: no GET for a shard without a marker
        return read_marker(self.path, shard_id)


class Checksum:
    """CRC32C per array, fed block by block in sample order; the same for any split into blocks.

    The digest is the CRC32C of the arrays' own CRC32Cs in name order, so a
    shard written in blocks checks the same as one written whole; it reads
    ``crc32c:`` and 8 hex digits. CRC32C (Castagnoli, the polynomial of
    Zarr's own ``crc32c`` codec) runs on the CPU's CRC instruction through
    ``google_crc32c`` (a Zarr dependency), about 4x zlib's CRC32 here
    (``bench/store.py``: the checksum was a third of an uncompressed block
    write). Markers of stores made before it hold zlib's CRC32 (8 hex
    digits, no prefix): ``Checksum.like(digest)`` recomputes either kind.
    """

    PREFIX = "crc32c:"

    def __init__(self, kind: str | None = None) -> None:
        kind = kind or _fast_kind()
        if kind not in ("crc32c", "crc32"):
            raise ValueError(f"checksum kind must be crc32c or crc32, got {kind!r}")
        self.kind = kind
        self._crcs: dict[str, int] = {}

    @classmethod
    def like(cls, digest: str) -> Checksum:
        """An empty checksum of the kind that made ``digest`` (a marker's ``checksum``)."""
        return cls("crc32c" if digest.startswith(cls.PREFIX) else "crc32")

    def _extend(self, crc: int, data: np.ndarray) -> int:
        if self.kind == "crc32":
            return zlib.crc32(data.data, crc)
        import google_crc32c

        return google_crc32c.extend(crc, data)

    def update(self, arrays: dict[str, np.ndarray]) -> None:
        for name, values in arrays.items():
            self._crcs[name] = self._extend(
                self._crcs.get(name, 0), np.ascontiguousarray(values).view(np.uint8).ravel()
            )

    def per_array(self) -> dict[str, str]:
        """``{array: 8 hex digits}``: what ``pipeline verify`` compares array by array."""
        return {name: f"{crc:08x}" for name, crc in sorted(self._crcs.items())}

    def hexdigest(self) -> str:
        joined = b"".join(self._crcs[name].to_bytes(4, "little") for name in sorted(self._crcs))
        crc = self._extend(0, np.frombuffer(joined, dtype=np.uint8))
        return f"{self.PREFIX if self.kind == 'crc32c' else ''}{crc:08x}"


def _fast_kind() -> str:
    """CRC32C where ``google_crc32c`` has its compiled code; else zlib's CRC32 (its pure-Python fallback runs at ~5 MB/s).

    The digest names its kind, so a store whose workers differ here still verifies.
    """
    try:
        import google_crc32c
    except ImportError:
        return "crc32"
    return "crc32c" if getattr(google_crc32c, "implementation", "c") == "c" else "crc32"


def checksum(arrays: dict[str, np.ndarray]) -> str:
    """The checksum of the arrays' bytes (what a re-run must reproduce); see :class:`Checksum`."""
    summer = Checksum()
    summer.update(arrays)
    return summer.hexdigest()


# ----------------------------------------------------------------- reading


def open_results(path: str | Path, *, require_complete: bool = False, storage_options: dict[str, Any] | None = None):
    """Open a store as an ``xarray.Dataset`` with named dimensions.

    Args:
        path: the store directory, or its URL (``s3://bucket/results/x.zarr``).
        require_complete: raise if some shards have not committed yet (by
            default an incomplete store opens with NaN where shards are missing,
            and ``ds.attrs["complete"]`` is False).
        storage_options: for a URL, the fsspec options (keys, endpoint) as
            ``xarray.open_zarr`` takes them, e.g. ``{"client_kwargs":
            {"endpoint_url": "http://localhost:9000"}}``; by default the
            environment's (``AWS_ACCESS_KEY_ID``, ``AWS_ENDPOINT_URL``, ...).

    Example:
        >>> ds = open_results("results/quickstart.zarr")   # doctest: +SKIP
        >>> ds.jacobian.shape                              # doctest: +SKIP
        (4096, 3, 2)
    """
    import xarray as xr

    path = storage.local_path(path) if isinstance(path, str) else path  # file:///... as the plain path
    if storage.is_remote(path):
        if storage_options is not None:
            storage.set_options(str(path), storage_options)
        check_readable(path, "path", options="storage_options=")
    attrs = read_attributes(path, arrays=False)  # a damaged array's own zarr.json: its consolidated copy reads
    incomplete = StoreError(
        f"{path} is not complete; `pipeline status {path}` lists the failed and pending shards "
        f"(`pipeline inspect {path}` shows their errors); run the job again to finish them"
    )
    if require_complete and not attrs.get("complete"):
        raise incomplete
    dataset = _open_dataset(path, xr)
    from .encoding import decode
    from .labels import label_dataset

    dataset = decode(dataset)  # packed / selected / 16-bit arrays back as their full quantities, lazily
    dataset = mask_uncommitted(dataset, path, attrs)  # only committed data is visible
    if "committed" in dataset.coords and not dataset.committed.values.all():  # a marker removed since the finalize
        if require_complete:
            raise incomplete
        dataset.attrs["complete"] = False

    return label_dataset(dataset, attrs)


def _open_dataset(path: str | Path, xr):
    """The store's arrays as a lazy ``xarray.Dataset``: dask arrays in the store's own chunks when dask is installed."""
    import importlib.util

    chunks: dict[str, int] | None = {} if importlib.util.find_spec("dask") is not None else None
    if has_consolidated_metadata(path):
        return xr.open_zarr(storage.zarr_target(path), consolidated=True, chunks=chunks)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a store written before templates were consolidated: zarr lists the folder
        return xr.open_zarr(storage.zarr_target(path), consolidated=False, chunks=chunks)


def committed_mask(path: str | Path, n: int) -> np.ndarray:
    """A boolean per sample (or case): True where its shard has a commit marker.

    The shards' ranges come from the plan and the committed ids from the
    markers' names (one listing): no marker is read, so opening a store of a
    million shards costs no million file reads (in a bucket, GETs).
    """
    mask = np.zeros(n, dtype=bool)
    committed = set(committed_ids(path))
    if not committed:
        return mask
    for shard in read_plan(path):
        if shard.id in committed:
            mask[shard.start : shard.stop] = True
    return mask


def mask_uncommitted(dataset, path: str | Path, attrs: dict[str, Any]):
    """Only committed data is visible: NaN in the float arrays wherever a shard has no commit marker.

    Whatever a failed or interrupted attempt wrote before it died stays
    hidden; ``dataset.committed`` (a boolean coordinate over the sample or
    case axis) says which samples are committed.
    """
    from .kinds import axis_name

    dim = axis_name(attrs.get("kind"))
    if dim not in dataset.dims:
        return dataset
    committed = committed_mask(path, dataset.sizes[dim])
    dataset = dataset.assign_coords(committed=(dim, committed))
    dataset.committed.attrs["description"] = "True where the sample's shard has committed (has a commit marker)"
    if committed.all():
        return dataset
    import xarray as xr

    mask = xr.DataArray(committed, dims=(dim,))
    for name, variable in list(dataset.data_vars.items()):
        if variable.dims[:1] == (dim,) and variable.dtype.kind == "f":
            masked = variable.where(mask)
            masked.attrs = variable.attrs
            dataset[name] = masked.astype(variable.dtype, copy=False)
    return dataset


def uncommit_shards(path: str | Path, shard_ids) -> None:
    """Take back the commit of shards (their markers go; the next run recomputes them) and clear ``complete``.

    ``complete`` is cleared first, so a reader never sees a complete store
    that lacks a shard.
    """
    ids = sorted(set(shard_ids))
    if not ids:
        return
    zarr = _zarr()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        group = zarr.open_group(storage.zarr_target(path), mode="r+")  # keeps the consolidated copy (append_run)
        group.attrs["complete"] = False
    for shard_id in ids:
        if storage.is_remote(path):
            storage.remove(storage.join(str(path), MARKERS, f"{shard_id}.json"))
        else:
            (Path(path) / MARKERS / f"{shard_id}.json").unlink(missing_ok=True)


def summarize(path: str | Path) -> dict[str, Any]:
    """Counts of done / failed / pending shards (markers and manifest, no array reads)."""
    from .kinds import unit_name

    attrs = read_attributes(path)
    plan = read_plan(path)
    markers = set(committed_ids(path))  # names only: one listing, no marker read (one GET each in a bucket)
    manifest = read_manifest(path)
    failed = set()
    if manifest is not None:
        data = manifest.select(["shard_id", "status"]).to_pydict()
        failed = {i for i, s in zip(data["shard_id"], data["status"]) if s == "failed"} - set(markers)
    done = len([s for s in plan if s.id in markers])
    return {
        "path": str(path),
        "name": attrs.get("spec", {}).get("name", "?"),
        "complete": bool(attrs.get("complete")) and done == len(plan),  # a marker removed since says pending
        "shards": len(plan),
        "done": done,
        "failed": len(failed),
        "pending": len(plan) - done - len(failed),
        "samples_done": sum(s.size for s in plan if s.id in markers),
        "samples": sum(s.size for s in plan),
        "unit": unit_name(attrs.get("kind")),  # what samples_done/samples count
        "failed_shards": sorted(failed),
        "pending_shards": [s.id for s in plan if s.id not in markers and s.id not in failed],
    }
