"""Parameter sweeps: tables of cases from grids, zips, random / LHS / Sobol designs, Parquet.

Pure (numpy + pyarrow, no torch): the planner counts cases with it and the
store writes the table beside the arrays. A *case table* is a plain
``dict[str, numpy.ndarray]`` of equal-length 1-D columns, one row per case, in
the order the solver will see them.

Sweep kinds (``make_cases`` takes the same as a dict with a ``kind`` key):

=========  ==============================================  ==================================
kind       arguments                                       cases
=========  ==============================================  ==================================
grid       ``axes``: name -> list, or {low, high, num}     cartesian product, last key fastest
zip        ``values``: name -> list (equal lengths)        one case per position
random     ``ranges``: name -> [low, high], ``n``, seed    independent uniform draws
lhs        ``ranges``, ``n``, ``seed``                     Latin hypercube: one point per stratum
sobol      ``ranges``, ``n``, ``seed``, ``scramble``       scrambled Sobol (<= 21 parameters)
parquet    ``path``, ``columns``                           the rows of a Parquet file
product    ``sweeps``: list of sweeps                      cartesian product of their tables
=========  ==============================================  ==================================

A range is ``[low, high]`` or ``{low, high, scale}`` with ``scale`` ``"linear"``
(default) or ``"log"``; a grid axis ``{low, high, num, scale}`` is a
``linspace`` / ``geomspace``. Any kind also takes ``fixed``: name -> number, a
constant column. Errors name the sweep key, show the bad value and the fix.

Example:
    >>> table = make_cases({"kind": "grid", "axes": {"a": [1, 2], "b": {"low": 0, "high": 1, "num": 3}}})
    >>> n_cases(table), table["a"].tolist(), table["b"].tolist()
    (6, [1, 1, 1, 2, 2, 2], [0.0, 0.5, 1.0, 0.0, 0.5, 1.0])
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

CaseTable = dict[str, np.ndarray]

KINDS = ("grid", "zip", "random", "lhs", "sobol", "parquet", "product")
INDEX_COLUMN = "case"
SOBOL_BITS = 30  # as scipy and torch: up to 2**30 points
SOBOL_MAX_DIM = 21
MAX_CASES = 100_000_000  # a case table is built whole on the driver: 10**8 cases of one parameter are 800 MB

# Joe & Kuo (2008), new-joe-kuo-6.21201, dimensions 2..21: (degree s, polynomial a, m_1..m_s).
# Dimension 1 is the van der Corput sequence in base 2.
_JOE_KUO = (
    (1, 0, (1,)),
    (2, 1, (1, 3)),
    (3, 1, (1, 3, 1)),
    (3, 2, (1, 1, 1)),
    (4, 1, (1, 1, 3, 3)),
    (4, 4, (1, 3, 5, 13)),
    (5, 2, (1, 1, 5, 5, 17)),
    (5, 4, (1, 1, 5, 5, 5)),
    (5, 7, (1, 1, 7, 11, 19)),
    (5, 11, (1, 1, 5, 1, 1)),
    (5, 13, (1, 1, 1, 3, 11)),
    (5, 14, (1, 3, 5, 5, 31)),
    (6, 1, (1, 3, 3, 9, 7, 49)),
    (6, 13, (1, 1, 1, 15, 21, 21)),
    (6, 16, (1, 3, 1, 13, 27, 49)),
    (6, 19, (1, 1, 1, 15, 7, 5)),
    (6, 22, (1, 3, 1, 15, 13, 25)),
    (6, 25, (1, 1, 5, 5, 19, 61)),
    (7, 1, (1, 3, 7, 11, 23, 15, 103)),
    (7, 4, (1, 3, 7, 13, 13, 15, 69)),
)


# -- errors and checks ----------------------------------------------------------------


def _error(key: str, problem: str, value: Any, fix: str) -> ValueError:
    return ValueError(f"sweep {key}: {problem}, got {value!r}; {fix}")


def _is_number(value: Any) -> bool:
    return isinstance(value, (numbers.Real, np.number)) and not isinstance(value, (bool, np.bool_))


def _check_name(key: str, name: Any) -> str:
    if not isinstance(name, str) or not name:
        raise _error(key, "parameter names must be non-empty strings", name, "rename the parameter")
    if name == INDEX_COLUMN:
        raise _error(key, f"{INDEX_COLUMN!r} is reserved for the case index", name, "rename the parameter")
    return name


def _check_count(key: str, n: Any) -> int:
    if not isinstance(n, (numbers.Integral, np.integer)) or isinstance(n, bool) or n < 1:
        raise _error(key, "the number of cases must be an integer >= 1", n, "e.g. n: 64")
    if n > MAX_CASES:
        raise _error(
            key,
            f"more than the limit of {MAX_CASES:,} cases",
            int(n),
            "use fewer cases, or split the sweep into several jobs",
        )
    return int(n)


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


def _axis_size(spec: Any) -> int | None:
    """The number of values of a grid axis, or None when it is malformed (checked when it is built)."""
    if isinstance(spec, Mapping):
        num = spec.get("num")
        return int(num) if isinstance(num, (numbers.Integral, np.integer)) and not isinstance(num, bool) else None
    if isinstance(spec, (Sequence, np.ndarray)) and not isinstance(spec, (str, bytes)):
        return len(spec)
    return None


def _check_seed(key: str, seed: Any) -> int:
    if not isinstance(seed, (numbers.Integral, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise _error(key, "the seed must be an integer >= 0", seed, "e.g. seed: 0 (the same seed gives the same cases)")
    return int(seed)


def _values(key: str, values: Any) -> np.ndarray:
    if isinstance(values, (str, bytes)) or not isinstance(values, (Sequence, np.ndarray)):
        raise _error(key, "expected a list of numbers", values, "e.g. [0.5, 1.0, 2.0]")
    array = np.asarray(values)
    if array.ndim != 1 or array.size == 0:
        raise _error(key, "expected a non-empty flat list of numbers", values, "e.g. [0.5, 1.0, 2.0]")
    if array.dtype.kind not in "iuf":
        raise _error(key, "every value must be a number", values, "remove strings, booleans and nulls")
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise _error(key, "every value must be finite", values, "remove nan and inf")
    return array.astype(np.int64) if array.dtype.kind in "iu" else array.astype(np.float64)


def _range(key: str, spec: Any) -> tuple[float, float, str]:
    example = "use [low, high] or {low: 0.5, high: 2.0, scale: linear|log}"
    if isinstance(spec, Mapping):
        unknown = sorted(set(spec) - {"low", "high", "scale"})
        if unknown:
            raise _error(key, f"unknown range key(s) {unknown}", dict(spec), example)
        if "low" not in spec or "high" not in spec:
            raise _error(key, "a range needs both low and high", dict(spec), example)
        low, high, scale = spec["low"], spec["high"], spec.get("scale", "linear")
    elif isinstance(spec, (Sequence, np.ndarray)) and not isinstance(spec, (str, bytes)) and len(spec) == 2:
        (low, high), scale = spec, "linear"
    else:
        raise _error(key, "expected a range", spec, example)
    if not (_is_number(low) and _is_number(high) and math.isfinite(low) and math.isfinite(high)):
        raise _error(key, "low and high must be finite numbers", spec, example)
    if not low < high:
        raise _error(key, "low must be smaller than high", spec, "swap them, or put a constant under fixed:")
    if scale not in ("linear", "log"):
        raise _error(key, "scale must be 'linear' or 'log'", scale, example)
    if scale == "log" and low <= 0:
        raise _error(key, "a log range needs low > 0", spec, "use a positive low, or scale: linear")
    return float(low), float(high), scale


def _scale(unit: np.ndarray, low: float, high: float, scale: str) -> np.ndarray:
    if scale == "log":
        return np.exp(np.log(low) + unit * (np.log(high) - np.log(low)))
    return low + unit * (high - low)


def _ranges(key: str, ranges: Any) -> dict[str, tuple[float, float, str]]:
    if not isinstance(ranges, Mapping) or not ranges:
        raise _error(key, "expected a mapping name -> range", ranges, "e.g. {T0_mean: [0.5, 2.0]}")
    return {_check_name(f"{key}.{name}", name): _range(f"{key}.{name}", spec) for name, spec in ranges.items()}


def _from_unit(key: str, unit: np.ndarray, ranges: dict[str, tuple[float, float, str]]) -> CaseTable:
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


def _sobol_directions(d: int) -> np.ndarray:
    """Direction numbers ``[d, SOBOL_BITS]`` as integers scaled by ``2**SOBOL_BITS``."""
    v = np.zeros((d, SOBOL_BITS), dtype=np.int64)
    v[0] = 1 << np.arange(SOBOL_BITS - 1, -1, -1)
    for j in range(1, d):
        s, a, m = _JOE_KUO[j - 1]
        for k in range(SOBOL_BITS):
            if k < s:
                v[j, k] = m[k] << (SOBOL_BITS - 1 - k)
            else:
                value = v[j, k - s] ^ (v[j, k - s] >> s)
                for i in range(1, s):
                    if (a >> (s - 1 - i)) & 1:
                        value ^= v[j, k - i]
                v[j, k] = value
    return v


def _linear_matrix_scramble(v: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Left-multiply each dimension's generating matrix by a random unit lower-triangular matrix (GF(2))."""
    d, bits = v.shape
    lower = np.tril(rng.integers(0, 2, size=(d, bits, bits), dtype=np.int64))
    lower[:, np.arange(bits), np.arange(bits)] = 1
    # row r of the matrix as an integer whose bit (bits-1-c) is entry (r, c): bit 0 of a point is its MSB
    weights = 1 << np.arange(bits - 1, -1, -1, dtype=np.int64)
    row_masks = (lower * weights).sum(axis=2)  # [d, bits]
    parity = np.bitwise_count(row_masks[:, :, None] & v[:, None, :]) & 1  # [d, row, direction]
    return (parity * weights[None, :, None]).sum(axis=1)


