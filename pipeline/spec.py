"""The job spec: pydantic models of a job file, loading, overrides and hashing.

A job file is YAML. ``load_spec(path, overrides)`` reads it, applies
``--set key.path=value`` overrides, validates it once and returns a frozen
``JobSpec``. Every problem becomes a ``SpecError`` whose lines name the key
path, the bad value and the fix. Nothing here touches torch, Ray or a store.

Example:
    >>> spec = load_spec("jobs/quickstart.yaml", overrides=["inputs.n=1000"])
    >>> spec.inputs.n
    1000
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .quantities import canonical_quantities

SCHEMA_VERSION = 1
ACTIVATIONS = ("tanh", "sigmoid", "sin", "cos", "relu", "gelu", "silu", "softplus", "exp")
DERIVATIVE_METHODS = ("auto", "taylor", "forward", "reverse", "forward-over-reverse", "collapsed")
_IMPORT_PATH = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*$")

PositiveInt = Annotated[int, Field(gt=0)]
MAX_SAMPLES = 2**40  # samples (or cases) of one job: about 1.1e12; beyond, split the job
SampleCount = Annotated[int, Field(gt=0, le=MAX_SAMPLES)]
Shape = tuple[PositiveInt, ...]


class SpecError(ValueError):
    """A job spec is invalid; ``problems`` holds one line per problem."""

    def __init__(self, problems: list[str], source: str | None = None):
        self.problems = problems
        self.source = source
        where = f" in {source}" if source else ""
        super().__init__(f"invalid job spec{where}:\n" + "\n".join(f"  - {p}" for p in problems))


class Strict(BaseModel):
    """Base of every spec model: unknown keys are errors, values are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)


# --------------------------------------------------------------------- function


class MLPFunction(Strict):
    """The built-in multilayer perceptron ``in_features -> hidden... -> out_features``."""

    kind: Literal["mlp"]
    in_features: PositiveInt = Field(description="size of one input sample (the sample must be a vector)")
    hidden: list[PositiveInt] = Field(default=[64, 64], description="widths of the hidden layers")
    out_features: PositiveInt = Field(description="size of one output sample")
    activation: Literal[ACTIVATIONS] = Field(default="tanh", description="elementwise activation")  # type: ignore[valid-type]
    seed: int = Field(default=0, description="seed of the weight initialisation (ignored with a checkpoint)")
    checkpoint: str | None = Field(default=None, description="state_dict file, loaded with weights_only=True")
    output_names: list[str] | None = Field(
        default=None, description="labels of the 1-D output axis (the 'output' coordinate of the store), one per output"
    )
    input_names: list[str] | None = Field(
        default=None,
        description="labels of the 1-D input axis (the 'input' coordinate; each also a coordinate of "
        "'sample' holding that input)",
    )


class ImportFunction(Strict):
    """Any torch callable given by import path ``package.module:attr``.

    ``attr`` may be a function of one sample, an ``nn.Module`` instance, an
    ``nn.Module`` class (instantiated with ``kwargs``) or, with ``factory: true``,
    a function called with ``kwargs`` that returns the per-sample callable.
    """

    kind: Literal["import"]
    target: str = Field(description="import path 'package.module:attr'")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="keyword arguments for the class/factory/function")
    factory: bool = Field(default=False, description="call target(**kwargs) to build the function")
    checkpoint: str | None = Field(
        default=None, description="state_dict file for an nn.Module, loaded with weights_only=True"
    )
    python_path: list[str] = Field(
        default_factory=list,
        description="directories added to sys.path before importing (default: the job file's directory)",
    )
    output_names: list[str] | None = Field(
        default=None, description="labels of the 1-D output axis (the 'output' coordinate of the store), one per output"
    )
    input_names: list[str] | None = Field(
        default=None,
        description="labels of the 1-D input axis (the 'input' coordinate; each also a coordinate of "
        "'sample' holding that input)",
    )

    @field_validator("target")
    @classmethod
    def _import_path(cls, value: str) -> str:
        if not _IMPORT_PATH.match(value):
            raise ValueError(
                f"expected an import path like 'package.module:attr', got {value!r}; "
                "use a colon between the module and the attribute"
            )
        return value


