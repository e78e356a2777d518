"""The job spec of a parameter sweep: a solver, a sweep of its parameters, a store.

A sweep job runs a PDE solver (``rte1d``, ``heat1d`` or your own by import
path) over a table of cases; every swept parameter becomes a coordinate of the
outputs ``[case, ...]``. Registered as job kind ``sweep`` in ``pipeline.kinds``.

Example job file::

    schema_version: 1
    name: rte-sweep
    kind: sweep
    solver: {name: rte1d, options: {nx: 400, t_end: 1.0}}
    sweep:
      kind: grid
      axes:
        T0_mean: {low: 0.5, high: 2.0, num: 8}
        sigma_mean: [0.5, 1.0, 2.0]
    fixed: {T0_amplitude: 0.1}
    store: {path: results/sweep.zarr}
"""

from __future__ import annotations

import re
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BeforeValidator, Field, field_validator, model_validator

from ..sobol import check as check_sobol
from .base import IMPORT_PATH, ComputeDtype, ExecutionSettings, Fix, Job, PositiveInt, StoreSettings, Strict
from .derivative import NpyInputs, ZarrInputs

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def performance_options(solver_name: str) -> tuple[str, ...]:
    """The options of a solver named ``solver_name`` that change how fast it runs, not its results.

    Read from the solver (``Solver.performance_options``) for built-in and
    registered solvers; a solver given by import path is not imported to hash a
    job, so all of its options count.

    Example:
        >>> performance_options("rte1d")
        ('compile', 'block_cases', 'stability_check')
    """
    if ":" in solver_name:
        return ()
    from ..solvers import get_solver

    try:
        return tuple(get_solver(solver_name).performance_options)
    except ValueError:  # an unknown name: prepare says so; the hash keeps every option
        return ()


# A mapping key left empty in YAML (``profiles:`` with only commented children) is null:
# read it as an empty mapping. The schema still accepts null, the value is always a dict.
_EmptyIfNull = BeforeValidator(lambda value: {} if value is None else value)


class Axis(Strict):
    """``num`` values from ``low`` to ``high`` inclusive, evenly spaced (linear) or geometric (log)."""

    low: float
    high: float
    num: PositiveInt
    scale: Literal["linear", "log"] = "linear"


class Range(Strict):
    """An interval ``[low, high]`` sampled linearly or on a log scale."""

    low: float
    high: float
    scale: Literal["linear", "log"] = "linear"


class SolverSettings(Strict):
    """Which solver runs each case, with which options and precision."""

    name: str = Field(description="a built-in solver (rte1d, heat1d) or an import path 'package.module:attr'")
    options: Annotated[dict[str, Any] | None, _EmptyIfNull] = Field(
        default_factory=dict, description="solver options (grid, time span, constants); empty or null: defaults"
    )
    dtype: ComputeDtype = "float32"
    python_path: list[str] = Field(default_factory=list, description="directories searched for a user solver")

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if ":" in value and not IMPORT_PATH.match(value):
            raise ValueError(f"expected a solver name or an import path like 'package.module:attr', got {value!r}")
        return value


def _check_names(names) -> None:
    for name in names:
        if not _NAME.match(name):
            raise ValueError(f"parameter name {name!r} is not an identifier; use letters, digits and _")


class GridSweep(Strict):
    """Cartesian product: every combination of the axes' values (last axis fastest)."""

    kind: Literal["grid"]
    axes: Annotated[
        dict[str, list[float] | Axis],
        Fix(
            "give at least one swept parameter with its values, e.g. axes: {alpha: [0.1, 0.5, 1.0]} "
            "or axes: {alpha: {low: 0.1, high: 1.0, num: 8}}"
        ),
    ] = Field(min_length=1, description="name -> values or {low, high, num}")


class ZipSweep(Strict):
    """Cases side by side: the i-th value of every list forms case i."""

    kind: Literal["zip"]
    values: Annotated[
        dict[str, list[float]],
        Fix(
            "give at least one swept parameter with its values (lists of one length), e.g. values: {alpha: [0.1, 0.2]}"
        ),
    ] = Field(min_length=1, description="name -> values, all of one length")


class _Sampled(Strict):
    n: PositiveInt = Field(description="number of cases")
    ranges: Annotated[
        dict[str, tuple[float, float] | Range],
        Fix(
            "give at least one swept parameter with its range, e.g. ranges: {alpha: [0.1, 1.0]} "
            "or ranges: {alpha: {low: 0.1, high: 10.0, scale: log}}"
        ),
    ] = Field(min_length=1, description="name -> [low, high] or {low, high, scale}")
    seed: Annotated[int, Field(ge=0)] = 0


class RandomSweep(_Sampled):
    """Independent uniform samples over the ranges (seeded)."""

    kind: Literal["random"]


class LatinHypercubeSweep(_Sampled):
    """Latin hypercube over the ranges: one case per stratum in every parameter (seeded)."""

    kind: Literal["lhs"]


class SobolSweep(_Sampled):
    """Scrambled Sobol points over the ranges (seeded)."""

    kind: Literal["sobol"]
    scramble: bool = True

    @model_validator(mode="after")
    def _dimensions(self):
        check_sobol(len(self.ranges))  # the limit of Sobol inputs too: one generator
        return self