def sobol_points(n: int, d: int, seed: int | None = 0, scramble: bool = True) -> np.ndarray:
    """``[n, d]`` Sobol points in ``[0, 1)`` (Joe-Kuo directions, Gray-code order).

    With ``scramble`` (default) a linear matrix scramble and a digital shift,
    drawn from ``seed``, randomise the points while keeping their net
    structure: every power-of-two prefix of ``n`` points is balanced. The
    unscrambled sequence starts 0, 1/2, 3/4, 1/4, ... (as scipy and torch).

    Example:
        >>> sobol_points(4, 2, scramble=False).tolist()
        [[0.0, 0.0], [0.5, 0.5], [0.75, 0.25], [0.25, 0.75]]
    """
    if d > SOBOL_MAX_DIM:
        raise ValueError(
            f"sweep sobol: at most {SOBOL_MAX_DIM} parameters are supported, got {d}; use kind: lhs or random for more"
        )
    if n > 1 << SOBOL_BITS:
        raise ValueError(f"sweep sobol: at most 2**{SOBOL_BITS} points, got n={n}")
    v = _sobol_directions(d)
    shift = np.zeros(d, dtype=np.int64)
    if scramble:
        rng = np.random.default_rng(seed)
        v = _linear_matrix_scramble(v, rng)
        shift = rng.integers(0, 1 << SOBOL_BITS, size=d, dtype=np.int64)
    index = np.arange(n, dtype=np.int64)
    gray = index ^ (index >> 1)
    points = np.zeros((n, d), dtype=np.int64)
    for k in range(max(1, int(n - 1).bit_length())):
        points ^= ((gray >> k) & 1)[:, None] * v[:, k][None, :]
    return (points ^ shift) / float(1 << SOBOL_BITS)


