"""What every job has: strict models, the store and execution settings, the fields of every kind of job.

``Job`` holds what each kind of job shares (schema version, name, the
shard-size rule, ``resolved`` and ``spec_hash``); the kinds' own models are in
``spec.derivative`` and ``spec.sweep``. Nothing here touches torch, Ray or a
store.

Example:
    >>> StoreSettings(path="results/x.zarr").chunk_size
    4096
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..errors import BadInput

SCHEMA_VERSION = 1
#: ``package.module:attr``, the import path of a user function or solver
IMPORT_PATH = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*$")


@dataclass(frozen=True)
class Fix:
    """A field's own fix, said after any error of its value: ``Annotated[int, Fix("...")]``.

    The error messages (``spec.loading``) give a generic fix per error type
    ("use a whole number >= 0, e.g. 2"); a field whose errors need more (the
    dtype to use instead, an example of a mapping) says it here, beside its
    type. Pydantic keeps it in the field's metadata and does nothing with it.
    ``kinds`` limits it to those pydantic error types (e.g. only
    ``less_than_equal``), the others keeping their generic fix.
    """

    text: str
    kinds: tuple[str, ...] | None = None


#: the dtype a job computes in; what is stored can be narrower (``store.dtype``)
ComputeDtype = Annotated[
    Literal["float32", "float64"],
    Fix(
        "the compute dtype is float32 or float64; to store the results in float16 or bfloat16, "
        "compute in float32 and set store.dtype: float16 (or bfloat16)"
    ),
]
PositiveInt = Annotated[int, Field(gt=0)]
MAX_SAMPLES = 2**40  # samples (or cases) of one job: about 1.1e12; beyond, split the job
SampleCount = Annotated[
    int,
    Field(gt=0, le=MAX_SAMPLES),
    Fix(f"use at most {MAX_SAMPLES} samples in one job, or split the job into several", ("less_than_equal",)),
]
Shape = tuple[PositiveInt, ...]


class SpecError(BadInput, ValueError):
    """A job spec is invalid; ``problems`` holds one line per problem."""

    def __init__(self, problems: list[str], source: str | None = None):
        self.problems = problems
        self.source = source
        where = f" in {source}" if source else ""
        super().__init__(f"invalid job spec{where}:\n" + "\n".join(f"  - {p}" for p in problems))


class Strict(BaseModel):
    """Base of every spec model: unknown keys are errors, values are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)


# ------------------------------------------------------------ store/execution


StoredDtype = Literal["float32", "float64", "float16", "bfloat16"]


class ArrayEncoding(Strict):
    """How one result array is stored (see ``pipeline.encoding``); read back whole by ``open_results``."""

    dtype: StoredDtype | None = Field(default=None, description="stored dtype (default: store.dtype)")
    packed: bool = Field(default=False, description="hessian/dK: store only the unique entries of the symmetric tensor")
    entries: list[list[Annotated[int, Field(ge=0)]]] | None = Field(
        default=None, description="store only these entries, one index per input axis, e.g. [[0, 0], [1, 1]]"
    )
    outputs: list[Annotated[int, Field(ge=0)]] | None = Field(
        default=None, description="store only these outputs (a function with one output axis)"
    )

    @field_validator("entries")
    @classmethod
    def _entries(cls, value):
        if value is not None:
            if not value or any(not entry for entry in value):
                raise ValueError("needs at least one entry, each a list of indices, e.g. [[0, 0], [1, 1]]")
            if len({len(entry) for entry in value}) > 1:
                raise ValueError("every entry needs the same number of indices (one per input axis)")
        return value

    @field_validator("outputs")
    @classmethod
    def _outputs(cls, value):
        if value is not None and not value:
            raise ValueError("needs at least one output index, e.g. [0, 1]")
        return value


