"""The derivative job: quantities of a torch function over an input set, per sample.

Example:
    >>> job = DerivativeJob.model_validate({
    ...     "schema_version": 1, "name": "x", "function": {"kind": "mlp", "in_features": 2, "out_features": 1},
    ...     "inputs": {"kind": "uniform", "n": 1000, "shape": [2]}, "store": {"path": "results/x.zarr"}})
    >>> job.kind, job.shard_size
    ('derivatives', 16384)
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from ..quantities import canonical_quantities, canonical_quantity
from ..sobol import check as check_sobol
from .base import (
    IMPORT_PATH,
    MAX_SAMPLES,
    ComputeDtype,
    ExecutionSettings,
    Fix,
    Job,
    PositiveInt,
    SampleCount,
    Shape,
    StoreSettings,
    Strict,
)

ACTIVATIONS = ("tanh", "sigmoid", "sin", "cos", "relu", "gelu", "silu", "softplus", "exp")
DERIVATIVE_METHODS = ("auto", "taylor", "forward", "reverse", "forward-over-reverse", "collapsed")


# --------------------------------------------------------------------- function

#: a state_dict file; an empty string would silently load nothing
Checkpoint = Annotated[
    str | None,
    Field(min_length=1),
    Fix("give the state_dict file, e.g. model.pt, or remove the key", ("string_too_short",)),
]


class MLPFunction(Strict):
    """The built-in multilayer perceptron ``in_features -> hidden... -> out_features``."""

    kind: Literal["mlp"]
    in_features: PositiveInt = Field(description="size of one input sample (the sample must be a vector)")
    hidden: list[PositiveInt] = Field(default=[64, 64], description="widths of the hidden layers")
    out_features: PositiveInt = Field(description="size of one output sample")
    activation: Literal[ACTIVATIONS] = Field(default="tanh", description="elementwise activation")  # type: ignore[valid-type]
    seed: int = Field(default=0, description="seed of the weight initialisation (ignored with a checkpoint)")
    checkpoint: Checkpoint = Field(default=None, description="state_dict file, loaded with weights_only=True")
    output_names: list[str] | None = Field(
        default=None,
        description="labels of the 1-D output axis (the 'output' coordinate of the store, and of the outputs "
        "store.encoding keeps), one per output",
    )
    input_names: list[str] | None = Field(
        default=None,
        description="labels of the 1-D input axis (the 'input' coordinate, and of the entries store.encoding "
        "keeps; each also a coordinate of 'sample' holding that input)",
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
    checkpoint: Checkpoint = Field(
        default=None, description="state_dict file for an nn.Module, loaded with weights_only=True"
    )
    python_path: list[str] = Field(
        default_factory=list,
        description="directories added to sys.path before importing (default: the job file's directory)",
    )
    output_names: list[str] | None = Field(
        default=None,
        description="labels of the 1-D output axis (the 'output' coordinate of the store, and of the outputs "
        "store.encoding keeps), one per output",
    )
    input_names: list[str] | None = Field(
        default=None,
        description="labels of the 1-D input axis (the 'input' coordinate, and of the entries store.encoding "
        "keeps; each also a coordinate of 'sample' holding that input)",
    )

    @field_validator("kwargs")
    @classmethod
    def _finite_numbers(cls, value: dict[str, Any]) -> dict[str, Any]:
        def walk(item: Any, where: str) -> None:
            if isinstance(item, float) and not math.isfinite(item):
                raise ValueError(
                    f"{where} is {item}: nan and inf do not reach the workers (the job travels as JSON, where they "
                    "become null); give a finite number, or make the value inside the function"
                )
            if isinstance(item, dict):
                for key, inner in item.items():
                    walk(inner, f"{where}.{key}")
            elif isinstance(item, list):
                for i, inner in enumerate(item):
                    walk(inner, f"{where}[{i}]")

        for key, item in value.items():
            walk(item, key)
        return value

    @field_validator("target")
    @classmethod
    def _import_path(cls, value: str) -> str:
        if not IMPORT_PATH.match(value):
            raise ValueError(
                f"expected an import path like 'package.module:attr', got {value!r}; "
                "use a colon between the module and the attribute"
            )
        return value


Function = Annotated[MLPFunction | ImportFunction, Field(discriminator="kind")]


# ----------------------------------------------------------------------- inputs

#: a bound or moment of generated inputs: nan or inf would make every sample nan (or a numpy traceback)
Finite = Annotated[float, Field(allow_inf_nan=False)]


class _Generated(Strict):
    n: SampleCount = Field(description=f"number of samples (at most 2**40 = {MAX_SAMPLES})")
    shape: Shape = Field(default=(2,), description="shape of one input sample, e.g. [2] or [2, 2]")
    seed: Annotated[int, Field(ge=0)] = Field(default=0, description="random seed; results do not depend on sharding")


class UniformInputs(_Generated):
    """Uniform random samples in [low, high)."""

    kind: Literal["uniform"]
    low: Finite = -1.0
    high: Finite = 1.0

    @model_validator(mode="after")
    def _range(self):
        if not self.low < self.high:
            raise ValueError(
                f"low ({self.low}) must be smaller than high ({self.high}); set low < high, e.g. swap them"
            )
        if not math.isfinite(self.high - self.low):  # numpy's uniform needs the width as a float
            raise ValueError(
                f"high - low ({self.high} - {self.low}) overflows a float; narrow the range, e.g. low: -1e300, high: 1e300"
            )
        return self


class NormalInputs(_Generated):
    """Normal random samples with the given mean and standard deviation."""

    kind: Literal["normal"]
    mean: Finite = 0.0
    std: Annotated[float, Field(gt=0, allow_inf_nan=False)] = 1.0


class SobolInputs(_Generated):
    """Scrambled Sobol points mapped to [low, high) in every coordinate."""

    kind: Literal["sobol"]
    low: Finite = 0.0
    high: Finite = 1.0
    scramble: bool = True

    @model_validator(mode="after")
    def _checks(self):
        if not self.low < self.high:
            raise ValueError(
                f"low ({self.low}) must be smaller than high ({self.high}); set low < high, e.g. swap them"
            )
        check_sobol(math.prod(self.shape), self.n)
        return self


class GridAxis(Strict):
    """One axis of a regular grid: ``num`` points from ``low`` to ``high`` inclusive."""

    low: Finite
    high: Finite
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
    dtype: ComputeDtype = "float32"
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
    directions: Literal["per_sample", "shared"] = Field(
        default="per_sample",
        description="per_sample: each sample its own random directions (independent errors); shared: the same "
        "directions for every sample (about 2.4x cheaper at 1000 inputs; errors correlated across samples)",
    )

    @field_validator("factor")
    @classmethod
    def _factor(cls, value):
        if value is not None and (not value or not value[0] or len({len(row) for row in value}) > 1):
            raise ValueError("needs d rows of R numbers each (every row as long), e.g. [[1.0, 0.0], [0.5, 1.0]]")
        return value

    def operator_options(self):
        """The engine's ``OperatorOptions`` for these settings."""
        from ..engine.operators import OperatorOptions

        factor = None if self.factor is None else [list(row) for row in self.factor]
        return OperatorOptions(
            factor=None if factor is None else __import__("torch").tensor(factor),
            samples=self.samples,
            seed=self.seed,
            distribution=self.distribution,
            directions=self.directions,
        )