Function = Annotated[MLPFunction | ImportFunction, Field(discriminator="kind")]


# ----------------------------------------------------------------------- inputs


class _Generated(Strict):
    n: SampleCount = Field(description=f"number of samples (at most 2**40 = {MAX_SAMPLES})")
    shape: Shape = Field(default=(2,), description="shape of one input sample, e.g. [2] or [2, 2]")
    seed: int = Field(default=0, description="random seed; results do not depend on sharding")


class UniformInputs(_Generated):
    """Uniform random samples in [low, high)."""

    kind: Literal["uniform"]
    low: float = -1.0
    high: float = 1.0

    @model_validator(mode="after")
    def _range(self):
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be smaller than high ({self.high})")
        return self


class NormalInputs(_Generated):
    """Normal random samples with the given mean and standard deviation."""

    kind: Literal["normal"]
    mean: float = 0.0
    std: Annotated[float, Field(gt=0)] = 1.0


class SobolInputs(_Generated):
    """Scrambled Sobol points mapped to [low, high) in every coordinate."""

    kind: Literal["sobol"]
    low: float = 0.0
    high: float = 1.0
    scramble: bool = True

    @model_validator(mode="after")
    def _checks(self):
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be smaller than high ({self.high})")
        from . import sobol

        sobol.check(math.prod(self.shape), self.n)
        return self


class GridAxis(Strict):
    """One axis of a regular grid: ``num`` points from ``low`` to ``high`` inclusive."""

    low: float
    high: float
    num: PositiveInt


class GridInputs(Strict):
    """Cartesian product of linspaces; a sample is the vector of one point's coordinates."""

    kind: Literal["grid"]
    axes: list[GridAxis] = Field(min_length=1, description="one {low, high, num} per input coordinate")

    @property
    def n(self) -> int:
        return math.prod(axis.num for axis in self.axes)

    @model_validator(mode="after")
    def _size(self):
        if self.n > MAX_SAMPLES:
            raise ValueError(
                f"inputs.axes: the grid has {self.n} points ({' x '.join(str(a.num) for a in self.axes)}), more "
                f"than the {MAX_SAMPLES} (2**40) samples one job may have; use fewer points per axis or split the job"
            )
        return self

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.axes),)


class _FileInputs(Strict):
    path: str = Field(description="file or store path (relative paths are relative to the current directory)")
    n: SampleCount | None = Field(default=None, description="use only the first n samples (default: all)")


class ZarrInputs(_FileInputs):
    """Samples along the first axis of an existing Zarr array (e.g. a previous job's 'inputs')."""

    kind: Literal["zarr"]
    array: str = Field(default="inputs", description="name of the array inside the store")


class ParquetInputs(_FileInputs):
    """Samples from Parquet columns; one row is one sample, one column per input coordinate."""

    kind: Literal["parquet"]
    columns: list[str] = Field(min_length=1, description="columns that form one input sample, in order")


class NpyInputs(_FileInputs):
    """Samples along the first axis of a ``.npy`` file, memory-mapped."""

    kind: Literal["npy"]


Inputs = Annotated[
    UniformInputs | NormalInputs | SobolInputs | GridInputs | ZarrInputs | ParquetInputs | NpyInputs,
    Field(discriminator="kind"),
]


# ----------------------------------------------------------- derivatives/store


