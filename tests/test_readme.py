"""The examples of README.md and docs/*.md, taken from the files themselves so that the docs stay honest."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from pipeline.spec import json_schema, validate_spec

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def yaml_blocks() -> list[str]:
    return re.findall(r"```yaml\n(.*?)```", README.read_text(), flags=re.S)


def job_blocks() -> dict[str, str]:
    """The README's complete job files (blocks with a schema_version), by job name."""
    jobs = {}
    for block in yaml_blocks():
        data = yaml.safe_load(block)
        if isinstance(data, dict) and "schema_version" in data:
            jobs[data["name"]] = block
    return jobs


def test_readme_shows_a_derivative_job_and_a_sweep_job():
    kinds = {yaml.safe_load(block).get("kind", "derivatives") for block in job_blocks().values()}
    assert kinds == {"derivatives", "sweep"}


@pytest.mark.parametrize("name", sorted(job_blocks()))
def test_readme_job_validates_as_copied(name):
    """Copied as is, with comments and empty keys (e.g. `profiles:` with only a commented child)."""
    data = yaml.safe_load(job_blocks()[name])
    spec = validate_spec(data, f"README.md ({name})")
    assert spec.name == name
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.validate(data, json_schema())


def test_empty_mapping_keys_of_a_sweep_mean_empty():
    data = yaml.safe_load(job_blocks()["rte-sweep"])
    data.update(fixed=None, profiles=None)
    data["solver"]["options"] = None
    spec = validate_spec(data)
    assert spec.fixed == {} and spec.profiles == {} and spec.solver.options == {}
    without = {k: v for k, v in data.items() if k not in ("fixed", "profiles")}
    without["solver"] = {k: v for k, v in data["solver"].items() if k != "options"}
    assert spec.spec_hash() == validate_spec(without).spec_hash()  # null, {} and absent are one spec


def solver_doc_errors() -> list[str]:
    """The error messages docs/solvers.md shows (the code block after 'Errors are')."""
    text = (ROOT / "docs/solvers.md").read_text()
    block = re.search(r"Errors are .*?```\n(.*?)```", text, flags=re.S).group(1)
    return block.strip().splitlines()


def test_solver_error_examples_are_the_real_messages():
    import torch

    from pipeline.solvers import get_solver, solve

    real = []
    with pytest.raises(ValueError) as bad_option:
        get_solver("rte1d").validate_options({"CFL": 1.5})
    real.append(str(bad_option.value))
    with pytest.raises(ValueError) as bad_shape:
        solve("rte1d", {"T0": torch.ones(4, 399)}, nx=400)
    real.append(str(bad_shape.value))
    assert solver_doc_errors() == real
