"""Sweep case generation: counts, ranges, determinism, stratification, Sobol nets, Parquet."""

from __future__ import annotations

import itertools
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from pipeline import sweeps
from pipeline.sweeps import (
    from_parquet,
    grid,
    latin_hypercube,
    latin_hypercube_points,
    make_cases,
    n_cases,
    product,
    random_uniform,
    sobol,
    sobol_points,
    to_arrow_table,
    zip_cases,
)


def test_module_works_without_torch():
    """pipeline.sweeps with torch made unimportable: every kind but Sobol (torch's engine) builds its cases."""
    code = (
        "import sys; sys.modules['torch'] = None; "
        f"sys.path.insert(0, {str(Path(sweeps.__file__).parents[1])!r}); "
        "import pipeline.sweeps as m; "
        "t = m.make_cases({'kind': 'lhs', 'ranges': {'a': [0, 1]}, 'n': 4}); "
        "assert m.n_cases(t) == 4 and m.to_arrow_table(t).num_rows == 4; "
        "assert m.n_cases(m.make_cases({'kind': 'grid', 'axes': {'a': [1, 2]}}, {'b': 1.0})) == 2"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# -- grid and zip ------------------------------------------------------------------


def test_grid_is_a_cartesian_product_with_the_last_key_fastest():
    table = grid({"a": [1, 2, 3], "b": {"low": 0.0, "high": 1.0, "num": 5}, "c": [10.0, 20.0]})
    assert n_cases(table) == 3 * 5 * 2
    expected = list(itertools.product([1, 2, 3], np.linspace(0, 1, 5), [10.0, 20.0]))
    rows = list(zip(table["a"].tolist(), table["b"].tolist(), table["c"].tolist()))
    assert rows == [tuple(map(float, r)) for r in expected]
    assert table["a"].dtype == np.float64 and table["b"].dtype == np.float64  # values are floats (the model's type)


def test_grid_log_axis_and_single_point():
    table = grid({"d": {"low": 1e-3, "high": 1e-1, "num": 3, "scale": "log"}, "e": {"low": 2, "high": 3, "num": 1}})
    np.testing.assert_allclose(table["d"], [1e-3, 1e-2, 1e-1])
    assert table["e"].tolist() == [2.0, 2.0, 2.0]


@pytest.mark.parametrize(
    "axes,words",
    [
        ({"a": {"low": 2, "high": 1, "num": 3}}, ["sweep grid.axes.a: low must be smaller than high", "swap them"]),
        ({"a": []}, ["sweep grid.axes.a", "non-empty"]),
        ({"case": [1, 2]}, ["sweep grid.axes.case", "reserved for the case index"]),
        ({"a": [1.0, float("nan")]}, ["sweep grid.axes.a", "finite"]),
        ({"a": {"low": -1, "high": 1, "num": 3, "scale": "log"}}, ["log range needs low > 0"]),
    ],
)
def test_grid_errors_name_the_key_and_the_fix(axes, words):
    with pytest.raises(ValueError) as err:
        grid(axes)
    assert not isinstance(err.value, ValidationError)  # the model accepts it; the builder's own check refuses
    for word in words:
        assert word in str(err.value)


@pytest.mark.parametrize(
    "axes,words",
    [
        ({"a": {"low": 0, "high": 1, "num": 0}}, ["axes.a.Axis.num", "greater than 0"]),
        ({"a": ["x", "y"]}, ["axes.a.list[float].0", "valid number"]),
        ({"a": "1,2"}, ["axes.a", "valid list"]),
        ({"a": {"low": 0, "high": 1}}, ["axes.a.Axis.num", "Field required"]),
    ],
)
def test_grid_arguments_are_validated_by_the_model(axes, words):
    with pytest.raises(ValidationError) as err:
        grid(axes)
    for word in words:
        assert word in str(err.value)


def test_zip():
    table = zip_cases({"a": [1.0, 2.0, 3.0], "b": [4, 5, 6]})
    assert n_cases(table) == 3 and table["b"].tolist() == [4, 5, 6]
    with pytest.raises(
        ValueError, match=r"sweep zip.values: all lists must have the same length, got \{'a': 2, 'b': 3\}"
    ):
        zip_cases({"a": [1, 2], "b": [1, 2, 3]})


# -- random designs ------------------------------------------------------------------

RANGES = {"a": [0.0, 1.0], "b": {"low": -5.0, "high": 5.0}, "c": {"low": 1e-2, "high": 1e2, "scale": "log"}}


@pytest.mark.parametrize("design", [random_uniform, latin_hypercube, sobol])
def test_designs_count_range_and_determinism(design):
    table = design(RANGES, n=64, seed=7)
    assert n_cases(table) == 64 and list(table) == ["a", "b", "c"]
    assert ((table["a"] >= 0) & (table["a"] < 1)).all()
    assert ((table["b"] >= -5) & (table["b"] < 5)).all()
    assert ((table["c"] >= 1e-2) & (table["c"] < 1e2)).all()
    # log scale: log10(c) spreads over [-2, 2), so a quarter of the points below 0.1
    assert 8 <= (table["c"] < 0.1).sum() <= 24
    again = design(RANGES, n=64, seed=7)
    other = design(RANGES, n=64, seed=8)
    for k in table:
        np.testing.assert_array_equal(table[k], again[k])
        assert not np.array_equal(table[k], other[k])


@pytest.mark.parametrize(
    "call,words,model",
    [
        (lambda: random_uniform({"a": [0, 1]}, n=0), ["n\n", "greater than 0"], True),
        (lambda: random_uniform({"a": [0, 1]}, n=4, seed=-1), ["seed\n", "greater than or equal to 0"], True),
        (lambda: latin_hypercube({"a": [1, 0]}, n=4), ["sweep lhs.ranges.a", "low must be smaller than high"], False),
        (lambda: latin_hypercube({"a": [0, 1, 2]}, n=4), ["ranges.a", "at most 2 items"], True),
        (lambda: sobol({"a": {"low": 0, "hi": 1}}, n=4), ["ranges.a.Range.hi", "Extra inputs"], True),
        (lambda: sobol({}, n=4), ["ranges\n", "at least 1 item"], True),
        (lambda: sobol({f"p{i}": [0, 1] for i in range(1112)}, n=4), ["at most 1111 dimensions", "Latin"], True),
        (lambda: latin_hypercube({"a": [0, 1]}, n=10**9), ["sweep lhs.n: more than the limit of 100,000,000"], False),
    ],
)
def test_design_errors(call, words, model):
    with pytest.raises(ValueError) as err:
        call()
    assert isinstance(err.value, ValidationError) == model
    for word in words:
        assert word in str(err.value)


def test_sobol_sweeps_take_as_many_parameters_as_sobol_inputs():
    from pipeline import sobol as sequence
    from pipeline.spec import SobolInputs

    table = sobol({f"p{i}": [0, 1] for i in range(sequence.MAX_DIMENSIONS)}, n=2)
    assert len(table) == sequence.MAX_DIMENSIONS
    SobolInputs(kind="sobol", n=2, shape=(sequence.MAX_DIMENSIONS,))
    with pytest.raises(ValidationError, match="at most 1111 dimensions"):
        SobolInputs(kind="sobol", n=2, shape=(sequence.MAX_DIMENSIONS + 1,))


def assert_one_point_per_stratum(unit: np.ndarray) -> None:
    n = unit.shape[0]
    for j in range(unit.shape[1]):
        assert sorted(np.floor(unit[:, j] * n).astype(int).tolist()) == list(range(n))


@given(n=st.integers(1, 200), d=st.integers(1, 6), seed=st.integers(0, 2**32))
@settings(max_examples=40, deadline=None)
def test_latin_hypercube_has_exactly_one_point_per_stratum(n, d, seed):
    unit = latin_hypercube_points(n, d, seed)
    assert unit.shape == (n, d) and (unit >= 0).all() and (unit < 1).all()
    assert_one_point_per_stratum(unit)


def test_latin_hypercube_scaled_keeps_strata():
    table = latin_hypercube({"a": [2.0, 4.0], "b": [-1.0, 0.0]}, n=50, seed=3)
    unit = np.stack([(table["a"] - 2) / 2, table["b"] + 1], axis=1)
    assert_one_point_per_stratum(unit)


# -- Sobol ---------------------------------------------------------------------------


def test_sobol_first_points_are_the_known_sequence():
    points = sobol_points(8, 3, scramble=False)
    np.testing.assert_array_equal(points[:, 0], [0, 0.5, 0.75, 0.25, 0.375, 0.875, 0.625, 0.125])
    np.testing.assert_array_equal(points[:, 1], [0, 0.5, 0.25, 0.75, 0.375, 0.875, 0.125, 0.625])
    np.testing.assert_array_equal(points[:, 2], [0, 0.5, 0.25, 0.75, 0.625, 0.125, 0.875, 0.375])


# Joe & Kuo (2008), new-joe-kuo-6.21201, dimensions 2..21: (degree s, polynomial a, m_1..m_s); dimension 1 is
# the van der Corput sequence in base 2. An implementation of their recurrence, independent of torch's engine.
JOE_KUO = (
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


def joe_kuo_sobol(n: int, d: int, bits: int = 30) -> np.ndarray:
    """The unscrambled Sobol sequence in Gray-code order from the direction-number recurrence."""
    v = np.zeros((d, bits), dtype=np.int64)
    v[0] = 1 << np.arange(bits - 1, -1, -1)
    for j in range(1, d):
        s, a, m = JOE_KUO[j - 1]
        for k in range(bits):
            if k < s:
                v[j, k] = m[k] << (bits - 1 - k)
            else:
                value = v[j, k - s] ^ (v[j, k - s] >> s)
                for i in range(1, s):
                    if (a >> (s - 1 - i)) & 1:
                        value ^= v[j, k - i]
                v[j, k] = value
    index = np.arange(n, dtype=np.int64)
    gray = index ^ (index >> 1)
    points = np.zeros((n, d), dtype=np.int64)
    for k in range(max(1, int(n - 1).bit_length())):
        points ^= ((gray >> k) & 1)[:, None] * v[:, k][None, :]
    return points / float(1 << bits)


def test_sobol_matches_the_joe_kuo_recurrence_unscrambled_in_21_dimensions():
    np.testing.assert_array_equal(sobol_points(2048, 21, scramble=False), joe_kuo_sobol(2048, 21))


@pytest.mark.parametrize("scramble", [False, True])
def test_sobol_points_are_a_function_of_the_index_only(scramble):
    """Any cut of the sequence into pieces (uneven, not powers of 2) gives the same points: fast-forward."""
    from pipeline import sobol as sequence

    whole = sequence.points(0, 1000, 5, seed=11, scramble=scramble)
    for cuts in ([0, 1, 3, 64, 65, 500, 1000], [0, 7, 1000], [0, 999, 1000]):
        pieces = [sequence.points(a, b, 5, seed=11, scramble=scramble) for a, b in itertools.pairwise(cuts)]
        np.testing.assert_array_equal(np.concatenate(pieces), whole)
    if not scramble:
        np.testing.assert_array_equal(whole, joe_kuo_sobol(1000, 5))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_scrambled_sobol_keeps_the_net_property(seed):
    """Dims 1-2 of Sobol form a (0, m, 2)-net: every elementary box of area 2^-m holds one point.

    A linear matrix scramble plus digital shift preserves this, so it must hold for any seed.
    """
    m = 8
    points = sobol_points(2**m, 4, seed=seed)
    assert (points >= 0).all() and (points < 1).all()
    assert_one_point_per_stratum(points)  # every 1-D projection: one point per 1/2^m stratum
    cells = (points[:, :2] * 2**m).astype(np.int64)
    for a in range(m + 1):
        box = (cells[:, 0] >> (m - a)) * 2 ** (m - a) + (cells[:, 1] >> a)
        assert np.bincount(box, minlength=2**m).tolist() == [1] * 2**m


def test_sobol_integrates_better_than_random():
    def integrand(u):  # exact integral over the unit cube: 1
        return np.prod(1 + 0.5 * (u - 0.5) + 0.3 * np.sin(2 * np.pi * u), axis=1)

    n, d = 1024, 5
    sobol_error = abs(integrand(sobol_points(n, d, seed=0)).mean() - 1)
    random_error = np.mean([abs(integrand(np.random.default_rng(s).random((n, d))).mean() - 1) for s in range(8)])
    assert sobol_error < random_error / 5


# -- Parquet, tables, make_cases -----------------------------------------------------


def test_parquet_round_trip(tmp_path):
    table = sobol(RANGES, n=16, seed=1)
    table["k"] = np.arange(16, dtype=np.int64)
    arrow = to_arrow_table(table)
    assert arrow.column_names == ["case", "a", "b", "c", "k"]
    assert arrow.column("case").type == pa.int64()
    path = tmp_path / "cases.parquet"
    pq.write_table(arrow, path)
    back = from_parquet(path)
    assert list(back) == ["a", "b", "c", "k"]
    for k in table:
        np.testing.assert_array_equal(back[k], table[k])
        assert back[k].dtype == table[k].dtype
    only = from_parquet(path, columns=["b"])
    assert list(only) == ["b"]
    # without columns: every numeric column, as the schema says; a label column is left out, not refused
    pq.write_table(arrow.append_column("run", pa.array([f"run{i}" for i in range(16)])), path)
    assert list(from_parquet(path)) == ["a", "b", "c", "k"]


def test_parquet_errors(tmp_path):
    path = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"a": [1.0, None], "s": ["x", "y"], "b": [1.0, 2.0]}), path)
    with pytest.raises(ValueError, match=r"parquet.columns.a: 1 null value"):
        from_parquet(path, columns=["a"])
    with pytest.raises(ValueError, match=r"parquet.columns.s: the column is not numeric"):
        from_parquet(path, columns=["s"])
    with pytest.raises(ValueError, match=r"column\(s\) \['zz'\] are not in the file.*choose from"):
        from_parquet(path, columns=["zz"])
    with pytest.raises(ValueError, match="does not exist"):
        from_parquet(tmp_path / "missing.parquet")
    pq.write_table(pa.table({"a": [1.0, 2.0, float("nan")], "b": [1.0, float("inf"), 3.0]}), path)
    with pytest.raises(ValueError, match=r"parquet.columns.a: 1 value\(s\) not finite \(nan or inf\), first in row 2"):
        from_parquet(path)  # was read as cases, and rte1d's check of every case failed with a traceback
    with pytest.raises(ValueError, match=r"parquet.columns.b: 1 value\(s\) not finite .* row 1, got inf"):
        from_parquet(path, columns=["b"])
    pq.write_table(pa.table({"run": ["x", "y"]}), tmp_path / "labels.parquet")
    with pytest.raises(ValueError, match=r"parquet.columns: no parameter columns to read"):
        from_parquet(tmp_path / "labels.parquet")
    (tmp_path / "text.parquet").write_text("not parquet")
    with pytest.raises(ValueError, match="not a readable Parquet file"):
        from_parquet(tmp_path / "text.parquet")