class DerivativeSettings(Strict):
    """How the engine computes: method, chunk of samples per batched call, precision."""

    method: Literal[DERIVATIVE_METHODS] = "auto"  # type: ignore[valid-type]
    chunk_size: PositiveInt | Literal["auto"] = Field(default="auto", description="samples per batched call")
    dtype: Literal["float32", "float64"] = "float32"
    allow_tf32: bool = Field(default=False, description="allow TF32 matmuls on GPUs (faster, less precise)")
    # options of the operator quantities (weighted_laplacian, laplacian_estimate, ...)
    factor: tuple[tuple[float, ...], ...] | None = Field(
        default=None, description="S [d][R] with C = S S^T for weighted_laplacian(_estimate): d rows of R numbers"
    )
    samples: PositiveInt = Field(default=64, description="random directions per sample for *_estimate quantities")
    seed: int = Field(default=0, description="seed of the random directions (combined with each sample's index)")
    distribution: Literal["rademacher", "gaussian"] = Field(
        default="rademacher", description="distribution of the random directions of *_estimate quantities"
    )

    def operator_options(self):
        """The engine's ``OperatorOptions`` for these settings."""
        from .engine.operators import OperatorOptions

        factor = None if self.factor is None else [list(row) for row in self.factor]
        return OperatorOptions(
            factor=None if factor is None else __import__("torch").tensor(factor),
            samples=self.samples,
            seed=self.seed,
            distribution=self.distribution,
        )


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

    path: str = Field(description="Zarr store directory (relative paths are relative to the current directory)")
    chunk_size: PositiveInt = Field(default=4096, description="samples per Zarr chunk")
    compression: Literal["lz4", "zstd", "none"] = Field(
        default="lz4", description="chunk codec: lz4 (blosc, byte-shuffled; fast), zstd (smaller, ~5x slower), none"
    )
    check_free_space: bool = Field(
        default=True,
        description="refuse a new local store whose results (before compression) do not fit the free disk space; "
        "false when compression will make them fit",
    )
    compression_level: Annotated[int, Field(ge=1, le=22)] | None = Field(
        default=None, description="codec level: lz4 1-9 (default 5), zstd 1-22 (default 3)"
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


class ExecutionSettings(Strict):
    """How the work is spread over Ray workers."""

    shard_size: PositiveInt | None = Field(
        default=None, description="samples per task; a multiple of store.chunk_size (default: 4 chunks)"
    )
    gpus_per_task: float | Literal["auto"] = Field(
        default="auto", description="GPUs per task; auto = 1 when the cluster has GPUs, else 0"
    )
    cpus_per_task: Annotated[float, Field(gt=0)] = 1.0
    retries: Annotated[int, Field(ge=0)] = Field(default=2, description="extra attempts for a failed shard")
    max_in_flight: PositiveInt | Literal["auto"] = Field(
        default="auto", description="tasks submitted but not finished; auto = 2 x the worker slots"
    )
    on_nonfinite: Literal["warn", "fail"] = Field(
        default="warn",
        description="NaN or Inf in a shard's results: warn (commit it, count them) or fail (the shard fails, "
        "naming the array and the count)",
    )

    @field_validator("gpus_per_task")
    @classmethod
    def _gpus(cls, value):
        if value != "auto" and value < 0:
            raise ValueError(f"must be 'auto' or >= 0, got {value}")
        return value


# ----------------------------------------------------------------------- job


class JobSpec(Strict):
    """A derivative job: a function, its inputs, the quantities per sample, a store."""

    schema_version: Literal[1] = Field(description="version of this schema; currently 1")
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.\-]+$", description="job name (letters, digits, _ . -)")
    kind: Literal["derivatives"] = "derivatives"
    function: Function
    inputs: Inputs
    quantities: tuple[str, ...] = Field(default=("value", "jacobian", "hessian"))
    derivatives: DerivativeSettings = Field(default_factory=DerivativeSettings)
    store: StoreSettings
    execution: ExecutionSettings = Field(default_factory=ExecutionSettings)

    @field_validator("quantities", mode="before")
    @classmethod
    def _quantities(cls, value):
        if isinstance(value, str):
            value = [value]
        return canonical_quantities(value)

    @model_validator(mode="after")
    def _consistent(self):
        if self.execution.shard_size is not None and self.execution.shard_size % self.store.chunk_size:
            raise ValueError(
                f"execution.shard_size ({self.execution.shard_size}) must be a multiple of store.chunk_size "
                f"({self.store.chunk_size}) so that every task writes whole chunks; "
                f"try {self.store.chunk_size * max(1, round(self.execution.shard_size / self.store.chunk_size))}"
            )
        check_store_layout(self.store, self.shard_size)
        for name in self.store.encoding:
            if name not in self.quantities:
                raise ValueError(
                    f"store.encoding.{name}: {name!r} is not among the job's quantities "
                    f"{list(self.quantities)}; use one of those names"
                )
        if isinstance(self.function, MLPFunction) and isinstance(
            self.inputs, (UniformInputs, NormalInputs, SobolInputs, GridInputs)
        ):
            expected = (self.function.in_features,)
            if tuple(self.inputs.shape) != expected:
                where = "inputs.axes (one per coordinate)" if isinstance(self.inputs, GridInputs) else "inputs.shape"
                raise ValueError(
                    f"function.in_features is {self.function.in_features} but {where} gives samples of shape "
                    f"{list(self.inputs.shape)}; make {where} match [{self.function.in_features}] "
                    f"or change function.in_features"
                )
        return self

    @property
    def shard_size(self) -> int:
        """Samples per task (defaults to four store chunks)."""
        return self.execution.shard_size or 4 * self.store.chunk_size

    def resolved(self) -> dict[str, Any]:
        """The spec as plain JSON data (what the store records; ``store.storage_options`` values redacted)."""
        return redact_storage_options(self.model_dump(mode="json"))

    def spec_hash(self) -> str:
        """Hash of everything that determines the results (not where or how they run)."""
        return results_hash(self.resolved())


