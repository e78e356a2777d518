"""The last bad inputs: each is exit 2, one line naming the key, the value and the fix, and nothing left behind."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from pipeline.cli import main

ROOT = Path(__file__).resolve().parents[1]

JOB = """schema_version: 1
name: bad
function: {function}
inputs: {inputs}
quantities: [value, jacobian]
store: {{path: {store}, chunk_size: 4}}
execution: {{shard_size: 8}}
"""
MLP = "{kind: mlp, in_features: 2, hidden: [8], out_features: 1}"
UNIFORM = "{kind: uniform, n: 16, shape: [2]}"


def write_job(tmp_path, function=MLP, inputs=UNIFORM, store=None) -> Path:
    job = tmp_path / "job.yaml"
    job.write_text(JOB.format(function=function, inputs=inputs, store=store or tmp_path / "out.zarr"))
    return job


def syntax_error(tmp_path):
    (tmp_path / "broken_fns.py").write_text("def f(x):\n    return x +\n")
    return write_job(tmp_path, function="{kind: import, target: 'broken_fns:f'}"), [
        "function.target",
        "SyntaxError",
        "broken_fns.py, line 2",
        "fix the module",
    ]


def index_error_on_the_probe_samples(tmp_path):
    (tmp_path / "picky_fns.py").write_text(
        "def f(x):\n    if float(x.detach().abs().sum()) > 0:\n        raise IndexError('index 7 is out of bounds')\n"
        "    return (x ** 2).sum()\n"
    )
    return write_job(tmp_path, function="{kind: import, target: 'picky_fns:f'}"), ["function:", "Error"]


def output_shape_that_depends_on_the_sample(tmp_path):
    (tmp_path / "ragged_fns.py").write_text("import torch\n\ndef f(x):\n    return torch.cat([x, x[: int(x[0])]])\n")
    np.save(tmp_path / "x.npy", np.array([[1.0, 1.0], [2.0, 2.0], [1.0, 0.0]]))
    return write_job(
        tmp_path,
        function="{kind: import, target: 'ragged_fns:f'}",
        inputs=f"{{kind: npy, path: {tmp_path / 'x.npy'}}}",
    ), ["function:", "[[3], [4]]", "must not depend on the sample"]


def complex_npy(tmp_path):
    np.save(tmp_path / "z.npy", (np.arange(8.0) + 1j).reshape(4, 2))
    return write_job(tmp_path, inputs=f"{{kind: npy, path: {tmp_path / 'z.npy'}}}"), [
        "inputs.path",
        "complex128",
        "imaginary part",
        "numpy.stack",
    ]


def unrelated_directory(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    return write_job(tmp_path, store=tmp_path / "mine"), ["store.path", "not written by pipeline", "choose another"]


def a_file(tmp_path):
    (tmp_path / "a_file").write_text("keep me")
    return write_job(tmp_path, store=tmp_path / "a_file"), ["store.path", "is a file", "choose another"]


def etc(tmp_path):
    return write_job(tmp_path, store="/etc"), ["store.path: /etc exists", "choose another"]


def too_big_for_the_disk(tmp_path):
    return write_job(tmp_path, inputs="{kind: uniform, n: 1000000000000, shape: [2]}"), [
        "store.path",
        "free",
        "reduce inputs.n",
        "store.check_free_space",
    ]


def past_the_sample_limit(tmp_path):
    return write_job(tmp_path, inputs="{kind: uniform, n: 2199023255552, shape: [2]}"), [
        "inputs.n",
        "1099511627776",
        "2199023255552",
        "split the job",
    ]


def sweep_axis_of_zero_points(tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text(
        "schema_version: 1\nkind: sweep\nname: s\nsolver: {name: heat1d}\nsweep:\n  kind: grid\n"
        f"  axes:\n    alpha: {{low: 0.1, high: 1.0, num: 0}}\nstore: {{path: {tmp_path / 'out.zarr'}}}\n"
    )
    return job, ["sweep.axes.alpha.num", "greater than 0", "(got 0)"]


def duplicate_key_in_the_job_file(tmp_path):
    job = write_job(tmp_path, inputs="\n  kind: uniform\n  n: 16\n  n: 32\n  shape: [2]")
    assert job.read_text().splitlines()[5:7] == ["  n: 16", "  n: 32"]
    return job, ["inputs.n", "given twice", "(lines 6 and 7)", "remove one of them"]


def duplicate_key_in_a_set_value(tmp_path):
    return (
        write_job(tmp_path),
        ["--set 'inputs={kind: uniform, n: 16, n: 32, shape: [2]}'", "inputs.n", "given twice", "remove one"],
        ["--set", "inputs={kind: uniform, n: 16, n: 32, shape: [2]}"],
    )


def brackets_in_a_set_value(tmp_path):
    # the message quotes the value whole: its brackets are not taken for console markup
    return (
        write_job(tmp_path),
        ["--set 'inputs=[a, b'", "not valid YAML", "fix the syntax"],
        ["--set", "inputs=[a, b"],
    )


def yaml_syntax_error(tmp_path):
    job = write_job(tmp_path, inputs="{kind: uniform\n  n: 16, shape: [2]}")
    return job, [f"{job}, line 5, column 4: not valid YAML", "expected ',' or '}'", "fix the syntax"]


def empty_sweep_axes(tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text(
        "schema_version: 1\nkind: sweep\nname: s\nsolver: {name: heat1d}\nsweep: {kind: grid, axes: {}}\n"
        f"store: {{path: {tmp_path / 'out.zarr'}}}\n"
    )
    return job, ["sweep.axes", "needs at least 1 entry", "at least one swept parameter", "e.g. axes: {alpha: ["]


def empty_sweep_ranges(tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text(
        "schema_version: 1\nkind: sweep\nname: s\nsolver: {name: heat1d}\nsweep: {kind: lhs, n: 8, ranges: {}}\n"
        f"store: {{path: {tmp_path / 'out.zarr'}}}\n"
    )
    return job, ["sweep.ranges", "at least one swept parameter", "e.g. ranges: {alpha: [0.1, 1.0]}"]


def float16_compute_dtype(tmp_path):
    return (
        write_job(tmp_path),
        ["derivatives.dtype", "(got 'float16')", "float32 or float64", "set store.dtype: float16"],
        ["--set", "derivatives.dtype=float16"],
    )


def negative_retries(tmp_path):
    return write_job(tmp_path), ["execution.retries", "(got -1)", ">= 0, e.g. 2"], ["--set", "execution.retries=-1"]


def e_notation_in_the_job_file(tmp_path):
    # PyYAML reads 2e3 as text: the message says what to write (a resolver would change old stores' spec hashes)
    return write_job(tmp_path, inputs="{kind: uniform, n: 2e3, shape: [2]}"), ["inputs.n", "'2e3'", "write it as 2000"]


def compression_level_too_high(tmp_path):
    # an upper bound says the bound (not "split the job", which only the sample count's says)
    return (
        write_job(tmp_path),
        ["store.compression_level", "(got 30)", "<= 22"],
        [
            "--set",
            "store.compression=zstd",
            "--set",
            "store.compression_level=30",
        ],
    )


def weighted_laplacian_without_its_factor(tmp_path):
    return (
        write_job(tmp_path),
        ["derivatives.factor", "weighted_laplacian", "set derivatives.factor, e.g. [[1.0, 0.0], [0.0, 1.0]]"],
        ["--set", "quantities=[value, weighted_laplacian]"],
    )


def ragged_weighted_laplacian_factor(tmp_path):
    return (
        write_job(tmp_path),
        ["derivatives.factor", "(got [[1.0, 0.0], [1.0]])", "every row as long"],
        ["--set", "quantities=[weighted_laplacian]", "--set", "derivatives.factor=[[1.0, 0.0], [1.0]]"],
    )


def uniform_low_above_high(tmp_path):
    return (
        write_job(tmp_path, inputs="{kind: uniform, n: 16, shape: [2], low: 5, high: 1}"),
        ["inputs", "low (5.0) must be smaller than high (1.0)", "swap them"],
        [],
    )


def sweep_fixed_parameter_given_as_yes(tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text(
        "schema_version: 1\nkind: sweep\nname: s\nsolver: {name: heat1d}\n"
        "sweep: {kind: grid, axes: {diffusivity: [0.1, 0.2]}}\nfixed: {amplitude: yes}\n"
        f"store: {{path: {tmp_path / 'out.zarr'}}}\n"
    )
    return job, ["fixed", "amplitude: True is not a number", "amplitude: 1.0"]


def storage_options_with_a_local_path(tmp_path):
    """A bucket path written without its scheme (``my-bucket/x.zarr``) wrote a local folder, the options unused."""
    return (
        write_job(tmp_path, store=tmp_path / "my-bucket/out.zarr"),
        ["store.storage_options", "my-bucket/out.zarr' is a local path", "s3://bucket/results.zarr"],
        ["--set", "store.storage_options={client_kwargs: {endpoint_url: 'http://127.0.0.1:9'}}"],
    )


CASES = [
    syntax_error,
    index_error_on_the_probe_samples,
    output_shape_that_depends_on_the_sample,
    complex_npy,
    unrelated_directory,
    a_file,
    etc,
    too_big_for_the_disk,
    past_the_sample_limit,
    sweep_axis_of_zero_points,
    duplicate_key_in_the_job_file,
    duplicate_key_in_a_set_value,
    brackets_in_a_set_value,
    yaml_syntax_error,
    empty_sweep_axes,
    empty_sweep_ranges,
    float16_compute_dtype,
    negative_retries,
    compression_level_too_high,
    e_notation_in_the_job_file,
    weighted_laplacian_without_its_factor,
    ragged_weighted_laplacian_factor,
    uniform_low_above_high,
    sweep_fixed_parameter_given_as_yes,
    storage_options_with_a_local_path,
]


def listing(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): (p.read_bytes() if p.is_file() else b"")
        for p in sorted(folder.rglob("*"))
        if "__pycache__" not in p.parts
    }


@pytest.mark.parametrize("command", ["validate", "submit"])
@pytest.mark.parametrize("case", CASES, ids=[c.__name__ for c in CASES])
def test_a_bad_input_is_one_clean_line(tmp_path, case, command):
    import ray

    job, expected, *extra = case(tmp_path)  # extra: the case's --set arguments
    before = listing(tmp_path)
    ray_before = ray.is_initialized()
    args = [command, str(job), *(extra[0] if extra else [])] + (["--local", "-q"] if command == "submit" else [])
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    output = result.output  # stdout and stderr together
    assert result.exit_code == 2, output
    assert "Traceback" not in output and "error:" in output
    assert "<unicode string>" not in output  # a YAML error names the job file
    problems = [
        line
        for line in output.splitlines()
        if line.startswith("  - ") or (line.startswith("error: ") and "invalid job spec" not in line)
    ]
    assert len(problems) == 1, output  # one line, naming the key ...
    for part in expected:
        assert part in output, (part, output)
    assert listing(tmp_path) == before  # ... and no store, no lock, nothing else
    assert not Path("/etc.lock").exists()
    assert ray.is_initialized() == ray_before  # refused before Ray starts


def test_validate_of_a_huge_job_uses_bounded_memory(tmp_path):
    """1e12 samples: 1.25e11 shards, never built; the planning adds well under 200 MB."""
    job = write_job(tmp_path)
    script = (
        "import resource, sys\n"
        "resource.setrlimit(resource.RLIMIT_AS, (12 * 2**30, 12 * 2**30))  # a runaway dies here, not the machine\n"
        "from click.testing import CliRunner\n"
        "from pipeline.cli import main\n"
        "import pipeline.driver, pipeline.kinds.derivative, pipeline.engine, torch\n"
        f"CliRunner().invoke(main, ['validate', {str(job)!r}, '--set', 'inputs.n=3'])  # warm: imports, first probe\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        f"result = CliRunner().invoke(main, ['validate', {str(job)!r}, '--set', 'inputs.n=1000000000000',"
        " '--set', 'store.check_free_space=false'])\n"
        "after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "print(result.exit_code, (after - before) // 1024)\n"
        "print(result.output)\n"
    )
    run = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    code, growth_mb = map(int, run.stdout.split("\n", 1)[0].split())
    assert code == 0, run.stdout + run.stderr
    assert "125000000000 shards of 8 samples" in run.stdout
    assert growth_mb < 200, growth_mb
    assert not (tmp_path / "out.zarr").exists()


def test_every_bad_input_error_is_a_bad_input_and_keeps_its_old_base():
    """The CLI catches ``BadInput`` (exit 2); callers that catch ValueError / RuntimeError still catch these."""
    from pipeline.errors import BadInput, ClusterError
    from pipeline.models import FunctionError
    from pipeline.runner import ClusterError as RunnerClusterError
    from pipeline.sources import InputError
    from pipeline.spec import SpecError
    from pipeline.storage import StorageError
    from pipeline.store import StoreError
    from pipeline.tasks import NonFiniteError

    assert RunnerClusterError is ClusterError
    for error, base in [
        (SpecError, ValueError),
        (FunctionError, ValueError),
        (InputError, ValueError),
        (StorageError, ValueError),
        (StoreError, RuntimeError),
        (ClusterError, RuntimeError),
    ]:
        assert issubclass(error, BadInput) and issubclass(error, base), error
    assert not issubclass(NonFiniteError, BadInput)  # a shard's failure, not the job's input: exit 1


def test_import_paths_resolve_once_for_functions_and_solvers(tmp_path):
    """``function.target`` and ``solver.name`` name what failed in their own words, from one resolver."""
    from pipeline.imports import ImportPathError, import_object, module_file
    from pipeline.models import FunctionError, import_target
    from pipeline.solvers.registry import get_solver

    (tmp_path / "helper_mod_i8.py").write_text("def f(x):\n    return x\n")
    (tmp_path / "broken_mod_i8.py").write_text("def f(:\n")
    assert import_object("helper_mod_i8:f", [str(tmp_path)]).__name__ == "f"
    assert module_file("helper_mod_i8") == str(tmp_path / "helper_mod_i8.py")
    assert module_file("no_such_module_i8") is None
    with pytest.raises(ImportPathError) as caught:
        import_object("helper_mod_i8:g")
    assert caught.value.reason == "attribute" and caught.value.missing == "g" and "f" in caught.value.public_names()
    with pytest.raises(
        FunctionError, match=r"function.target: 'helper_mod_i8' has no attribute 'g'; available names include \['f'\]"
    ):
        import_target("helper_mod_i8:g")
    with pytest.raises(
        FunctionError, match=r"importing module 'broken_mod_i8' failed: SyntaxError: .*broken_mod_i8.py, line 1"
    ):
        import_target("broken_mod_i8:f", [str(tmp_path)])
    with pytest.raises(FunctionError, match=r"cannot import module 'no_such_module_i8'.*function.python_path"):
        import_target("no_such_module_i8:f")
    with pytest.raises(
        ValueError, match=r"solver 'helper_mod_i8:g': module 'helper_mod_i8' has no attribute 'g'; it has: f"
    ):
        get_solver("helper_mod_i8:g")
    with pytest.raises(ValueError, match=r"solver 'no_such_module_i8:f': cannot import module"):
        get_solver("no_such_module_i8:f")
