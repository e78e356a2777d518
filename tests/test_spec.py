"""Job spec validation: every error names the key path, the value and the fix."""

from __future__ import annotations

import json
from pathlib import Path

import pydantic
import pytest
import yaml

from pipeline.spec import SpecError, apply_overrides, json_schema, load_spec, parse_override, validate_spec

JOBS = Path(__file__).resolve().parents[1] / "jobs"


def base() -> dict:
    return {
        "schema_version": 1,
        "name": "t",
        "function": {"kind": "mlp", "in_features": 2, "hidden": [8], "out_features": 3},
        "inputs": {"kind": "uniform", "n": 100, "shape": [2]},
        "quantities": ["value", "jacobian"],
        "store": {"path": "out.zarr", "chunk_size": 10},
    }


def problems(data) -> list[str]:
    with pytest.raises(SpecError) as info:
        validate_spec(data)
    return info.value.problems


def test_valid_spec_has_defaults():
    spec = validate_spec(base())
    assert spec.derivatives.method == "auto"
    assert spec.shard_size == 40
    assert spec.quantities == ("value", "jacobian")


@pytest.mark.parametrize("job", sorted(JOBS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_job_file_validates(job):
    spec = load_spec(job)
    assert spec.name


def test_unknown_key_names_path_and_allowed_keys():
    data = base()
    data["inputs"]["nn"] = 5
    [line] = problems(data)
    assert line.startswith("inputs.nn: unknown key")
    assert "5" in line and "allowed keys here" in line and "seed" in line


def test_unknown_top_level_key():
    data = base()
    data["quantitites"] = ["value"]
    [line] = problems(data)
    assert line.startswith("quantitites: unknown key") and "quantities" in line


def test_wrong_type_shows_value():
    data = base()
    data["inputs"]["n"] = "many"
    [line] = problems(data)
    assert line.startswith("inputs.n:") and "'many'" in line and "whole number" in line


def test_negative_count():
    data = base()
    data["inputs"]["n"] = -3
    [line] = problems(data)
    assert line.startswith("inputs.n:") and "-3" in line


@pytest.mark.parametrize("kind", ["uniform", "normal", "sobol"])
def test_a_negative_input_seed_is_refused_naming_the_key(kind):
    data = base()
    data["inputs"] = {"kind": kind, "n": 100, "shape": [2], "seed": -1}
    [line] = problems(data)
    assert line.startswith("inputs.seed:") and "(got -1)" in line and "use a whole number >= 0" in line


@pytest.mark.parametrize(
    ("key", "fix"), [("store", "results/<job>.zarr"), ("function", "give the state_dict file, e.g. model.pt")]
)
def test_an_empty_store_path_or_checkpoint_is_refused_naming_the_key(key, fix):
    data = base()  # '' was the current directory as a store, and a checkpoint that silently loaded nothing
    data[key] = {**data[key], "path" if key == "store" else "checkpoint": ""}
    [line] = problems(data)
    assert (
        line.startswith(f"{key}.{'path' if key == 'store' else 'checkpoint'}:") and "(got '')" in line and fix in line
    )


@pytest.mark.parametrize(
    ("key", "value"),
    [("gpus_per_task", float("nan")), ("gpus_per_task", float("inf")), ("cpus_per_task", float("inf"))],
)
def test_nan_or_inf_gpus_or_cpus_per_task_is_refused_naming_the_key(key, value):
    data = {**base(), "execution": {key: value}}  # they validated, and Ray cannot place such a task
    [line] = problems(data)
    assert line.startswith(f"execution.{key}:") and f"(got {value!r})" in line and "finite number" in line


@pytest.mark.parametrize(
    ("section", "key", "value", "fix"),
    [
        ("function", "hidden", "abc", "write a list in brackets"),
        ("store", "chunks", "", "write a mapping in braces, e.g. {key: value}"),
        ("store", "overwrite", [], "use true or false"),
        ("store", "path", 1, "write it as text"),
        ("inputs", "low", [1, 2], "use a number"),
        ("inputs", "n", 1e30, "use a smaller whole number"),
    ],
)
def test_a_value_of_the_wrong_type_says_what_to_write(section, key, value, fix):
    data = base()
    data[section] = {**data[section], key: value}
    [line] = problems(data)
    assert line.startswith(f"{section}.{key}:") and f"(got {value!r})" in line and fix in line


@pytest.mark.parametrize(
    ("inputs", "key", "words"),
    [
        ({"kind": "uniform", "n": 10, "high": float("inf")}, "inputs.high", "(got inf)"),
        ({"kind": "normal", "n": 10, "mean": float("nan")}, "inputs.mean", "(got nan)"),
        ({"kind": "grid", "axes": [{"low": float("nan"), "high": 1, "num": 3}]}, "inputs.axes[0].low", "(got nan)"),
        ({"kind": "grid", "axes": [{"low": 0, "high": float("inf"), "num": 3}]}, "inputs.axes[0].high", "(got inf)"),
        ({"kind": "uniform", "n": 10, "low": -1e308, "high": 1e308}, "inputs", "overflows a float"),
    ],
)
def test_nan_or_inf_bounds_of_generated_inputs_are_refused_naming_the_key(inputs, key, words):
    if inputs["kind"] == "grid":
        inputs = {**inputs, "axes": [*inputs["axes"], {"low": 0, "high": 1, "num": 3}]}  # in_features is 2
    data = {**base(), "inputs": inputs}
    [line] = problems(data)
    assert line.startswith(key) and words in line


def test_bad_kind_lists_choices():
    data = base()
    data["inputs"]["kind"] = "halton"
    [line] = problems(data)
    assert line.startswith("inputs.kind:") and "halton" in line and "sobol" in line


@pytest.mark.parametrize("kind", [["sweep"], {"a": 1}, [], {}])
def test_a_job_kind_that_is_a_list_or_mapping_is_one_line(kind):
    data = {**base(), "kind": kind}
    [line] = problems(data)
    assert line.startswith("kind: unknown job kind") and repr(kind) in line and "derivatives, sweep" in line


def test_bad_import_path():
    data = base()
    data["function"] = {"kind": "import", "target": "mymodule.fn"}
    [line] = problems(data)
    assert line.startswith("function.target:") and "mymodule.fn" in line and "colon" in line


def test_impossible_shapes():
    data = base()
    data["inputs"]["shape"] = [3]
    [line] = problems(data)
    assert "in_features is 2" in line and "[3]" in line


def test_shard_not_multiple_of_chunk():
    data = base()
    data["execution"] = {"shard_size": 15}
    [line] = problems(data)
    assert "shard_size (15)" in line and "chunk_size (10)" in line and "try 20" in line


def test_bad_quantity():
    data = base()
    data["quantities"] = ["value", "hessain"]
    [line] = problems(data)
    assert line.startswith("quantities:") and "hessain" in line and "laplacian" in line


@pytest.mark.parametrize("value", [-1, 0.5, {"value": 1}])
def test_quantities_that_are_not_a_list_are_one_line(value):
    data = {**base(), "quantities": value}
    [line] = problems(data)
    assert (
        line.startswith("quantities:") and "expected a list of quantity names" in line and "[value, jacobian]" in line
    )


def test_quantity_aliases_and_dedup():
    data = base()
    data["quantities"] = ["d1", "jacobian", "d2", "d3"]
    assert validate_spec(data).quantities == ("jacobian", "hessian", "d3")


def test_wrong_schema_version():
    data = base()
    data["schema_version"] = 7
    [line] = problems(data)
    assert line.startswith("schema_version:") and "7" in line


def test_missing_key():
    data = base()
    del data["store"]
    [line] = problems(data)
    assert line.startswith("store: required key is missing")


def test_several_problems_reported_together():
    data = base()
    data["inputs"]["n"] = 0
    data["store"]["chunk_size"] = "big"
    assert len(problems(data)) == 2


def test_overrides_parse_yaml_values():
    assert parse_override("inputs.n=1000") == (["inputs", "n"], 1000)
    assert parse_override("quantities=[value, d3]") == (["quantities"], ["value", "d3"])
    data = apply_overrides(base(), ["inputs.n=7", "derivatives.dtype=float64"])
    spec = validate_spec(data)
    assert spec.inputs.n == 7 and spec.derivatives.dtype == "float64"


def test_override_without_equals_is_an_error():
    with pytest.raises(SpecError, match=r"KEY\.PATH=VALUE"):
        parse_override("inputs.n")


def test_override_into_a_scalar_is_an_error():
    with pytest.raises(SpecError, match="not a mapping"):
        apply_overrides(base(), ["inputs.n.x=1"])


def test_load_spec_resolves_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    job = tmp_path / "jobs" / "j.yaml"
    job.parent.mkdir()
    data = base()
    data["function"] = {"kind": "import", "target": "mod:fn"}
    job.write_text(yaml.safe_dump(data))
    spec = load_spec(job)
    assert spec.store.path == str(tmp_path / "out.zarr")
    assert spec.function.python_path == [str(job.parent)]


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(SpecError, match="does not exist"):
        load_spec(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_spec(bad)


def test_a_key_given_twice_is_refused_at_any_depth_and_merge_keys_still_override(tmp_path):
    from pipeline.spec.yamltext import DuplicateKeyError, load_yaml

    merged = "defaults: &d {n: 1, m: 2}\ninputs:\n  <<: *d\n  n: 3\n"  # a merge key's value may be overridden
    assert load_yaml(merged) == {"defaults": {"n": 1, "m": 2}, "inputs": {"n": 3, "m": 2}}
    # a mapping that overrides a merged key and is itself merged elsewhere (flattened before it is built)
    nested = "b: &B {k: 1}\nx: {y: &A {<<: *B, k: 2}}\nc: {<<: *A}\n"
    assert load_yaml(nested) == yaml.safe_load(nested)
    with pytest.raises(DuplicateKeyError) as info:
        load_yaml(
            "sweep:\n  kind: product\n  sweeps:\n    - {kind: grid}\n    - {kind: zip, values: {a: [1], a: [2]}}\n"
        )
    assert info.value.path == ["sweep", "sweeps", "[1]", "values", "a"] and info.value.lines == (5, 5)
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(base(), sort_keys=False) + "name: again\n")
    last = len(job.read_text().splitlines())
    with pytest.raises(SpecError) as caught:
        load_spec(job)
    assert caught.value.problems == [
        f"name: the key is given twice in {job} (lines 2 and {last}) and YAML would silently keep the last; "
        "remove one of them"
    ]


def test_hash_ignores_execution_but_not_function():
    a = validate_spec(base())
    data = base()
    data["execution"] = {"shard_size": 50, "retries": 5}
    assert validate_spec(data).spec_hash() == a.spec_hash()
    data["function"]["seed"] = 1
    assert validate_spec(data).spec_hash() != a.spec_hash()


def test_spec_is_frozen():
    spec = validate_spec(base())
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        spec.name = "x"


def test_json_schema_lists_kinds():
    text = json.dumps(json_schema())
    for word in ("uniform", "sobol", "grid", "zarr", "parquet", "npy", "mlp", "import"):
        assert word in text


def test_hash_ignores_the_name_and_rte1d_performance_options_but_not_its_physics():
    from pipeline.spec import spec_differences

    a = validate_spec(base())
    data = base()
    data["name"] = "another-name"
    assert validate_spec(data).spec_hash() == a.spec_hash()
    sweep = {
        "schema_version": 1,
        "name": "s",
        "kind": "sweep",
        "store": {"path": "s.zarr"},
        "solver": {"name": "rte1d", "options": {"nx": 32}},
        "sweep": {"kind": "grid", "axes": {"T0_mean": [1.0]}},
    }
    plain = validate_spec(sweep)
    sweep["solver"]["options"] = {"nx": 32, "compile": False, "block_cases": 8, "stability_check": False}
    assert validate_spec(sweep).spec_hash() == plain.spec_hash()
    sweep["solver"]["options"]["nx"] = 64
    assert validate_spec(sweep).spec_hash() != plain.spec_hash()
    assert spec_differences(plain.resolved(), validate_spec(sweep).resolved()) == ["solver.options.nx: 32 -> 64"]


@pytest.mark.parametrize("job", sorted(JOBS.glob("*.yaml")), ids=lambda p: p.name)
def test_json_schema_validates_every_job_file(job):
    """`pipeline schema` is usable as is: every $ref resolves and each job in jobs/ is valid under it."""
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads(json.dumps(json_schema()))  # what `pipeline schema` prints
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.validate(yaml.safe_load(job.read_text()), schema)


@pytest.mark.parametrize(
    "change",
    [
        lambda d: d["inputs"].update(colour="red"),  # unknown key
        lambda d: d["inputs"].update(kind="gaussian"),  # unknown kind
        lambda d: d["function"].update(activation="swish"),  # not one of the choices
        lambda d: d["store"].pop("path"),  # required key missing
    ],
    ids=["unknown-key", "unknown-kind", "bad-choice", "missing-key"],
)
def test_json_schema_rejects_a_bad_job(change):
    jsonschema = pytest.importorskip("jsonschema")
    data = base()
    jsonschema.validate(data, json_schema())
    change(data)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(data, json_schema())


def test_error_paths_and_allowed_keys_are_read_off_the_models_of_a_new_kind(monkeypatch):
    """A kind and tagged variants that exist only in this test: the messages name their key paths and keys."""
    from typing import Annotated, Literal

    from pydantic import Field

    from pipeline import kinds
    from pipeline.spec import ExecutionSettings, Job, StoreSettings, Strict

    class Shelf(Strict):
        kind: Literal["shelf"]
        width: int

    class Crate(Strict):
        kind: Literal["crate"]
        depth: int = 1
        slots: dict[str, list[float] | Shelf] = Field(default_factory=dict)

    Box = Annotated[Shelf | Crate, Field(discriminator="kind")]

    class WarehouseJob(Job):
        kind: Literal["warehouse"]
        boxes: list[Box]
        store: StoreSettings
        execution: ExecutionSettings = Field(default_factory=ExecutionSettings)

    monkeypatch.setitem(
        kinds.KINDS,
        "warehouse",
        kinds.Kind(
            "warehouse", WarehouseJob, "boxes", "box", "boxes", 1, "none", "code.target", "none:labels", "none:report"
        ),
    )
    data = {
        "schema_version": 1,
        "name": "w",
        "kind": "warehouse",
        "store": {"path": "w.zarr"},
        "boxes": [
            {"kind": "shelf", "width": 2},
            {"kind": "crate", "dept": 3, "slots": {"a": [1.0, "x"], "b": {"kind": "shelf", "width": 1, "hight": 2}}},
            {"kind": "drawer"},
        ],
    }
    found = sorted(problems(data))
    assert found[0] == (
        "boxes[1].dept: unknown key (value 3); remove it or fix its spelling; allowed keys here: depth, kind, slots"
    )
    assert found[1] == (
        "boxes[1].slots.a: Input should be a valid dictionary or instance of Shelf (got [1.0, 'x']); "
        "write a mapping of its keys in braces (see `pipeline schema`)"
    )
    assert found[2].startswith("boxes[1].slots.a[1]: Input should be a valid number")
    assert found[3] == (
        "boxes[1].slots.b.hight: unknown key (value 2); remove it or fix its spelling; allowed keys here: kind, width"
    )
    assert found[4] == "boxes[2].kind: unknown kind 'drawer'; use one of 'shelf', 'crate'"
    assert len(found) == 5  # the list member's complaint about the mapping at slots.b is left out
    assert "warehouse" in problems({**data, "kind": "shed"})[0]  # the registry names the new kind


def test_a_top_level_key_written_one_level_down_says_to_move_it():
    """docs/solvers.md's constant columns: `fixed:` inside `sweep:` is the job's top-level `fixed:`."""
    data = yaml.safe_load((JOBS / "sweep.yaml").read_text())
    data["sweep"]["fixed"] = data.pop("fixed")
    [line] = problems(data)
    assert line.startswith("sweep.fixed: unknown key here") and "top level of the job file: move it there" in line


@pytest.mark.parametrize("value", [float("nan"), float("inf"), {"inner": [1.0, float("-inf")]}])
def test_a_function_kwarg_that_is_not_finite_is_refused_naming_it(value):
    # validate passed, then every shard failed: the job reaches the workers as JSON, where nan and inf are null
    data = base()
    data["function"] = {"kind": "import", "target": "m:f", "kwargs": {"scale": value, "ok": 1.5}}
    with pytest.raises(SpecError, match=r"function\.kwargs: scale.* is -?(nan|inf): .*give a finite number"):
        validate_spec(data)
    data["function"]["kwargs"] = {"scale": 2.0, "ok": [1.0, {"x": 3}]}
    assert validate_spec(data).function.kwargs["scale"] == 2.0