# -- sweep kinds ---------------------------------------------------------------------


def grid(axes: Mapping[str, Any]) -> CaseTable:
    """Cartesian product of value lists or ``{low, high, num, scale}`` axes (last key varies fastest).

    Example:
        >>> grid({"a": [1.0, 2.0], "b": [10, 20, 30]})["b"].tolist()
        [10, 20, 30, 10, 20, 30]
    """
    if not isinstance(axes, Mapping) or not axes:
        raise _error(
            "grid.axes",
            "expected a mapping name -> values",
            axes,
            "e.g. {T0_mean: [1, 2], sigma_mean: {low: 0.5, high: 2, num: 4}}",
        )
    sizes = {name: _axis_size(spec) for name, spec in axes.items()}
    if all(size is not None for size in sizes.values()):
        _check_total("grid.axes", sizes)
    columns = {}
    for name, spec in axes.items():
        key = f"grid.axes.{name}"
        _check_name(key, name)
        if isinstance(spec, Mapping):
            example = "e.g. {low: 0.5, high: 2.0, num: 4, scale: linear}"
            unknown = sorted(set(spec) - {"low", "high", "num", "scale"})
            if unknown or "num" not in spec:
                raise _error(key, f"an axis needs low, high and num (unknown: {unknown})", dict(spec), example)
            low, high, scale = _range(key, {k: spec[k] for k in spec if k != "num"})
            num = _check_count(f"{key}.num", spec["num"])
            if num == 1:
                columns[name] = np.array([low])
            else:
                columns[name] = np.geomspace(low, high, num) if scale == "log" else np.linspace(low, high, num)
        else:
            columns[name] = _values(key, spec)
    mesh = np.meshgrid(*columns.values(), indexing="ij")
    return {name: m.reshape(-1) for name, m in zip(columns, mesh)}