class StoreSettings(Strict):
    """Where and how results are written."""

    path: Annotated[str, Fix("give the store's directory, e.g. results/<job>.zarr", ("string_too_short",))] = Field(
        min_length=1, description="Zarr store directory (relative paths are relative to the current directory)"
    )
    chunk_size: PositiveInt = Field(default=4096, description="samples per Zarr chunk")
    compression: Literal["auto", "lz4", "zstd", "none"] = Field(
        default="auto",
        description="chunk codec: auto (lz4 for 32/64-bit arrays; float16/bfloat16 arrays: blosc zstd 2, "
        "byte-shuffled, one block per chunk), lz4 (blosc, byte-shuffled; fast), zstd (smaller, ~5x slower), none",
    )
    check_free_space: bool = Field(
        default=True,
        description="refuse a new local store whose results (before compression) do not fit the free disk space; "
        "false when compression will make them fit",
    )
    direct_writes: bool = Field(
        default=True,
        description="write local chunk files of 1 MiB or more past the page cache (O_DIRECT, Linux; ordinary writes "
        "where the file system refuses it): several times less CPU per byte, at the disk's speed; false to write "
        "through the page cache (NFS, where each direct write waits on the server; a slow disk with memory to spare)",
    )
    compression_level: Annotated[int, Field(ge=1, le=22)] | None = Field(
        default=None, description="codec level of lz4 (1-9, default 5) or zstd (1-22, default 3)"
    )
    shards: PositiveInt | None = Field(
        default=None,
        description="chunks per stored object (Zarr v3 sharding); execution.shard_size must be a "
        "multiple of chunk_size x shards",
    )
    dtype: StoredDtype | None = Field(
        default=None,
        description="stored dtype of every result array (default: the compute dtype); "
        "float16/bfloat16 halve the bytes, rounding error in each array's attributes",
    )
    encoding: dict[str, ArrayEncoding] = Field(
        default_factory=dict, description="per result array: dtype, packed, entries, outputs (see docs/storage.md)"
    )
    overwrite: bool = Field(
        default=False,
        description="replace an existing pipeline store on EVERY run (no resume while true; like --overwrite); "
        "a path that is not a pipeline store is never deleted",
    )
    storage_options: dict[str, Any] | None = Field(
        default=None,
        description="options of the filesystem of a URL store.path (s3://, gs://, az://), like xarray's "
        "storage_options (e.g. {client_kwargs: {endpoint_url: ...}}); credentials normally come from the "
        "environment; values are never recorded in the store",
    )
    chunks: dict[str, PositiveInt] = Field(
        default_factory=dict,
        description="chunk length along axes other than the sample/case axis, by dimension name, e.g. {output: 16}: "
        "then selecting one output reads 1/16 of the array (default: whole axes)",
    )

    @field_validator("storage_options")
    @classmethod
    def _options_need_a_url(cls, value, info):
        from ..storage import is_remote

        path = info.data.get("path")
        if value and isinstance(path, str) and not is_remote(path):
            raise ValueError(
                f"only a bucket URL store.path uses them, and {path!r} is a local path; write the bucket's URL "
                "(e.g. s3://bucket/results.zarr), or leave storage_options out"
            )
        return value


class ExecutionSettings(Strict):
    """How the work is spread over Ray workers."""

    shard_size: PositiveInt | None = Field(
        default=None,
        description="samples (a sweep: cases) per task; a multiple of store.chunk_size (default: 4 chunks; a sweep: 1 chunk)",
    )
    gpus_per_task: float | Literal["auto"] = Field(
        default="auto", description="GPUs per task; auto = 1 when the cluster has GPUs, else 0"
    )
    cpus_per_task: Annotated[float, Field(gt=0, allow_inf_nan=False)] = Field(
        default=1.0,
        description="CPUs per task (Ray's num_cpus); a task writes its results with that many threads (whole "
        "CPUs, at least 1): on a GPU node give each GPU task the CPUs it can use, e.g. 8, to encode and write "
        "chunks in parallel",
    )
    retries: Annotated[int, Field(ge=0)] = Field(default=2, description="extra attempts for a failed shard")
    max_in_flight: PositiveInt | Literal["auto"] = Field(
        default="auto", description="tasks submitted but not finished; auto = 2 x the worker slots"
    )
    memory_limit: int | None = Field(
        default=None,
        description="memory of one task (bytes, or a size such as 4GiB or 500MB, at least 64MiB): Ray places the "
        "task where that much is free; blocks and chunks are sized to fit, and a shard that runs out of memory "
        "is retried with smaller ones (default: no limit)",
    )
    on_nonfinite: Literal["warn", "fail"] = Field(
        default="warn",
        description="NaN or Inf in a shard's results: warn (commit it, count them) or fail (the shard fails, "
        "naming the array and the count)",
    )

    @field_validator("memory_limit", mode="before")
    @classmethod
    def _memory_limit(cls, value):
        from ..memory import MIN_LIMIT, parse_size

        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise ValueError("expected a size such as 4GiB, 512MiB or 500MB (or a number of bytes)")
        try:
            size = parse_size(value)
        except ValueError:
            raise ValueError("expected a size such as 4GiB, 512MiB or 500MB (or a number of bytes)") from None
        if size < MIN_LIMIT:
            raise ValueError(
                "that is less than 64MiB, too little for a worker running torch; give at least 64MiB "
                "(e.g. 4GiB), or leave it out for no limit"
            )
        return size

    @field_validator("gpus_per_task")
    @classmethod
    def _gpus(cls, value):
        if value != "auto" and not 0 <= value < math.inf:  # nan and inf too: Ray cannot place such a task
            raise ValueError("must be 'auto' or a finite number >= 0; use auto, 0, 1 or a fraction such as 0.5")
        return value


# ----------------------------------------------------------------------- job


