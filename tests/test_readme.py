"""The examples of README.md and docs/*.md, taken from the files themselves so that the docs stay honest."""

from __future__ import annotations

import json
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


def test_readme_grid_reshape_recovers_the_grid(tmp_path, monkeypatch):
    """Run the README's grid inputs, then its reshaping snippet, and check it against the grid."""
    import numpy as np

    from pipeline.driver import submit
    from pipeline.runner import InlineExecutor
    from pipeline.spec import load_spec

    grid_line = next(
        line for block in yaml_blocks() for line in block.splitlines() if line.startswith("inputs: {kind: grid")
    )
    snippet = next(
        b for b in re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S) if "results/grid.zarr" in b
    )
    monkeypatch.chdir(tmp_path)
    inputs = yaml.safe_load(grid_line)["inputs"]
    spec = load_spec(
        ROOT / "jobs/quickstart.yaml",
        [
            f"inputs={json.dumps(inputs)}",
            "quantities=[value]",
            "store.path=results/grid.zarr",
            "store.chunk_size=1000",
            "execution.shard_size=1000",
        ],
    )
    assert submit(spec, InlineExecutor()).complete
    names: dict = {}
    exec("import pipeline\n" + snippet, names)
    axes = [np.linspace(a["low"], a["high"], a["num"]) for a in inputs["axes"]]
    np.testing.assert_allclose(names["x0"], axes[0], rtol=1e-6)
    np.testing.assert_allclose(names["x1"], axes[1], rtol=1e-6)
    grid = names["grid"]
    assert grid.value.dims == ("output", "x0", "x1")
    np.testing.assert_array_equal(grid.value.transpose("x0", "x1", "output").values, names["value"])
    # the point at grid index (i, j) is (axes[0][i], axes[1][j])
    np.testing.assert_allclose(grid.inputs.isel(x0=7, x1=3).values, [axes[0][7], axes[1][3]], rtol=1e-6)


def test_the_public_names_show_in_dir_for_tab_completion():
    """`pipeline.<TAB>` in a notebook lists what dir() gives: the lazily imported names too."""
    import pipeline

    assert set(pipeline.__all__) <= set(dir(pipeline))
    assert all(callable(getattr(pipeline, name)) for name in pipeline.__all__)


@pytest.mark.parametrize("doc", ["README.md", "jobs/quickstart.yaml"])
def test_the_method_comment_lists_every_method_a_job_takes(doc):
    from pipeline.engine.api import METHODS

    [comment] = re.findall(r"^\s*method: auto\s*#(.*)$", (ROOT / doc).read_text(), flags=re.M)
    assert {m.strip() for m in comment.split("|")} == set(METHODS)