def zip_cases(values: Mapping[str, Any]) -> CaseTable:
    """One case per position of equal-length lists.

    Example:
        >>> zip_cases({"a": [1.0, 2.0], "b": [3.0, 4.0]})["b"].tolist()
        [3.0, 4.0]
    """
    if not isinstance(values, Mapping) or not values:
        raise _error("zip.values", "expected a mapping name -> list", values, "e.g. {a: [1, 2], b: [3, 4]}")
    table = {_check_name(f"zip.values.{k}", k): _values(f"zip.values.{k}", v) for k, v in values.items()}
    lengths = {k: len(v) for k, v in table.items()}
    if len(set(lengths.values())) > 1:
        raise _error(
            "zip.values",
            "all lists must have the same length",
            lengths,
            "make them equal, or use kind: grid for a product",
        )
    return table


def random_uniform(ranges: Mapping[str, Any], n: int, seed: int = 0) -> CaseTable:
    """``n`` independent uniform draws over each range (seeded).

    Example:
        >>> t = random_uniform({"a": [0, 1]}, n=3, seed=1)
        >>> t["a"].shape, bool(((t["a"] >= 0) & (t["a"] < 1)).all())
        ((3,), True)
    """
    parsed = _ranges("random.ranges", ranges)
    n = _check_count("random.n", n)
    rng = np.random.default_rng(_check_seed("random.seed", seed))
    return _from_unit("random", rng.random((n, len(parsed))), parsed)


def latin_hypercube(ranges: Mapping[str, Any], n: int, seed: int = 0) -> CaseTable:
    """``n`` Latin-hypercube cases: each of the ``n`` equal strata of every range holds exactly one case.

    Example:
        >>> latin_hypercube({"a": [0, 10]}, n=5, seed=0)["a"].shape
        (5,)
    """
    parsed = _ranges("lhs.ranges", ranges)
    n = _check_count("lhs.n", n)
    return _from_unit("lhs", latin_hypercube_points(n, len(parsed), _check_seed("lhs.seed", seed)), parsed)


def sobol(ranges: Mapping[str, Any], n: int, seed: int = 0, scramble: bool = True) -> CaseTable:
    """``n`` (scrambled, seeded) Sobol cases over the ranges; best balanced when ``n`` is a power of 2.

    Example:
        >>> sobol({"a": [0, 1], "b": [0, 1]}, n=4, scramble=False)["b"].tolist()
        [0.0, 0.5, 0.25, 0.75]
    """
    parsed = _ranges("sobol.ranges", ranges)
    n = _check_count("sobol.n", n)
    if not isinstance(scramble, bool):
        raise _error("sobol.scramble", "expected true or false", scramble, "e.g. scramble: true")
    unit = sobol_points(n, len(parsed), _check_seed("sobol.seed", seed), scramble)
    return _from_unit("sobol", unit, parsed)