def test_make_cases_dispatches_every_kind(tmp_path):
    path = tmp_path / "c.parquet"
    pq.write_table(pa.table({"a": [1.0, 2.0, 3.0]}), path)
    specs = {
        "grid": ({"kind": "grid", "axes": {"a": [1, 2], "b": [3, 4, 5]}}, 6),
        "zip": ({"kind": "zip", "values": {"a": [1, 2]}}, 2),
        "random": ({"kind": "random", "ranges": {"a": [0, 1]}, "n": 5, "seed": 1}, 5),
        "lhs": ({"kind": "lhs", "ranges": {"a": [0, 1]}, "n": 6}, 6),
        "sobol": ({"kind": "sobol", "ranges": {"a": [0, 1]}, "n": 8, "scramble": False}, 8),
        "parquet": ({"kind": "parquet", "path": str(path)}, 3),
    }
    for kind, (spec, n) in specs.items():
        assert n_cases(make_cases(spec)) == n, kind
    both = make_cases(
        {
            "kind": "product",
            "sweeps": [specs["zip"][0], {"kind": "grid", "axes": {"b": [7, 8, 9]}}],
            "fixed": {"c": 0.5},
        }
    )
    assert n_cases(both) == 6
    assert both["a"].tolist() == [1, 1, 1, 2, 2, 2] and both["b"].tolist() == [7, 8, 9, 7, 8, 9]
    assert both["c"].tolist() == [0.5] * 6