# ----------------------------------------------------------------------- job


class DerivativeJob(Job):
    """A derivative job: a function, its inputs, the quantities per sample, a store."""

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
        if not isinstance(value, list | tuple):  # a number is not iterable, a mapping would pass as its keys
            raise ValueError("expected a list of quantity names, e.g. [value, jacobian]")
        return canonical_quantities(value)

    @model_validator(mode="after")
    def _consistent(self):
        self.check_shard_size()
        for name in self.store.encoding:
            try:
                canon = canonical_quantity(name)
            except ValueError:
                canon = name
            if name not in self.quantities and canon in self.quantities:
                raise ValueError(
                    f"store.encoding.{name}: the store keeps {name!r} as {canon!r}; write store.encoding.{canon}"
                )
            if name not in self.quantities:
                raise ValueError(
                    f"store.encoding.{name}: {name!r} is not among the job's quantities "
                    f"{list(self.quantities)}; use one of those names"
                )
        weighted = [q for q in self.quantities if q in ("weighted_laplacian", "weighted_laplacian_estimate")]
        if weighted and self.derivatives.factor is None:
            raise ValueError(
                f"derivatives.factor: {weighted} need the factor S of C = S S^T (d rows of R numbers, d the input "
                "size); set derivatives.factor, e.g. [[1.0, 0.0], [0.0, 1.0]] for C = I with d = 2"
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

    @classmethod
    def results_view(cls, data: dict[str, Any]) -> dict[str, Any]:
        """What determines a derivative job's results: also not ``derivatives.chunk_size`` (samples per batched
        call) nor the axis labels ``function.output_names`` / ``input_names``."""
        data = super().results_view(data)
        if isinstance(data.get("derivatives"), dict):
            data["derivatives"].pop("chunk_size", None)
            if data["derivatives"].get("directions") == "per_sample":  # the default: absent, as before the key
                data["derivatives"].pop("directions")
        if isinstance(data.get("function"), dict):  # labels of the axes, not what is computed
            data["function"].pop("output_names", None)
            data["function"].pop("input_names", None)
        return data