class Job(Strict):
    """The fields and rules every kind of job shares; a kind's model (``spec.derivative``, ``spec.sweep``) adds its own.

    Every job also has ``kind``, ``store`` (``StoreSettings`` or a subclass) and
    ``execution``, declared by each kind so that its keys keep their order in
    the schema and the stored spec.
    """

    schema_version: Literal[1] = Field(description="version of this schema; currently 1")
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.\-]+$", description="job name (letters, digits, _ . -)")

    #: a task's default size, in store chunks (``execution.shard_size`` unset)
    chunks_per_shard: ClassVar[int] = 4

    if TYPE_CHECKING:  # declared (with their defaults and order) by each kind
        kind: str
        store: StoreSettings
        execution: ExecutionSettings

    @property
    def shard_size(self) -> int:
        """Rows (samples or cases) per task: ``execution.shard_size``, else ``chunks_per_shard`` store chunks."""
        return self.execution.shard_size or self.chunks_per_shard * self.store.chunk_size

    def check_shard_size(self) -> None:
        """The shard-size rule: a task writes whole chunks (and whole Zarr shards); raises ``ValueError``."""
        if self.execution.shard_size is not None and self.execution.shard_size % self.store.chunk_size:
            raise ValueError(
                f"execution.shard_size ({self.execution.shard_size}) must be a multiple of store.chunk_size "
                f"({self.store.chunk_size}) so that every task writes whole chunks; "
                f"try {self.store.chunk_size * max(1, round(self.execution.shard_size / self.store.chunk_size))}"
            )
        check_store_layout(self.store, self.shard_size)

    def resolved(self) -> dict[str, Any]:
        """The spec as plain JSON data (what the store records; ``store.storage_options`` values redacted)."""
        return redact_storage_options(self.model_dump(mode="json"))

    def spec_hash(self) -> str:
        """Hash of everything that determines the results (not where or how they run)."""
        return hash_view(self.results_view(self.resolved()))

    @classmethod
    def results_view(cls, data: dict[str, Any]) -> dict[str, Any]:
        """The part of this kind's resolved spec that determines the results (a copy).

        Left out here: the job ``name``, the execution settings, the store's
        path, codec and overwrite flag; a kind's model leaves out more. A store
        made by a spec with the same view can be resumed.
        """
        data = json.loads(json.dumps(data))
        data.pop("name", None)
        data.pop("execution", None)
        if isinstance(data.get("store"), dict):
            kept = {"chunk_size": data["store"].get("chunk_size")}
            for key in ("dtype", "encoding"):  # what is stored is part of the results; absent when unset
                if data["store"].get(key):
                    kept[key] = data["store"][key]
            data["store"] = kept
        return data


def hash_view(view: dict[str, Any]) -> str:
    """The 16-hex-digit hash of a results view (``Job.results_view``): canonical JSON, SHA-256.

    Example:
        >>> hash_view({"b": 1, "a": [1, 2]}) == hash_view({"a": [1, 2], "b": 1})
        True
    """
    canon = json.dumps(view, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canon.encode()).hexdigest()[:16]


def redact_storage_options(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` with the values of ``store.storage_options`` replaced (secrets never enter a store or a log)."""
    store = data.get("store")
    if isinstance(store, dict) and store.get("storage_options"):
        from ..storage import redact

        data["store"] = {**store, "storage_options": redact(store["storage_options"])}
    return data


def drop_redacted_storage_options(data: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """A recorded spec made runnable again: the redacted ``store.storage_options`` left out; (data, their names).

    The store never holds the options' secrets, so a job rerun from its
    recorded spec (``verify --repair``) reads and writes with the
    environment's credentials instead.

    Example:
        >>> drop_redacted_storage_options({"store": {"storage_options": {"key": "<redacted>", "anon": False}}})
        ({'store': {'storage_options': {'anon': False}}}, ['key'])
    """
    store = data.get("store")
    options = store.get("storage_options") if isinstance(store, dict) else None
    if not isinstance(store, dict) or not isinstance(options, dict):
        return data, []
    dropped = [name for name, value in options.items() if value == "<redacted>"]
    kept = {name: value for name, value in options.items() if name not in dropped}
    return {**data, "store": {**store, "storage_options": kept or None}}, dropped


def check_store_layout(store, shard_size: int) -> None:
    """Cross-key checks of the store's layout options (raise ValueError naming the key)."""
    if store.compression_level is not None:
        if store.compression == "auto":
            raise ValueError(
                "store.compression_level: store.compression is auto (lz4 for 32/64-bit arrays, zstd 2 for "
                "float16/bfloat16 ones), which has no one level; set store.compression to lz4 or zstd with it, "
                "or remove compression_level"
            )
        top = {"lz4": 9, "zstd": 22, "none": None}[store.compression]
        if top is None:
            raise ValueError(
                "store.compression_level: store.compression is none, so there is no level; "
                "remove compression_level or choose lz4 or zstd"
            )
        if store.compression_level > top:
            raise ValueError(
                f"store.compression_level: {store.compression_level} is above {store.compression}'s "
                f"highest level {top}; use 1 to {top}"
            )
    if store.shards and store.shards > 1 and shard_size % (store.chunk_size * store.shards):
        per_object = store.chunk_size * store.shards
        raise ValueError(
            f"store.shards: {store.shards} chunks of {store.chunk_size} per object ({per_object}) must divide "
            f"the task's shard size ({shard_size}) so that no two tasks write one object; set "
            f"execution.shard_size to a multiple of {per_object}, e.g. {per_object * max(1, -(-shard_size // per_object))}"
        )