class ParquetSweep(Strict):
    """Cases from a Parquet table: one row per case, one column per parameter."""

    kind: Literal["parquet"]
    path: str = Field(description="Parquet file (relative to the current directory)")
    columns: list[str] | None = Field(default=None, description="parameter columns (default: all numeric columns)")


class ProductSweep(Strict):
    """Cartesian product of the case tables of several sweeps."""

    kind: Literal["product"]
    sweeps: Annotated[
        list[Sweep],
        Fix("list at least one sweep, e.g. sweeps: [{kind: grid, axes: {alpha: [0.1, 1.0]}}]"),
    ] = Field(min_length=1)


Sweep = Annotated[
    GridSweep | ZipSweep | RandomSweep | LatinHypercubeSweep | SobolSweep | ParquetSweep | ProductSweep,
    Field(discriminator="kind"),
]
ProductSweep.model_rebuild()

ProfileSource = Annotated[ZarrInputs | NpyInputs, Field(discriminator="kind")]


class Reduction(Strict):
    """A scalar of one case's output: ``reduce`` over space of ``output`` at save ``index``."""

    output: str = Field(description="solver output, e.g. T")
    index: int | None = Field(
        default=-1, description="index along the first per-case axis (e.g. save time; -1: last; null: reduce all)"
    )
    reduce: Literal["mean", "sum", "max", "min"] = "mean"


class Sensitivities(Strict):
    """Derivatives of scalar outputs with respect to swept parameters, per case."""

    outputs: Annotated[
        dict[str, Reduction],
        Fix("name at least one scalar output, e.g. outputs: {T_end: {output: T, reduce: mean}}"),
    ] = Field(min_length=1, description="name -> which scalar to differentiate")
    wrt: list[str] | None = Field(default=None, description="swept parameters (default: every swept parameter)")

    @field_validator("outputs")
    @classmethod
    def _names(cls, value):
        _check_names(value)
        return value


def _swept(sweep) -> list[str]:
    if isinstance(sweep, GridSweep):
        return list(sweep.axes)
    if isinstance(sweep, ZipSweep):
        return list(sweep.values)
    if isinstance(sweep, ParquetSweep):
        return list(sweep.columns or [])
    if isinstance(sweep, ProductSweep):
        return [name for part in sweep.sweeps for name in _swept(part)]
    return list(sweep.ranges)


def _names_known(sweep) -> bool:
    if isinstance(sweep, ParquetSweep):
        return sweep.columns is not None
    if isinstance(sweep, ProductSweep):
        return all(_names_known(part) for part in sweep.sweeps)
    return True


class SweepStore(StoreSettings):
    chunk_size: PositiveInt = Field(default=64, description="cases per Zarr chunk")


class SweepJob(Job):
    """A parameter sweep job: a solver run over a table of cases."""

    chunks_per_shard: ClassVar[int] = 1  # a task: one store chunk of cases

    kind: Literal["sweep"]
    solver: SolverSettings
    sweep: Sweep
    fixed: Annotated[dict[str, float] | None, _EmptyIfNull] = Field(
        default_factory=dict, description="parameters held fixed over all cases (empty or null: none)"
    )
    profiles: Annotated[dict[str, ProfileSource] | None, _EmptyIfNull] = Field(
        default_factory=dict,
        description="per-case array parameters, e.g. T0 from a .npy of shape [cases, nx] (empty or null: none)",
    )
    sensitivities: Sensitivities | None = None
    store: SweepStore
    execution: ExecutionSettings = Field(default_factory=ExecutionSettings)

    @field_validator("fixed", mode="before")
    @classmethod
    def _numbers(cls, value):
        for name, number in (value or {}).items() if isinstance(value, dict) else ():
            if isinstance(number, bool):  # YAML's yes/true/on: not 1.0 without a word (1e-3, a string, still reads)
                raise ValueError(f"{name}: {number!r} is not a number; write it as one, e.g. {name}: 1.0")
        return value

    @model_validator(mode="after")
    def _consistent(self):
        swept = set(self.swept_parameters()) if _names_known(self.sweep) else None
        if swept is not None:
            both = sorted(swept & set(self.fixed))
            if both:
                raise ValueError(f"fixed: {both} are also swept; keep each parameter in one place")
            clash = sorted(swept & set(self.profiles))
            if clash:
                raise ValueError(f"profiles: {clash} are also swept; keep each parameter in one place")
        if self.sensitivities is not None and self.sensitivities.wrt and swept is not None:
            unknown = sorted(set(self.sensitivities.wrt) - swept)
            if unknown:
                raise ValueError(f"sensitivities.wrt: {unknown} are not swept parameters; choose from {sorted(swept)}")
        self.check_shard_size()
        return self

    def swept_parameters(self) -> list[str]:
        """Names of the swept parameters, in order (a Parquet table without columns: known from the file)."""
        return _swept(self.sweep)

    @classmethod
    def results_view(cls, data: dict[str, Any]) -> dict[str, Any]:
        """What determines a sweep's results: also not the solver's performance-only options."""
        data = super().results_view(data)
        solver = data.get("solver")
        if isinstance(solver, dict) and isinstance(solver.get("options"), dict):
            for key in performance_options(str(solver.get("name", ""))):
                solver["options"].pop(key, None)
        return data