@pytest.mark.parametrize(
    "spec,words",
    [
        ({"kind": "mesh"}, ["'mesh'", "'grid', 'zip'"]),
        ({"kind": "sobol", "ranges": {"a": [0, 1]}, "n": 4, "sed": 1}, ["sobol.sed", "Extra inputs are not permitted"]),
        ({"kind": "lhs", "ranges": {"a": [0, 1]}}, ["lhs.n", "Field required"]),
        ({"kind": "grid", "axes": {"a": [1]}, "fixed": {"a": 1.0}}, ["fixed.a", "swept already"]),
        ({"kind": "grid", "axes": {"a": [1]}, "fixed": {"b": "x"}}, ["fixed.b", "finite number"]),
        ({"kind": "product", "sweeps": [{"kind": "zip", "values": {"a": [1]}}] * 2}, ["appear in more than one sweep"]),
    ],
)
def test_make_cases_errors(spec, words):
    with pytest.raises(ValueError) as err:
        make_cases(spec)
    for word in words:
        assert word in str(err.value)


def test_table_helpers():
    assert n_cases({}) == 0
    with pytest.raises(ValueError, match="different lengths"):
        n_cases({"a": np.zeros(2), "b": np.zeros(3)})
    assert product({"a": np.array([1, 2])}, {"b": np.array([3.0])})["b"].tolist() == [3.0, 3.0]
    assert to_arrow_table({"a": np.array([1.0])}, index=None).column_names == ["a"]


def test_too_many_cases_are_refused_before_any_is_built():
    # 10**10 cases: a meshgrid of them would need 149 GiB; the count is checked before anything is allocated
    axes = {"a": {"low": 0, "high": 1, "num": 100_000}, "b": {"low": 0, "high": 1, "num": 100_000}}
    with pytest.raises(
        ValueError,
        match=r"sweep grid.axes: 100,000 x 100,000 = 10,000,000,000 cases, more than "
        r"the limit of 100,000,000.*fewer values per axis",
    ):
        grid(axes)
    with pytest.raises(ValueError, match=r"sweep product.sweeps: 20,000 x 20,000 = 400,000,000 cases"):
        make_cases(
            {
                "kind": "product",
                "sweeps": [
                    {"kind": "grid", "axes": {"a": {"low": 0, "high": 1, "num": 20_000}}},
                    {"kind": "random", "ranges": {"b": [0, 1]}, "n": 20_000},
                ],
            }
        )
    assert n_cases(grid({"a": {"low": 0, "high": 1, "num": 10_000}, "b": [1, 2, 3]})) == 30_000  # below: fine
