"""Parameter sweeps: tables of cases from grids, zips, random / LHS / Sobol designs, Parquet.

The sweep models of a job (``pipeline.spec.sweep``: ``GridSweep``, ``ZipSweep``,
``RandomSweep``, ``LatinHypercubeSweep``, ``SobolSweep``, ``ParquetSweep``,
``ProductSweep``) are validated once, with the job; ``build_cases`` dispatches
on the model's type and adds only the checks a type cannot say (a range's low
below its high, finite values, equal zip lengths, the case limit, a Parquet
file's contents). A *case table* is a plain ``dict[str, numpy.ndarray]`` of
equal-length 1-D columns, one row per case, in the order the solver will see
them. No torch here, except for Sobol points (``pipeline.sobol``).

=========  ==============================================  ==================================
kind       arguments                                       cases
=========  ==============================================  ==================================
grid       ``axes``: name -> list, or {low, high, num}     cartesian product, last key fastest
zip        ``values``: name -> list (equal lengths)        one case per position
random     ``ranges``: name -> [low, high], ``n``, seed    independent uniform draws
lhs        ``ranges``, ``n``, ``seed``                     Latin hypercube: one point per stratum
sobol      ``ranges``, ``n``, ``seed``, ``scramble``       scrambled Sobol (``pipeline.sobol``)
parquet    ``path``, ``columns``                           the rows of a Parquet file
product    ``sweeps``: list of sweeps                      cartesian product of their tables
=========  ==============================================  ==================================

A range is ``[low, high]`` or ``{low, high, scale}`` with ``scale`` ``"linear"``
(default) or ``"log"``; a grid axis ``{low, high, num, scale}`` is a
``linspace`` / ``geomspace``. ``fixed``: name -> number adds constant columns.
From Python, ``make_cases`` also takes a sweep as a dict (validated by the same
models) and the helpers ``grid``, ``zip_cases``, ... take the fields of one kind.
Errors name the sweep key, show the bad value and the fix.

Example:
    >>> table = make_cases({"kind": "grid", "axes": {"a": [1, 2], "b": {"low": 0, "high": 1, "num": 3}}})
    >>> n_cases(table), table["a"].tolist(), table["b"].tolist()
    (6, [1.0, 1.0, 1.0, 2.0, 2.0, 2.0], [0.0, 0.5, 1.0, 0.0, 0.5, 1.0])
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from functools import singledispatch
from pathlib import Path
from typing import Any, TypeAlias

import numpy as np

from . import sobol as sobol_sequence
from .spec.sweep import (
    Axis,
    GridSweep,
    LatinHypercubeSweep,
    ParquetSweep,
    ProductSweep,
    RandomSweep,
    Range,
    SobolSweep,
    Sweep,
    ZipSweep,
)

CaseTable = dict[str, np.ndarray]
SweepModel: TypeAlias = (
    GridSweep | ZipSweep | RandomSweep | LatinHypercubeSweep | SobolSweep | ParquetSweep | ProductSweep
)

INDEX_COLUMN = "case"
MAX_CASES = 100_000_000  # a case table is built whole on the driver: 10**8 cases of one parameter are 800 MB


# -- errors and the checks a type cannot say ------------------------------------------


def _error(key: str, problem: str, value: Any, fix: str) -> ValueError:
    return ValueError(f"sweep {key}: {problem}, got {value!r}; {fix}")


def _is_number(value: Any) -> bool:
    return isinstance(value, (numbers.Real, np.number)) and not isinstance(value, (bool, np.bool_))


def _check_name(key: str, name: str) -> str:
    if not name:
        raise _error(key, "parameter names must be non-empty strings", name, "rename the parameter")
    if name == INDEX_COLUMN:
        raise _error(key, f"{INDEX_COLUMN!r} is reserved for the case index", name, "rename the parameter")
    return name


def _check_count(key: str, n: int) -> int:
    if n > MAX_CASES:
        raise _error(
            key,
            f"more than the limit of {MAX_CASES:,} cases",
            int(n),
            "use fewer cases, or split the sweep into several jobs",
        )
    return n


def _check_total(key: str, sizes: Mapping[str, int]) -> None:
    """Refuse a product of ``sizes`` above ``MAX_CASES`` before any of it is built."""
    total = math.prod(sizes.values())
    if total > MAX_CASES:
        raise _error(
            key,
            f"{' x '.join(f'{v:,}' for v in sizes.values())} = {total:,} cases, more than the limit of {MAX_CASES:,}",
            dict(sizes),
            "use fewer values per axis, or split the sweep into several jobs",
        )


def _values(key: str, values: Sequence[float]) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.size == 0:
        raise _error(key, "expected a non-empty flat list of numbers", list(values), "e.g. [0.5, 1.0, 2.0]")
    if not np.isfinite(array).all():
        raise _error(key, "every value must be finite", list(values), "remove nan and inf")
    return array


def _range(key: str, low: float, high: float, scale: str, shown: Any) -> tuple[float, float, str]:
    example = "use [low, high] or {low: 0.5, high: 2.0, scale: linear|log}"
    if not (math.isfinite(low) and math.isfinite(high)):
        raise _error(key, "low and high must be finite numbers", shown, example)
    if not low < high:
        raise _error(key, "low must be smaller than high", shown, "swap them, or put a constant under fixed:")
    if scale == "log" and low <= 0:
        raise _error(key, "a log range needs low > 0", shown, "use a positive low, or scale: linear")
    return low, high, scale


def _ranges(key: str, ranges: Mapping[str, tuple[float, float] | Range]) -> dict[str, tuple[float, float, str]]:
    parsed = {}
    for name, spec in ranges.items():
        _check_name(f"{key}.{name}", name)
        if isinstance(spec, Range):
            parsed[name] = _range(f"{key}.{name}", spec.low, spec.high, spec.scale, spec.model_dump())
        else:
            parsed[name] = _range(f"{key}.{name}", spec[0], spec[1], "linear", list(spec))
    return parsed


def _scale(unit: np.ndarray, low: float, high: float, scale: str) -> np.ndarray:
    if scale == "log":
        return np.exp(np.log(low) + unit * (np.log(high) - np.log(low)))
    return low + unit * (high - low)


def _from_unit(unit: np.ndarray, ranges: dict[str, tuple[float, float, str]]) -> CaseTable:
    return {name: _scale(unit[:, j], *ranges[name]) for j, name in enumerate(ranges)}


# -- unit-cube designs ---------------------------------------------------------------


def latin_hypercube_points(n: int, d: int, seed: int = 0) -> np.ndarray:
    """``[n, d]`` points in ``[0, 1)``: in every dimension each stratum ``[i/n, (i+1)/n)`` holds one point.

    Example:
        >>> u = latin_hypercube_points(5, 2, seed=0)
        >>> sorted((u[:, 0] * 5).astype(int).tolist())
        [0, 1, 2, 3, 4]
    """
    rng = np.random.default_rng(seed)
    strata = np.stack([rng.permutation(n) for _ in range(d)], axis=1)
    return (strata + rng.random((n, d))) / n


def sobol_points(n: int, d: int, seed: int | None = 0, scramble: bool = True) -> np.ndarray:
    """``[n, d]`` Sobol points in ``[0, 1)``: the first ``n`` of ``pipeline.sobol.points`` (as Sobol inputs).

    With ``scramble`` (default) a linear matrix scramble and a digital shift,
    drawn from ``seed``, randomise the points while keeping their net
    structure: every power-of-two prefix of ``n`` points is balanced. The
    unscrambled sequence starts 0, 1/2, 3/4, 1/4, ...

    Example:
        >>> sobol_points(4, 2, scramble=False).tolist()
        [[0.0, 0.0], [0.5, 0.5], [0.75, 0.25], [0.25, 0.75]]
    """
    return sobol_sequence.points(0, n, d, seed=seed, scramble=scramble)


# -- sweep kinds: one builder per model ------------------------------------------------


@singledispatch
def build_cases(sweep: Any) -> CaseTable:
    """The case table of a validated sweep model (``GridSweep``, ``SobolSweep``, ...).

    Example:
        >>> build_cases(ZipSweep(kind="zip", values={"a": [1, 2]}))["a"].tolist()
        [1.0, 2.0]
    """
    raise TypeError(f"not a sweep model: {type(sweep).__name__}")


@build_cases.register
def _grid(sweep: GridSweep) -> CaseTable:
    sizes = {name: spec.num if isinstance(spec, Axis) else len(spec) for name, spec in sweep.axes.items()}
    _check_total("grid.axes", sizes)
    columns = {}
    for name, spec in sweep.axes.items():
        key = f"grid.axes.{name}"
        _check_name(key, name)
        if isinstance(spec, Axis):
            shown = {"low": spec.low, "high": spec.high, "scale": spec.scale}
            low, high, scale = _range(key, spec.low, spec.high, spec.scale, shown)
            if spec.num == 1:
                columns[name] = np.array([low])
            elif scale == "log":
                columns[name] = np.geomspace(low, high, spec.num)
            else:
                columns[name] = np.linspace(low, high, spec.num)
        else:
            columns[name] = _values(key, spec)
    mesh = np.meshgrid(*columns.values(), indexing="ij")
    return {name: m.reshape(-1) for name, m in zip(columns, mesh)}


@build_cases.register
def _zip(sweep: ZipSweep) -> CaseTable:
    table = {_check_name(f"zip.values.{k}", k): _values(f"zip.values.{k}", v) for k, v in sweep.values.items()}
    lengths = {k: len(v) for k, v in table.items()}
    if len(set(lengths.values())) > 1:
        raise _error(
            "zip.values",
            "all lists must have the same length",
            lengths,
            "make them equal, or use kind: grid for a product",
        )
    return table


@build_cases.register
def _random(sweep: RandomSweep) -> CaseTable:
    parsed = _ranges("random.ranges", sweep.ranges)
    rng = np.random.default_rng(sweep.seed)
    return _from_unit(rng.random((_check_count("random.n", sweep.n), len(parsed))), parsed)


@build_cases.register
def _latin_hypercube(sweep: LatinHypercubeSweep) -> CaseTable:
    parsed = _ranges("lhs.ranges", sweep.ranges)
    n = _check_count("lhs.n", sweep.n)
    return _from_unit(latin_hypercube_points(n, len(parsed), sweep.seed), parsed)


@build_cases.register
def _sobol(sweep: SobolSweep) -> CaseTable:
    parsed = _ranges("sobol.ranges", sweep.ranges)
    n = _check_count("sobol.n", sweep.n)
    return _from_unit(sobol_points(n, len(parsed), sweep.seed, sweep.scramble), parsed)


@build_cases.register
def _parquet(sweep: ParquetSweep) -> CaseTable:
    return from_parquet(sweep.path, sweep.columns)


@build_cases.register
def _product(sweep: ProductSweep) -> CaseTable:
    return product(*(build_cases(part) for part in sweep.sweeps))


# -- the same from Python: dicts and keyword arguments, validated by the models ---------


def parse_sweep(sweep: Mapping[str, Any]) -> SweepModel:
    """A sweep given as a dict (``{"kind": "grid", "axes": ...}``) as its validated model.

    Raises ``pydantic.ValidationError`` (a ``ValueError``) naming the key, e.g. ``sobol.sed``.

    Example:
        >>> parse_sweep({"kind": "sobol", "ranges": {"a": [0, 1]}, "n": 8}).scramble
        True
    """
    from pydantic import TypeAdapter

    return TypeAdapter(Sweep).validate_python(dict(sweep))


def make_cases(sweep: SweepModel | Mapping[str, Any], fixed: Mapping[str, float] | None = None) -> CaseTable:
    """The case table of one sweep (a model, or a dict with a ``kind`` key and optional ``fixed``).

    Example:
        >>> n_cases(make_cases({"kind": "sobol", "ranges": {"a": [0, 1]}, "n": 8, "seed": 3}))
        8
    """
    if isinstance(sweep, Mapping):
        data = dict(sweep)
        fixed = data.pop("fixed", fixed)
        sweep = parse_sweep(data)
    return _with_fixed(build_cases(sweep), fixed)


def grid(axes: Mapping[str, Any]) -> CaseTable:
    """Cartesian product of value lists or ``{low, high, num, scale}`` axes (last key varies fastest).

    Example:
        >>> grid({"a": [1.0, 2.0], "b": [10, 20, 30]})["b"].tolist()
        [10.0, 20.0, 30.0, 10.0, 20.0, 30.0]
    """
    return build_cases(GridSweep.model_validate({"kind": "grid", "axes": axes}))


def zip_cases(values: Mapping[str, Any]) -> CaseTable:
    """One case per position of equal-length lists.

    Example:
        >>> zip_cases({"a": [1.0, 2.0], "b": [3.0, 4.0]})["b"].tolist()
        [3.0, 4.0]
    """
    return build_cases(ZipSweep.model_validate({"kind": "zip", "values": values}))


def random_uniform(ranges: Mapping[str, Any], n: int, seed: int = 0) -> CaseTable:
    """``n`` independent uniform draws over each range (seeded).

    Example:
        >>> t = random_uniform({"a": [0, 1]}, n=3, seed=1)
        >>> t["a"].shape, bool(((t["a"] >= 0) & (t["a"] < 1)).all())
        ((3,), True)
    """
    return build_cases(RandomSweep.model_validate({"kind": "random", "ranges": ranges, "n": n, "seed": seed}))


def latin_hypercube(ranges: Mapping[str, Any], n: int, seed: int = 0) -> CaseTable:
    """``n`` Latin-hypercube cases: each of the ``n`` equal strata of every range holds exactly one case.

    Example:
        >>> latin_hypercube({"a": [0, 10]}, n=5, seed=0)["a"].shape
        (5,)
    """
    return build_cases(LatinHypercubeSweep.model_validate({"kind": "lhs", "ranges": ranges, "n": n, "seed": seed}))


def sobol(ranges: Mapping[str, Any], n: int, seed: int = 0, scramble: bool = True) -> CaseTable:
    """``n`` (scrambled, seeded) Sobol cases over the ranges; best balanced when ``n`` is a power of 2.

    Example:
        >>> sobol({"a": [0, 1], "b": [0, 1]}, n=4, scramble=False)["b"].tolist()
        [0.0, 0.5, 0.25, 0.75]
    """
    return build_cases(
        SobolSweep.model_validate({"kind": "sobol", "ranges": ranges, "n": n, "seed": seed, "scramble": scramble})
    )


def from_parquet(path: str | Path, columns: Sequence[str] | None = None) -> CaseTable:
    """The rows of a Parquet file as cases (numeric, non-null columns; a ``case`` column is dropped).

    Without ``columns`` every integer or floating column is read; other columns (labels) are left out.

    Example:
        >>> import tempfile, os, pyarrow as pa, pyarrow.parquet as pq
        >>> p = os.path.join(tempfile.mkdtemp(), "cases.parquet")
        >>> pq.write_table(pa.table({"a": [1.0, 2.0]}), p)
        >>> from_parquet(p)["a"].tolist()
        [1.0, 2.0]
    """
    import pyarrow.parquet as pq
    from pyarrow import types as pa_types

    from . import storage

    remote = storage.is_remote(path)
    local = Path(path)
    shown = str(path) if remote else str(local)
    if not (storage.isfile(shown) if remote else local.exists()):
        raise _error("parquet.path", "the file does not exist", shown, "check the path")
    source: Callable[[], Any] = lambda: local  # noqa: E731
    if remote:
        import pyarrow as pa

        data = storage.read_bytes(shown)  # a case table: read once, whole
        source = lambda: pa.BufferReader(data)  # noqa: E731
    try:
        schema = pq.read_schema(source())
    except Exception as err:  # pyarrow raises several types for a non-Parquet file
        raise _error("parquet.path", f"not a readable Parquet file ({err})", shown, "check the file") from None
    available = [n for n in schema.names if n != INDEX_COLUMN]
    if columns is None:  # every numeric column: a label column (a run name) is not a parameter
        columns = [
            n
            for n in available
            if pa_types.is_integer(schema.field(n).type) or pa_types.is_floating(schema.field(n).type)
        ]
    else:
        if isinstance(columns, str) or not isinstance(columns, Sequence):
            raise _error("parquet.columns", "expected a list of column names", columns, f"choose from {available}")
        missing = [c for c in columns if c not in schema.names]
        if missing:
            raise _error(
                "parquet.columns", f"column(s) {missing} are not in the file", list(columns), f"choose from {available}"
            )
    if not columns:
        raise _error(
            "parquet.columns", "no parameter columns to read", list(schema.names), "add numeric columns to the file"
        )
    table = pq.read_table(source(), columns=list(columns))
    out: CaseTable = {}
    for name in columns:
        key = f"parquet.columns.{name}"
        column = table.column(name)
        if column.null_count:
            raise _error(key, f"{column.null_count} null value(s)", name, "fill or drop the null rows")
        array = column.to_numpy()
        if array.dtype.kind not in "iuf":
            raise _error(key, f"the column is not numeric ({column.type})", name, "keep only numeric parameter columns")
        out[_check_name(key, name)] = array.astype(np.int64) if array.dtype.kind in "iu" else array.astype(np.float64)
        bad = np.flatnonzero(~np.isfinite(out[name]))
        if len(bad):
            raise _error(
                key,
                f"{len(bad)} value(s) not finite (nan or inf), first in row {bad[0]}",
                float(out[name][bad[0]]),
                "fix or drop those rows",
            )
    if n_cases(out) == 0:
        raise _error("parquet.path", "the file has no rows", shown, "add cases to the file")
    return out


def product(*tables: Mapping[str, np.ndarray]) -> CaseTable:
    """Cartesian product of case tables (the last table varies fastest).

    Example:
        >>> product({"a": np.array([1, 2])}, {"b": np.array([3.0, 4.0, 5.0])})["a"].tolist()
        [1, 1, 1, 2, 2, 2]
    """
    if not tables:
        raise _error("product.sweeps", "needs at least one sweep", [], "list the sweeps to combine")
    seen: set[str] = set()
    for t in tables:
        overlap = seen & set(t)
        if overlap:
            raise _error(
                "product.sweeps",
                f"parameter(s) {sorted(overlap)} appear in more than one sweep",
                sorted(overlap),
                "sweep each parameter once",
            )
        seen |= set(t)
    sizes = [n_cases(t) for t in tables]
    _check_total("product.sweeps", {f"sweeps[{i}]": size for i, size in enumerate(sizes)})
    out: CaseTable = {}
    for i, t in enumerate(tables):
        before, after = int(np.prod(sizes[:i])), int(np.prod(sizes[i + 1 :]))
        for name, column in t.items():
            out[name] = np.tile(np.repeat(np.asarray(column), after), before)
    return out


def _with_fixed(table: CaseTable, fixed: Mapping[str, Any] | None) -> CaseTable:
    if fixed is None:
        return table
    if not isinstance(fixed, Mapping):
        raise _error("fixed", "expected a mapping name -> number", fixed, "e.g. {sigma_amplitude: 0.1}")
    n = n_cases(table)
    out = dict(table)
    for name, value in fixed.items():
        key = f"fixed.{name}"
        _check_name(key, name)
        if name in out:
            raise _error(key, "the parameter is swept already", name, "remove it from fixed or from the sweep")
        if not _is_number(value) or not math.isfinite(value):
            raise _error(key, "expected a finite number", value, "e.g. 0.1")
        out[name] = np.full(n, value, dtype=np.int64 if isinstance(value, numbers.Integral) else np.float64)
    return out


# -- tables --------------------------------------------------------------------------


def n_cases(table: Mapping[str, np.ndarray]) -> int:
    """Number of cases (rows) of a case table; checks the columns are 1-D and equally long.

    Example:
        >>> n_cases({"a": np.zeros(4)})
        4
    """
    lengths = {}
    for name, column in table.items():
        column = np.asarray(column)
        if column.ndim != 1:
            raise _error(f"table.{name}", "columns must be 1-D", column.shape, "give one value per case")
        lengths[name] = column.shape[0]
    if len(set(lengths.values())) > 1:
        raise _error("table", "columns have different lengths", lengths, "give every column one value per case")
    return next(iter(lengths.values()), 0)


def to_arrow_table(table: Mapping[str, np.ndarray], index: str | None = INDEX_COLUMN):
    """The case table as a ``pyarrow.Table``, with the case index as first column ``case``.

    Example:
        >>> to_arrow_table({"a": np.array([0.5, 1.5])}).column_names
        ['case', 'a']
    """
    import pyarrow as pa

    n = n_cases(table)
    columns = {} if index is None else {index: pa.array(np.arange(n, dtype=np.int64))}
    for name, column in table.items():
        if name == index:
            raise _error(f"table.{name}", "the name is reserved for the case index", name, "rename the parameter")
        columns[name] = pa.array(np.asarray(column))
    return pa.table(columns)