def from_parquet(path: str | Path, columns: Sequence[str] | None = None) -> CaseTable:
    """The rows of a Parquet file as cases (numeric, non-null columns; a ``case`` column is dropped).

    Example:
        >>> import tempfile, os, pyarrow as pa, pyarrow.parquet as pq
        >>> p = os.path.join(tempfile.mkdtemp(), "cases.parquet")
        >>> pq.write_table(pa.table({"a": [1.0, 2.0]}), p)
        >>> from_parquet(p)["a"].tolist()
        [1.0, 2.0]
    """
    import pyarrow.parquet as pq

    from . import storage

    remote = storage.is_remote(path)
    path = path if remote else Path(path)
    if not (storage.isfile(path) if remote else path.exists()):
        raise _error("parquet.path", "the file does not exist", str(path), "check the path")
    source = lambda: path  # noqa: E731
    if remote:
        import pyarrow as pa

        data = storage.read_bytes(path)  # a case table: read once, whole
        source = lambda: pa.BufferReader(data)  # noqa: E731
    try:
        schema = pq.read_schema(source())
    except Exception as err:  # pyarrow raises several types for a non-Parquet file
        raise _error("parquet.path", f"not a readable Parquet file ({err})", str(path), "check the file") from None
    available = [n for n in schema.names if n != INDEX_COLUMN]
    if columns is None:
        columns = available
    else:
        if isinstance(columns, str) or not isinstance(columns, Sequence):
            raise _error("parquet.columns", "expected a list of column names", columns, f"choose from {available}")
        missing = [c for c in columns if c not in schema.names]
        if missing:
            raise _error(
                "parquet.columns", f"column(s) {missing} are not in the file", list(columns), f"choose from {available}"
            )
    if not columns:
        raise _error("parquet.columns", "no parameter columns to read", list(schema.names), "add columns to the file")
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
    if n_cases(out) == 0:
        raise _error("parquet.path", "the file has no rows", str(path), "add cases to the file")
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


def make_cases(sweep: Mapping[str, Any]) -> CaseTable:
    """Build the case table of one sweep given as a dict with a ``kind`` key (see the module doc).

    Example:
        >>> n_cases(make_cases({"kind": "sobol", "ranges": {"a": [0, 1]}, "n": 8, "seed": 3}))
        8
    """
    if not isinstance(sweep, Mapping):
        raise _error(
            "",
            "expected a mapping with a kind",
            sweep,
            f"e.g. {{kind: grid, axes: {{...}}}}; kinds: {', '.join(KINDS)}",
        )
    kind = sweep.get("kind")
    allowed = {
        "grid": {"axes"},
        "zip": {"values"},
        "random": {"ranges", "n", "seed"},
        "lhs": {"ranges", "n", "seed"},
        "sobol": {"ranges", "n", "seed", "scramble"},
        "parquet": {"path", "columns"},
        "product": {"sweeps"},
    }
    if kind not in allowed:
        raise _error("kind", "unknown sweep kind", kind, f"use one of {', '.join(KINDS)}")
    args = {k: v for k, v in sweep.items() if k not in ("kind", "fixed")}
    unknown = sorted(set(args) - allowed[kind])
    if unknown:
        raise _error(
            f"{kind}.{unknown[0]}",
            f"unknown key for kind {kind}",
            args[unknown[0]],
            f"allowed keys: {', '.join(sorted(allowed[kind]))}, fixed",
        )
    required = {
        "grid": ["axes"],
        "zip": ["values"],
        "random": ["ranges", "n"],
        "lhs": ["ranges", "n"],
        "sobol": ["ranges", "n"],
        "parquet": ["path"],
        "product": ["sweeps"],
    }[kind]
    for key in required:
        if key not in args:
            raise _error(f"{kind}.{key}", "is required", None, f"add {key}: to the sweep")
    if kind == "grid":
        table = grid(args["axes"])
    elif kind == "zip":
        table = zip_cases(args["values"])
    elif kind == "random":
        table = random_uniform(args["ranges"], args["n"], args.get("seed", 0))
    elif kind == "lhs":
        table = latin_hypercube(args["ranges"], args["n"], args.get("seed", 0))
    elif kind == "sobol":
        table = sobol(args["ranges"], args["n"], args.get("seed", 0), args.get("scramble", True))
    elif kind == "parquet":
        table = from_parquet(args["path"], args.get("columns"))
    else:
        parts = args["sweeps"]
        if isinstance(parts, (str, bytes)) or not isinstance(parts, Sequence) or not parts:
            raise _error(
                "product.sweeps", "expected a list of sweeps", parts, "e.g. [{kind: grid, ...}, {kind: sobol, ...}]"
            )
        table = product(*(make_cases(p) for p in parts))
    return _with_fixed(table, sweep.get("fixed"))


def _with_fixed(table: CaseTable, fixed: Any) -> CaseTable:
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
