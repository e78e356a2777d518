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

import json
import math
import os
import shutil
import socket
import tempfile
import time
import warnings
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .plan import Plan, Shard

MARKERS = "_shards"
PLAN_FILE = "plan.parquet"
MANIFEST_FILE = "manifest.parquet"
CASES_FILE = "cases.parquet"
FORMAT_VERSION = 1


class StoreError(RuntimeError):
    """The store is missing, belongs to another job, or cannot be written."""


@dataclass(frozen=True)
class ShardRecord:
    """What one shard reports: written into its commit marker and the manifest."""

    shard_id: int
    start: int
    stop: int
    status: str
    attempts: int
    host: str
    device: str
    seconds: float
    samples_per_second: float
    nonfinite: int
    checksum: str
    method: str = ""
    chunk_size: int = 0
    peak_memory_bytes: int = -1
    error: str = ""
    started: float = 0.0  # when the shard's last attempt began and committed (seconds since the epoch, UTC)
    finished: float = 0.0
    worker: str = ""  # host:pid of the process that ran it (a shard timeline per worker)
    job: str = ""  # the job name and spec hash, so that manifests of many stores can be grouped
    spec_hash: str = ""


# ------------------------------------------------------------------ driver


def _zarr():
    import zarr

    return zarr


def store_exists(path: str | Path) -> bool:
    """True when ``path`` holds a Zarr group."""
    return (Path(path) / "zarr.json").is_file()