def redact_storage_options(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` with the values of ``store.storage_options`` replaced (secrets never enter a store or a log)."""
    store = data.get("store")
    if isinstance(store, dict) and store.get("storage_options"):
        from .storage import redact

        data["store"] = {**store, "storage_options": redact(store["storage_options"])}
    return data


def check_store_layout(store, shard_size: int) -> None:
    """Cross-key checks of the store's layout options (raise ValueError naming the key)."""
    if store.compression_level is not None:
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


def results_view(data: dict[str, Any]) -> dict[str, Any]:
    """The part of a resolved spec (of any kind) that determines the results.

    Left out: the job ``name``, the execution settings, the store's path,
    codec and overwrite flag, ``derivatives.chunk_size`` (samples per batched
    call) and a sweep solver's performance-only options (see
    ``sweep_spec.RESULT_NEUTRAL_OPTIONS``). A store made by a spec with the
    same view can be resumed.
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
    if isinstance(data.get("derivatives"), dict):
        data["derivatives"].pop("chunk_size", None)
    if isinstance(data.get("function"), dict):  # labels of the axes, not what is computed
        data["function"].pop("output_names", None)
        data["function"].pop("input_names", None)
    if data.get("kind") == "sweep":
        from .sweep_spec import drop_result_neutral_options

        drop_result_neutral_options(data)
    return data


def results_hash(data: dict[str, Any]) -> str:
    """Hash of a resolved spec without the keys that do not change results (see ``results_view``).

    Execution settings and the store's path, codec and overwrite flag change
    where and how a job runs, not what it computes; a store made by a spec
    with the same hash can be resumed.
    """
    canon = json.dumps(results_view(data), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canon.encode()).hexdigest()[:16]


_ABSENT = object()


def spec_differences(old: dict[str, Any], new: dict[str, Any], limit: int = 8) -> list[str]:
    """Lines ``key.path: old -> new`` for the result-determining keys that differ between two resolved specs.

    Example:
        >>> spec_differences({"derivatives": {"dtype": "float32"}}, {"derivatives": {"dtype": "float64"}})
        ['derivatives.dtype: float32 -> float64']
    """
    lines: list[str] = []

    def show(value) -> str:
        if value is _ABSENT:
            return "(not set)"
        return value if isinstance(value, str) else json.dumps(value)

    def walk(a, b, key: str) -> None:
        if isinstance(a, dict) and isinstance(b, dict):
            for name in sorted(set(a) | set(b)):
                walk(a.get(name, _ABSENT), b.get(name, _ABSENT), f"{key}.{name}" if key else name)
        elif a != b:
            lines.append(f"{key or '(top level)'}: {show(a)} -> {show(b)}")

    walk(results_view(old), results_view(new), "")
    if len(lines) > limit:
        lines = [*lines[:limit], f"... and {len(lines) - limit} more"]
    return lines


# ---------------------------------------------------------------- loading


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``key.path=value`` into its path and YAML-parsed value.

    Example:
        >>> parse_override("inputs.n=1000")
        (['inputs', 'n'], 1000)
    """
    if "=" not in text:
        raise SpecError([f"--set {text!r}: expected KEY.PATH=VALUE, e.g. --set inputs.n=1000"])
    key, raw = text.split("=", 1)
    path = [part for part in key.strip().split(".") if part]
    if not path:
        raise SpecError([f"--set {text!r}: the key path is empty; e.g. --set inputs.n=1000"])
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as err:
        raise SpecError([f"--set {text!r}: the value is not valid YAML ({err})"]) from None
    return path, _number(value)


_FLOAT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


def _number(value: Any) -> Any:
    """``'1e3'`` (a string to YAML 1.1, which wants ``1.0e3``) -> ``1000``; a whole float -> int; else as is.

    >>> _number("1e3"), _number("2.5e-1"), _number(1.0e3), _number("1e3x"), _number([1, 2])
    (1000, 0.25, 1000, '1e3x', [1, 2])
    """
    if isinstance(value, str) and _FLOAT.match(value.strip()):
        value = float(value)
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    return value


def apply_overrides(raw: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Return a copy of the raw job data with ``key.path=value`` overrides applied."""
    data = json.loads(json.dumps(raw))
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for i, part in enumerate(path[:-1]):
            if isinstance(node, list):
                node = node[_list_index(text, path, i, node)]
                continue
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, (dict, list)):
                where = ".".join(path[: i + 1])
                raise SpecError(
                    [f"--set {text!r}: {where} is {child!r}, not a mapping, so it has no key {path[i + 1]!r}"]
                )
            node = child
        if isinstance(node, list):
            node[_list_index(text, path, len(path) - 1, node)] = value
        else:
            node[path[-1]] = value
    return data


def _list_index(text: str, path: list[str], i: int, items: list) -> int:
    """The list index ``path[i]`` of an override (``inputs.axes.0.num=10``), checked against the list's length."""
    where = ".".join(path[:i])
    try:
        index = int(path[i])
    except ValueError:
        raise SpecError(
            [
                f"--set {text!r}: {where} is a list, so the next key must be an index 0..{len(items) - 1}, "
                f"not {path[i]!r}"
            ]
        ) from None
    if not -len(items) <= index < len(items):
        raise SpecError(
            [
                f"--set {text!r}: {where} has {len(items)} items, so index {index} is out of range; "
                f"use 0..{len(items) - 1}"
            ]
        )
    return index


def _loc_path(loc: tuple) -> str:
    # pydantic puts union tags (e.g. 'mlp', 'uniform') and model names in the
    # location; users only know the keys of their file.
    parts: list[str] = []
    tags = {
        "mlp",
        "import",
        "uniform",
        "normal",
        "sobol",
        "grid",
        "zarr",
        "parquet",
        "npy",
        "zip",
        "random",
        "lhs",
        "product",
    }
    for i, item in enumerate(loc):
        if isinstance(item, int):
            parts.append(f"[{item}]")
        elif (
            item in tags
            and i
            and (
                loc[i - 1] in ("function", "inputs", "sweep")
                or isinstance(loc[i - 1], int)
                or loc[i - 2 : i - 1] == ("profiles",)
            )
        ):
            continue
        elif item.startswith("function-after") or item.startswith("tagged-union"):
            continue
        else:
            parts.append(("." if parts else "") + str(item))
    return "".join(parts).replace(".[", "[") or "(top level)"


def _allowed_keys(model: type[BaseModel], loc: tuple) -> list[str] | None:
    node: Any = model
    for item in loc[:-1]:
        if isinstance(node, type) and issubclass(node, BaseModel):
            field = node.model_fields.get(item) if isinstance(item, str) else None
            if field is None:
                continue
            node = _model_in(field.annotation, loc)
        else:
            return None
    if isinstance(node, type) and issubclass(node, BaseModel):
        return sorted(node.model_fields)
    return None


def _model_in(annotation: Any, loc: tuple) -> Any:
    import typing

    args = typing.get_args(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in args:
        found = _model_in(arg, loc)
        if isinstance(found, type) and issubclass(found, BaseModel):
            # pick the union member whose 'kind' tag appears in the location
            kind = found.model_fields.get("kind")
            if kind is None or any(t in loc for t in typing.get_args(kind.annotation)):
                return found
    return None


_FIXES = {
    "missing": "add this key",
    "int_parsing": "use a whole number",
    "int_type": "use a whole number",
    "float_parsing": "use a number",
    "bool_parsing": "use true or false",
    "greater_than": "use a larger value",
    "less_than_equal": "use a smaller value, or split the job into several",
    "union_tag_invalid": "set 'kind' to one of the listed values",
    "union_tag_not_found": "add a 'kind' key",
}


def _describe(error: dict, model: type[BaseModel]) -> str:
    loc = tuple(error.get("loc", ()))
    path = _loc_path(loc)
    kind = error.get("type", "")
    value = error.get("input")
    msg = error.get("msg", "")
    if kind == "extra_forbidden":
        allowed = _allowed_keys(model, loc)
        hint = f"; allowed keys here: {', '.join(allowed)}" if allowed else ""
        return f"{path}: unknown key (value {value!r}); remove it or fix its spelling{hint}"
    if kind == "missing":
        return f"{path}: required key is missing; add it (see `pipeline schema`)"
    if kind == "union_tag_invalid":
        expected = error.get("ctx", {}).get("expected_tags", "")
        tag = error.get("ctx", {}).get("tag", value)
        return f"{path}.kind: unknown kind {tag!r}; use one of {expected}"
    if kind == "union_tag_not_found":
        return f"{path}: no 'kind' key; add kind: one of the kinds listed by `pipeline schema`"
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    fix = _FIXES.get(kind)
    if path == "(top level)" and kind == "value_error":
        return msg  # cross-key checks name their keys themselves
    shown = "" if isinstance(value, dict) else f" (got {value!r})"
    return f"{path}: {msg}{shown}" + (f"; {fix}" if fix and fix not in msg else "")


def validate_spec(data: Any, source: str | None = None) -> JobSpec:
    """Validate raw job data (a dict) into a ``JobSpec`` or raise ``SpecError``."""
    if not isinstance(data, dict):
        raise SpecError([f"(top level): a job file must be a YAML mapping, got {type(data).__name__}"], source)
    version = data.get("schema_version")
    if version is not None and version != SCHEMA_VERSION:
        raise SpecError(
            [f"schema_version: this pipeline reads version {SCHEMA_VERSION}, got {version!r}; set schema_version: 1"],
            source,
        )
    model = _job_model(data)
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise SpecError([_describe(e, model) for e in _relevant(err.errors())], source) from None


def _model_names() -> set[str]:
    found, todo = set(), [Strict]
    while todo:
        cls = todo.pop()
        for sub in cls.__subclasses__():
            found.add(sub.__name__)
            todo.append(sub)
    return found


def _relevant(errors: list[dict]) -> list[dict]:
    """Errors without those of union members the value plainly is not, locations without model names.

    ``{low: 0.1, high: 1, num: 0}`` under ``list[float] | Axis`` fails both
    members; "Input should be a valid list" says nothing useful about a
    mapping, so only the ``Axis`` error (``num``) is kept, at ``...num``.
    """
    names = _model_names()
    kept = []
    for error in errors:
        loc = tuple(error.get("loc", ()))
        member = loc[-1] if loc and isinstance(loc[-1], str) else ""
        if error.get("type") == "list_type" and member.startswith("list") and isinstance(error.get("input"), dict):
            if any(e is not error and tuple(e.get("loc", ()))[: len(loc) - 1] == loc[:-1] for e in errors):
                continue  # a mapping was meant as the other member of the union
        kept.append(
            {
                **error,
                "loc": tuple(item for i, item in enumerate(loc) if not (i and isinstance(item, str) and item in names)),
            }
        )
    return kept


def _job_model(data: dict) -> type[BaseModel]:
    kind = data.get("kind", "derivatives")
    models = job_models()
    if kind not in models:
        raise SpecError([f"kind: unknown job kind {kind!r}; use one of {', '.join(models)}"])
    return models[kind]


def job_models() -> dict[str, type[BaseModel]]:
    """Job kinds and their models."""
    from .sweep_spec import SweepJob

    return {"derivatives": JobSpec, "sweep": SweepJob}


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a job file, turning file and YAML errors into ``SpecError``."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise SpecError([f"job file {str(path)!r} does not exist; check the path"]) from None
    except OSError as err:
        raise SpecError([f"job file {str(path)!r} cannot be read: {err}"]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise SpecError([f"not valid YAML: {err}"], str(path)) from None
    return data if data is not None else {}


def load_spec(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> JobSpec:
    """Load, override and validate a job file; relative file paths become absolute.

    Relative paths (store, input files, checkpoints, ``function.python_path``)
    are relative to the current directory, where the user runs ``pipeline``;
    ``function.python_path`` defaults to the job file's directory, so a module
    beside the job file imports.
    """
    path = Path(path)
    raw = read_yaml(path)
    data = apply_overrides(raw, overrides) if overrides else raw
    spec = validate_spec(data, str(path))
    return _resolve_paths(spec, path.resolve().parent)


def _resolve_paths(spec: JobSpec, job_dir: Path) -> JobSpec:
    def absolute(p: str, base: Path) -> str:
        from .storage import is_url, local_path

        if is_url(p):  # s3://, gs://, memory://: as given; file:// becomes its local path
            p = local_path(p)
            if is_url(p):
                return p
        q = Path(p).expanduser()
        return str(q if q.is_absolute() else (base / q).resolve())

    cwd = Path.cwd()
    update: dict[str, Any] = {"store": spec.store.model_copy(update={"path": absolute(spec.store.path, cwd)})}
    if spec.kind == "sweep":
        return spec.model_copy(update={**update, **_resolve_sweep_paths(spec, job_dir, lambda p: absolute(p, cwd))})
    if isinstance(spec.inputs, (ZarrInputs, ParquetInputs, NpyInputs)):
        update["inputs"] = spec.inputs.model_copy(update={"path": absolute(spec.inputs.path, cwd)})
    if isinstance(spec.function, ImportFunction):
        paths = [absolute(p, cwd) for p in spec.function.python_path] or [str(job_dir)]
        fn_update: dict[str, Any] = {"python_path": paths}
        if spec.function.checkpoint:
            fn_update["checkpoint"] = absolute(spec.function.checkpoint, cwd)
        update["function"] = spec.function.model_copy(update=fn_update)
    elif isinstance(spec.function, MLPFunction) and spec.function.checkpoint:
        update["function"] = spec.function.model_copy(update={"checkpoint": absolute(spec.function.checkpoint, cwd)})
    return spec.model_copy(update=update)


def _resolve_sweep_paths(spec, job_dir: Path, absolute) -> dict[str, Any]:
    update: dict[str, Any] = {}
    solver = spec.solver
    if ":" in solver.name:
        paths = [absolute(p) for p in solver.python_path] or [str(job_dir)]
        update["solver"] = solver.model_copy(update={"python_path": paths})
    if getattr(spec.sweep, "path", None):
        update["sweep"] = spec.sweep.model_copy(update={"path": absolute(spec.sweep.path)})
    if spec.profiles:
        update["profiles"] = {k: v.model_copy(update={"path": absolute(v.path)}) for k, v in spec.profiles.items()}
    return update


def json_schema() -> dict[str, Any]:
    """JSON schema of every job kind (what `pipeline schema` prints).

    One self-contained document: the top level is a ``oneOf`` with one branch
    per job kind, and every ``$ref`` points into the root's ``$defs`` (pydantic
    generates the definitions of all kinds together, so names shared by several
    kinds are one definition and clashing names are made unique).

    Example:
        >>> schema = json_schema()
        >>> [branch["title"] for branch in schema["oneOf"]]
        ['JobSpec', 'SweepJob']
    """
    from pydantic.json_schema import models_json_schema

    models = list(job_models().values())
    refs, shared = models_json_schema([(m, "validation") for m in models])
    defs = shared.get("$defs", {})
    branches = []
    for model in models:
        name = refs[(model, "validation")]["$ref"].rsplit("/", 1)[-1]
        branches.append(defs.pop(name))  # job models are never referenced by others: inline them
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "pipeline job file",
        "description": "A job file of `pipeline submit`: one of the job kinds below, chosen by its 'kind' key.",
        "oneOf": branches,
        "$defs": defs,
    }