def is_pipeline_store(path: str | Path) -> bool:
    """True when ``path`` is a store made by pipeline: a Zarr group whose root attributes carry ``format_version``.

    Only such a store (or a missing path) may be replaced by ``--overwrite``;
    any other directory or file is never deleted.
    """
    try:
        meta = json.loads((Path(path) / "zarr.json").read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(meta, dict) or meta.get("node_type") != "group":
        return False
    attrs = meta.get("attributes")
    return isinstance(attrs, dict) and "format_version" in attrs


def _replaceable(path: Path) -> bool:
    """A missing path, an empty directory or a pipeline store: what a new store may take the place of."""
    if not path.exists() and not path.is_symlink():
        return True
    return path.is_dir() and (is_pipeline_store(path) or (not path.is_symlink() and not any(path.iterdir())))


def refuse_foreign_path(path: str | Path, key: str = "store.path") -> None:
    """Raise a StoreError when ``path`` exists and is not a pipeline store (it is never deleted)."""
    path = Path(path)
    if not _replaceable(path):
        what = "a file" if path.is_file() else "a directory that was not written by pipeline"
        raise StoreError(
            f"{key}: {path} exists and is {what}, so it is left untouched (only a store written by pipeline "
            f"is ever replaced); choose another {key}, one that does not exist yet (e.g. results/<job>.zarr)"
        )


def read_attributes(path: str | Path) -> dict[str, Any]:
    """The root attributes of a store (spec, spec_hash, complete, ...)."""
    if not store_exists(path):
        raise StoreError(f"{path} is not a pipeline store (no zarr.json); check the path")
    metadata = json.loads((Path(path) / "zarr.json").read_text())
    attributes = dict(metadata.get("attributes", {}))
    if metadata.get("node_type") != "group" or "format_version" not in attributes:
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


def compressors(name: str):
    """Zarr codecs for ``store.compression`` (lz4 measured ~5x faster than zarr's default zstd)."""
    from zarr.codecs import BloscCodec, ZstdCodec

    if name == "none":
        return None
    if name == "zstd":
        return ZstdCodec(level=3)
    if name == "lz4":
        return BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")
    raise ValueError(f"store.compression: unknown codec {name!r}; use lz4, zstd or none")


def create_store(
    path: str | Path,
    plan: Plan,
    attributes: dict[str, Any],
    *,
    overwrite: bool = False,
    compression: str = "lz4",
    initial_arrays: dict[str, np.ndarray] | None = None,
    tables: dict[str, Any] | None = None,
    array_attributes: dict[str, dict[str, Any]] | None = None,
) -> None:
    """Create the group, every array (fill NaN), the root attributes and ``plan.parquet``.

    ``initial_arrays`` are written whole (coordinates, a sweep's case
    parameters: data the driver knows up front); ``tables`` maps file names to
    ``pyarrow.Table`` written as Parquet beside the arrays (``cases.parquet``);
    ``array_attributes`` adds attributes per array (e.g. xarray's
    ``coordinates``).

    The store is built in a temporary sibling directory and renamed into place,
    so a failure here never leaves a half-made store at ``path``.
    """
    zarr = _zarr()
    path = Path(path)
    refuse_foreign_path(path)  # never delete what pipeline did not write, --overwrite or not
    if store_exists(path) and not overwrite:
        raise StoreError(f"store.path: {path} already holds a pipeline store; pass --overwrite "
                         "(store.overwrite: true) to replace it, or choose another store.path")
    if path.is_symlink():
        raise StoreError(f"store.path: {path} is a symbolic link; to replace the store it points to, "
                         f"use its real path {path.resolve()} as store.path")
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        attrs = {
            **attributes,
            "complete": False,
            "format_version": FORMAT_VERSION,
            "versions": package_versions(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "n": plan.n,
            "chunk_size": plan.chunk_size,
            "shard_size": plan.shard_size,
            "n_shards": len(plan.shards),
        }
        group = zarr.open_group(str(staging), mode="w", attributes=attrs)
        for layout in plan.arrays:
            group.create_array(
                layout.name,
                shape=layout.shape,
                chunks=layout.chunks,
                dtype=layout.dtype,
                fill_value=np.nan if np.dtype(layout.dtype).kind == "f" else 0,
                dimension_names=layout.dims,
                compressors=compressors(compression),
                attributes=dict((array_attributes or {}).get(layout.name, {})),
            )
        for name, values in (initial_arrays or {}).items():
            group[name][...] = values
        consolidate_template(staging)
        (staging / MARKERS).mkdir()
        _write_plan(staging, plan)
        for file_name, table in (tables or {}).items():
            import pyarrow.parquet as pq

            pq.write_table(table, staging / file_name)
        if path.exists():
            refuse_foreign_path(path)  # checked again just before deleting
            shutil.rmtree(path)
        os.replace(staging, path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


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
        _zarr().consolidate_metadata(str(path))


def has_consolidated_metadata(path: str | Path) -> bool:
    """True when the store's ``zarr.json`` holds consolidated metadata (every store since the template is)."""
    try:
        return bool(json.loads((Path(path) / "zarr.json").read_text()).get("consolidated_metadata"))
    except (OSError, ValueError):
        return False


def _write_plan(path: Path, plan: Plan) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table(
        {
            "shard_id": pa.array([s.id for s in plan.shards], pa.int64()),
            "start": pa.array([s.start for s in plan.shards], pa.int64()),
            "stop": pa.array([s.stop for s in plan.shards], pa.int64()),
        }
    )
    pq.write_table(table, path / PLAN_FILE)


def read_plan(path: str | Path) -> list[Shard]:
    """The shards recorded in ``plan.parquet``."""
    import pyarrow.parquet as pq

    table = pq.read_table(Path(path) / PLAN_FILE).to_pydict()
    return [Shard(i, a, b) for i, a, b in zip(table["shard_id"], table["start"], table["stop"])]


def read_cases(path: str | Path, start: int, stop: int) -> dict[str, np.ndarray]:
    """Rows ``[start, stop)`` of a sweep's ``cases.parquet`` as columns (without the ``case`` index)."""
    import pyarrow.parquet as pq

    table = pq.read_table(Path(path) / CASES_FILE).slice(start, stop - start)
    return {name: table.column(name).to_numpy() for name in table.column_names if name != "case"}


def finalize_store(path: str | Path, plan: Plan, failed: dict[int, ShardRecord] | None = None) -> bool:
    """Write the manifest and, when every shard committed, consolidate and set ``complete``.

    Returns True when the store is complete.
    """
    path = Path(path)
    markers = read_markers(path)
    failed = failed or {}
    rows = []
    for shard in plan.shards:
        if shard.id in markers:
            rows.append(markers[shard.id])
        elif shard.id in failed:
            rows.append(failed[shard.id])
        else:
            rows.append(
                ShardRecord(shard.id, shard.start, shard.stop, "pending", attempt_count(path, shard.id), "", "", 0.0, 0.0, 0, "")
            )
    rows = _with_job(path, rows)
    _write_manifest(path, rows)
    complete = all(r.status == "done" for r in rows)
    if complete:
        zarr = _zarr()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # zarr warns about our Parquet files and markers
            zarr.consolidate_metadata(str(path))
            group = zarr.open_group(str(path), mode="r+")  # keeps the consolidated metadata
            group.attrs["complete"] = True  # set last: readers trust it
    return complete


def _with_job(path: Path, rows: list[ShardRecord]) -> list[ShardRecord]:
    """Every manifest row names its job and spec hash (pending and failed rows too), for queries over many stores."""
    from dataclasses import replace

    attrs = read_attributes(path)
    name, spec_hash = str(attrs.get("name", "")), str(attrs.get("spec_hash", ""))
    return [r if r.job else replace(r, job=name, spec_hash=spec_hash) for r in rows]


def append_run(path: str | Path, run: dict[str, Any]) -> None:
    """Add one run (``provenance.run_record``) to the store's ``runs`` root attribute (the driver, before finalize)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        group = _zarr().open_group(str(path), mode="r+", use_consolidated=False)
        group.attrs["runs"] = [*list(group.attrs.get("runs") or []), run]


def _write_manifest(path: Path, rows: list[ShardRecord]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = {key: [getattr(r, key) for r in rows] for key in ShardRecord.__dataclass_fields__}
    pq.write_table(pa.table(columns), path / MANIFEST_FILE)


def read_manifest(path: str | Path):
    """The manifest as a ``pyarrow.Table`` (None before the first finalize)."""
    import pyarrow.parquet as pq

    file = Path(path) / MANIFEST_FILE
    return pq.read_table(file) if file.is_file() else None


# ------------------------------------------------------------------ worker


def open_for_writing(path: str | Path):
    """The store's Zarr group, opened once by a worker for all of a shard's writes."""
    return _zarr().open_group(str(path), mode="r+", use_consolidated=False)


def bytes_per_sample(group) -> int:
    """Bytes of one sample (or case) across the store's sample-axis arrays: a block-sizing estimate."""
    total = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zarr warns about our Parquet files and markers
        members = list(group.arrays())
    for _, array in members:
        if len(array.shape) and array.shape[0] == group.attrs["n"]:
            total += array.dtype.itemsize * math.prod(array.shape[1:])
    return max(1, total)


def write_region(path: str | Path, arrays: dict[str, np.ndarray], start: int, stop: int, group=None) -> None:
    """Write samples ``[start, stop)`` of each named array (whole chunks of the shard's region)."""
    group = open_for_writing(path) if group is None else group
    for name, values in arrays.items():
        target = group[name]
        if values.shape[0] != stop - start or tuple(values.shape[1:]) != tuple(target.shape[1:]):
            raise StoreError(
                f"shard [{start}, {stop}) of {name!r} has shape {values.shape}, the store expects "
                f"{(stop - start, *target.shape[1:])}"
            )
        target[start:stop] = values.astype(target.dtype, copy=False)


def record_attempt(path: str | Path, shard_id: int) -> int:
    """Note one more attempt of a shard; returns the attempt number (1 for the first)."""
    file = Path(path) / MARKERS / f"{shard_id}.attempts"
    with open(file, "a") as handle:
        handle.write(f"{time.time():.3f} {socket.gethostname()}\n")
    return attempt_count(path, shard_id)


def any_attempt(path: str | Path) -> bool:
    """True when some shard of the store has started at least once."""
    folder = Path(path) / MARKERS
    return folder.is_dir() and any(folder.glob("*.attempts"))


def discard_store(path: str | Path) -> None:
    """Delete a pipeline store (never anything else): one a failed run created and never used."""
    if is_pipeline_store(path):
        shutil.rmtree(path, ignore_errors=True)


def attempt_count(path: str | Path, shard_id: int) -> int:
    file = Path(path) / MARKERS / f"{shard_id}.attempts"
    return len(file.read_text().splitlines()) if file.is_file() else 0


def write_marker(path: str | Path, record: ShardRecord) -> None:
    """Commit a shard: atomically write its marker after its data is written."""
    folder = Path(path) / MARKERS
    final = folder / f"{record.shard_id}.json"
    temporary = folder / f".{record.shard_id}.json.{os.getpid()}.tmp"
    temporary.write_text(json.dumps(asdict(record)))
    os.replace(temporary, final)


def read_markers(path: str | Path) -> dict[int, ShardRecord]:
    """Committed shards by id."""
    folder = Path(path) / MARKERS
    records = {}
    if folder.is_dir():
        for file in folder.glob("*.json"):
            data = json.loads(file.read_text())
            records[data["shard_id"]] = ShardRecord(**data)
    return records


class Checksum:
    """CRC32 per array, fed block by block in sample order; the same for any split into blocks.

    The digest is the CRC32 of the arrays' own CRC32s in name order, so a
    shard written in blocks checks the same as one written whole.
    """

    def __init__(self) -> None:
        self._crcs: dict[str, int] = {}

    def update(self, arrays: dict[str, np.ndarray]) -> None:
        for name, values in arrays.items():
            self._crcs[name] = zlib.crc32(np.ascontiguousarray(values).view(np.uint8).ravel(),
                                          self._crcs.get(name, 0))

    def hexdigest(self) -> str:
        joined = b"".join(self._crcs[name].to_bytes(4, "little") for name in sorted(self._crcs))
        return f"{zlib.crc32(joined):08x}"


def checksum(arrays: dict[str, np.ndarray]) -> str:
    """CRC32 of the arrays' bytes (what a re-run must reproduce); see :class:`Checksum`."""
    summer = Checksum()
    summer.update(arrays)
    return summer.hexdigest()


# ----------------------------------------------------------------- reading


def open_results(path: str | Path, *, require_complete: bool = False):
    """Open a store as an ``xarray.Dataset`` with named dimensions.

    Args:
        path: the store directory.
        require_complete: raise if some shards have not committed yet (by
            default an incomplete store opens with NaN where shards are missing,
            and ``ds.attrs["complete"]`` is False).

    Example:
        >>> ds = open_results("results/quickstart.zarr")   # doctest: +SKIP
        >>> ds.jacobian.shape                              # doctest: +SKIP
        (4096, 3, 2)
    """
    import xarray as xr

    attrs = read_attributes(path)
    if require_complete and not attrs.get("complete"):
        raise StoreError(
            f"{path} is not complete; `pipeline status {path}` lists the failed and pending shards "
            f"(`pipeline inspect {path}` shows their errors); run the job again to finish them"
        )
    dataset = _open_dataset(path, xr)
    from .labels import label_dataset

    return label_dataset(dataset, attrs)


def _open_dataset(path: str | Path, xr):
    """The store's arrays as a lazy ``xarray.Dataset``: dask arrays in the store's own chunks when dask is installed."""
    import importlib.util

    chunks = {} if importlib.util.find_spec("dask") is not None else None
    if has_consolidated_metadata(path):
        return xr.open_zarr(str(path), consolidated=True, chunks=chunks)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a store written before templates were consolidated: zarr lists the folder
        return xr.open_zarr(str(path), consolidated=False, chunks=chunks)


def summarize(path: str | Path) -> dict[str, Any]:
    """Counts of done / failed / pending shards (markers and manifest, no array reads)."""
    attrs = read_attributes(path)
    plan = read_plan(path)
    markers = read_markers(path)
    manifest = read_manifest(path)
    failed = set()
    if manifest is not None:
        data = manifest.select(["shard_id", "status"]).to_pydict()
        failed = {i for i, s in zip(data["shard_id"], data["status"]) if s == "failed"} - set(markers)
    done = len([s for s in plan if s.id in markers])
    return {
        "path": str(path),
        "name": attrs.get("spec", {}).get("name", "?"),
        "complete": bool(attrs.get("complete")),
        "shards": len(plan),
        "done": done,
        "failed": len(failed),
        "pending": len(plan) - done - len(failed),
        "samples_done": sum(s.size for s in plan if s.id in markers),
        "samples": sum(s.size for s in plan),
        "unit": "cases" if attrs.get("kind") == "sweep" else "samples",  # what samples_done/samples count
        "failed_shards": sorted(failed),
        "pending_shards": [s.id for s in plan if s.id not in markers and s.id not in failed],
    }

