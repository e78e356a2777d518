"""The CLI as a user runs it: every job file, validation exit codes, inspect and status."""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path

import pytest
import xarray as xr
from click.testing import CliRunner

from pipeline.cli import main

ROOT = Path(__file__).resolve().parents[1]
JOBS = sorted((ROOT / "jobs").glob("*.yaml"))
SMALL_SWEEP = [
    "--set",
    "solver.options={nx: 64, n_angles: 4, t_end: 0.25, save_every: 5}",  # stability factor < 1.5
    "--set",
    "sweep.axes={T0_mean: [1.0, 2.0], sigma_mean: [0.5, 1.0, 2.0], T0_phase: [0.0]}",
    "--set",
    "store.chunk_size=2",
    "--set",
    "execution.shard_size=4",
]


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def small_overrides(job: Path) -> tuple[list[str], int]:
    """Overrides that make a job small, and its number of samples (or cases) then."""
    text = job.read_text()
    if "kind: sweep" in text and "kind: grid" in text:
        return SMALL_SWEEP, 6
    if "kind: sweep" in text:
        return [
            "--set",
            "solver.options={nx: 64, t_end: 0.25, save_every: 5}",
            "--set",
            "sweep.n=6",
            "--set",
            "store.chunk_size=2",
            "--set",
            "execution.shard_size=4",
        ], 6
    if job.name == "from_store.yaml":
        return ["--set", "store.chunk_size=100", "--set", "execution.shard_size=200"], 600
    if "kind: grid" in text:  # a grid of inputs: 30 x 20 points
        return [
            "--set",
            "inputs.axes.0.num=30",
            "--set",
            "inputs.axes.1.num=20",
            "--set",
            "store.chunk_size=100",
            "--set",
            "execution.shard_size=200",
        ], 600
    return ["--set", "inputs.n=600", "--set", "store.chunk_size=100", "--set", "execution.shard_size=200"], 600


@pytest.fixture(scope="module")
def quickstart_store(tmp_path_factory, ray_cluster):
    """The quickstart job run through the CLI on local Ray, as the README says."""
    folder = tmp_path_factory.mktemp("cli")
    store = folder / "quickstart.zarr"
    result = run(
        "submit",
        ROOT / "jobs/quickstart.yaml",
        "--local",
        "--set",
        "inputs.n=600",
        "--set",
        f"store.path={store}",
        "--set",
        "store.chunk_size=100",
        "--set",
        "execution.shard_size=200",
    )
    assert result.exit_code == 0, result.output
    return store


@pytest.mark.parametrize("job", JOBS, ids=lambda p: p.name)
def test_every_job_runs_through_the_cli(job, quickstart_store, tmp_path):
    overrides, n = small_overrides(job)
    args = ["submit", job, "--local", "--quiet", "--set", f"store.path={tmp_path / 'out.zarr'}", *overrides]
    if job.name == "from_store.yaml":
        args += ["--set", f"inputs.path={quickstart_store}"]
    result = run(*args)
    assert result.exit_code == 0, result.output
    assert "complete" in result.output
    ds = xr.open_zarr(str(tmp_path / "out.zarr"))
    axis = "case" if ds.attrs["kind"] == "sweep" else "sample"
    assert ds.attrs["complete"] is True and ds.sizes[axis] == n
    for name in ds.data_vars:
        assert ds[name].dims[0] == axis and not ds[name].isnull().any(), name


def test_submit_again_resumes_and_does_nothing(quickstart_store):
    result = run(
        "submit",
        ROOT / "jobs/quickstart.yaml",
        "--local",
        "--set",
        "inputs.n=600",
        "--set",
        f"store.path={quickstart_store}",
        "--set",
        "store.chunk_size=100",
        "--set",
        "execution.shard_size=200",
    )
    assert result.exit_code == 0 and "0 shards run" in result.output and "already committed" in result.output


def test_validate_good_and_bad(tmp_path):
    ok = run("validate", ROOT / "jobs/quickstart.yaml")
    assert ok.exit_code == 0 and "valid: quickstart" in ok.output and "shards" in ok.output
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "schema_version: 1\nname: b\nfunction: {kind: mlp, in_features: 2, out_features: 3}\n"
        "inputs: {kind: uniform, n: 10, shape: [2], colour: red}\nstore: {path: " + str(tmp_path / "s.zarr") + "}\n"
    )
    result = run("validate", bad)
    assert result.exit_code == 2
    assert "inputs.colour: unknown key" in result.output and "'red'" in result.output
    assert not (tmp_path / "s.zarr").exists()


def test_validate_tells_the_size_of_the_results():
    result = run("validate", ROOT / "jobs/seed000.yaml")
    # 100,000 samples x (2 inputs + 150 values + 150 x 2 jacobian + 150 x 2 x 2 hessian) x 4 bytes
    assert result.exit_code == 0
    assert f"results: {100_000 * (2 + 150 + 300 + 600) * 4 / 2**20:.1f} MiB before compression" in result.output


def test_submit_bad_spec_exits_2_and_writes_nothing(tmp_path):
    store = tmp_path / "s.zarr"
    result = run(
        "submit",
        ROOT / "jobs/quickstart.yaml",
        "--executor",
        "inline",
        "--set",
        f"store.path={store}",
        "--set",
        "inputs.shape=[3]",
    )
    assert result.exit_code == 2 and "in_features is 2" in result.output
    assert not store.exists() and not list(tmp_path.iterdir())


def test_bad_import_path_exits_2_and_writes_nothing(tmp_path):
    store = tmp_path / "s.zarr"
    result = run(
        "submit",
        ROOT / "jobs/user_function.yaml",
        "--executor",
        "inline",
        "--set",
        f"store.path={store}",
        "--set",
        "function.target=user_functions:nope",
    )
    assert result.exit_code == 2 and "has no attribute 'nope'" in result.output
    result = run(
        "submit",
        ROOT / "jobs/user_function.yaml",
        "--executor",
        "inline",
        "--set",
        f"store.path={store}",
        "--set",
        "function.target=no_such_module:f",
    )
    assert result.exit_code == 2 and "cannot import module 'no_such_module'" in result.output
    assert not list(tmp_path.iterdir())


def test_function_that_fails_on_samples_exits_2(tmp_path):
    store = tmp_path / "s.zarr"
    result = run(
        "submit",
        ROOT / "jobs/user_function.yaml",
        "--executor",
        "inline",
        "--set",
        f"store.path={store}",
        "--set",
        "inputs.shape=[2, 3]",
    )
    assert result.exit_code == 2 and "function:" in result.output and "[2, 3]" in result.output
    assert not store.exists()


def test_without_cluster_address_explains_local(monkeypatch):
    from pipeline.runner import ClusterError, cluster_address

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with pytest.raises(ClusterError, match="pass --local"):
        cluster_address(None)
    assert cluster_address("10.0.0.1:6379") == "10.0.0.1:6379"
    monkeypatch.setenv("RAY_ADDRESS", "head:6379")
    assert cluster_address(None) == "head:6379"


def test_inspect_and_status(quickstart_store):
    result = run("inspect", quickstart_store)
    assert result.exit_code == 0
    for word in ("complete", "hessian", "laplacian", "float32", "shards: 3 done", "samples/s"):
        assert word in result.output, word
    # the per-shard overhead from the manifest's timeline: the gaps between each worker's consecutive
    # shards, plus each shard's time outside its own seconds
    from pipeline.store import read_manifest

    rows = read_manifest(quickstart_store).to_pylist()
    gaps = []
    for worker in {r["worker"] for r in rows}:
        mine = sorted((r for r in rows if r["worker"] == worker), key=lambda r: r["started"])
        gaps += [b["started"] - a["finished"] for a, b in itertools.pairwise(mine)]
    text = " ".join(result.output.split())  # rich wraps long lines
    workers = len({r["worker"] for r in rows})
    assert re.search(rf"workers: {workers} process(es)?, busy [0-9%-]+ of their span; per-shard overhead ", text), text
    if gaps:  # 3 shards on at most 2 workers: one ran two
        outside = sum(max(0.0, r["finished"] - r["started"] - r["seconds"]) for r in rows) / len(rows)
        shown = float(re.search(r"per-shard overhead ([0-9.]+) ms", text).group(1))
        assert abs(shown - (sum(gaps) / len(gaps) + outside) * 1e3) <= 0.051
    else:
        assert "per-shard overhead not measured (no worker ran two shards)" in text
    status = run("status", quickstart_store, "--json")
    assert status.exit_code == 0
    assert json.loads(status.output) == {
        "path": str(quickstart_store),
        "name": "quickstart",
        "complete": True,
        "shards": 3,
        "done": 3,
        "failed": 0,
        "pending": 0,
        "samples_done": 600,
        "samples": 600,
        "unit": "samples",
        "failed_shards": [],
        "pending_shards": [],
        "state": "complete",
        "driver": None,
    }


def test_status_of_missing_store(tmp_path):
    result = run("status", tmp_path / "nothing.zarr")
    assert result.exit_code == 2 and "not a pipeline store: it does not exist" in result.output


def test_schema_and_help():
    schema = run("schema")
    assert schema.exit_code == 0
    kinds = [m["properties"]["kind"] for m in json.loads(schema.output)["oneOf"]]
    assert {k.get("const", k.get("default")) for k in kinds} == {"derivatives", "sweep"}
    helptext = run("submit", "--help").output
    for word in ("--local", "--address", "--set", "--executor", "inline", "resumes"):
        assert word in helptext


def test_overwrite_leaves_a_directory_that_is_not_a_store_alone(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    (results / "thesis.tex").write_text("years of work")
    result = run(
        "submit",
        ROOT / "jobs/quickstart.yaml",
        "--executor",
        "inline",
        "--quiet",
        "--set",
        "inputs.n=100",
        "--set",
        f"store.path={results}",
        "--overwrite",
    )
    assert result.exit_code == 2, result.output
    assert "left untouched" in result.output and "choose another store.path" in result.output
    assert "--overwrite" not in result.output
    assert [p.name for p in results.iterdir()] == ["thesis.tex"]


def test_gpus_the_cluster_lacks_exit_2_and_leave_no_store(tmp_path, ray_cluster):
    store = tmp_path / "s.zarr"
    result = run(
        "submit",
        ROOT / "jobs/quickstart.yaml",
        "--local",
        "--quiet",
        "--set",
        "inputs.n=100",
        "--set",
        f"store.path={store}",
        "--set",
        "execution.gpus_per_task=1000",
    )
    assert result.exit_code == 2, result.output
    assert "execution.gpus_per_task is 1000" in result.output
    assert not store.exists() and not list(tmp_path.iterdir())


def small_inline_quickstart(store) -> list:
    """`pipeline submit` arguments of a 100-sample quickstart job in this process, writing ``store``."""
    return [
        "submit",
        ROOT / "jobs/quickstart.yaml",
        "--executor",
        "inline",
        "--quiet",
        "--set",
        "inputs.n=100",
        "--set",
        f"store.path={store}",
    ]


def test_resume_notes_a_kept_codec_and_a_replaced_store(tmp_path):
    store = tmp_path / "s.zarr"
    args = small_inline_quickstart(store)
    assert run(*args).exit_code == 0
    result = run(*args, "--set", "store.compression=zstd", "--set", "name=renamed")
    assert result.exit_code == 0 and "0 shards run" in result.output, result.output
    assert "keeps its codec auto" in result.output and "--overwrite" in result.output
    assert "keeps its job name 'quickstart'" in result.output
    result = run(*args, "--set", "store.overwrite=true")
    assert result.exit_code == 0 and "1 shard run" in result.output, result.output
    assert "replaced the existing store" in result.output and "store.overwrite: true" in result.output
    result = run(*args, "--overwrite")
    assert "replaced the existing store" in result.output and "(--overwrite)" in result.output
    assert result.output.index("deleting its old results first") < result.output.index("replaced the existing store")


def test_a_replaced_store_is_announced_before_its_old_results_go(tmp_path):
    """A large store's deletion takes a while (0.3-0.5 s per GB): the user hears of it before, not only after."""
    from pipeline.driver import open_store, prepare, submit
    from pipeline.runner import InlineExecutor
    from pipeline.spec import load_spec

    store = tmp_path / "s.zarr"
    spec = load_spec(ROOT / "jobs/quickstart.yaml", ["inputs.n=100", f"store.path={store}"])
    submit(spec, InlineExecutor())
    old = sorted(p for p in (store / "_shards").iterdir())
    assert old
    heard = []
    opened = open_store(prepare(spec), overwrite=True, notify=lambda m: heard.append((m, all(p.exists() for p in old))))
    assert heard == [(f"replacing the existing store at {store} (--overwrite): deleting its old results first", True)]
    assert not any(p.exists() for p in old)  # and then they went: the store was replaced
    assert any("replaced the existing store" in note for note in opened.notes)


def test_another_spec_names_the_keys_that_differ(tmp_path):
    store = tmp_path / "s.zarr"
    args = small_inline_quickstart(store)
    assert run(*args).exit_code == 0
    result = run(*args, "--set", "derivatives.dtype=float64", "--set", "inputs.seed=3")
    assert result.exit_code == 2
    assert "derivatives.dtype: float32 -> float64" in result.output and "inputs.seed: 0 -> 3" in result.output
    assert "pass --overwrite" in result.output and "store.path" in result.output


def test_string_parquet_column_exits_2_naming_the_key(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"x": [1.0, 2.0, 3.0], "s": ["a", "b", "c"]}), tmp_path / "pts.parquet")
    store = tmp_path / "s.zarr"
    for command in ("validate", "submit"):
        result = run(
            command,
            ROOT / "jobs/quickstart.yaml",
            *(["--executor", "inline"] if command == "submit" else []),
            "--set",
            f"store.path={store}",
            "--set",
            f"inputs={{kind: parquet, path: {tmp_path / 'pts.parquet'}, columns: [x, s]}}",
        )
        assert result.exit_code == 2, result.output
        assert "inputs.columns: column 's'" in result.output and "type string" in result.output
        assert not store.exists()


def _unwritable_store_paths(tmp_path):
    (tmp_path / "a_file").write_text("not a directory")
    paths = [
        (tmp_path / "a_file" / "x.zarr", "is a file, not a directory"),
        (tmp_path / "a_file" / "deeper" / "x.zarr", "is a file, not a directory"),
    ]
    if Path("/proc/self").is_dir():  # Linux: /proc and /sys take no new directories, even as root
        paths += [(Path("/proc/foo.zarr"), "/proc is not writable"), (Path("/sys/x.zarr"), "/sys is not writable")]
    return paths


@pytest.mark.parametrize("command", ["validate", "submit"])
def test_unwritable_store_path_exits_2_naming_store_path(tmp_path, command):
    for store, reason in _unwritable_store_paths(tmp_path):
        result = run(
            command,
            ROOT / "jobs/quickstart.yaml",
            *(["--executor", "inline"] if command == "submit" else []),
            "--set",
            f"store.path={store}",
            "--set",
            "inputs.n=200",
        )
        assert result.exit_code == 2, result.output
        assert f"store.path: cannot create {store}" in result.output and reason in result.output, result.output
        assert not store.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]  # the write probe leaves nothing behind


def test_store_path_in_new_folders_is_fine_and_probing_leaves_nothing(tmp_path):
    from pipeline.driver import check_store_path

    check_store_path(tmp_path / "new" / "deeper" / "x.zarr")
    check_store_path(tmp_path)  # an existing directory (a store to resume) is probed inside too
    assert list(tmp_path.iterdir()) == []


def test_huge_sweep_grid_exits_2_naming_the_axes(tmp_path):
    store = tmp_path / "s.zarr"
    result = run(
        "submit",
        ROOT / "jobs/sweep.yaml",
        "--executor",
        "inline",
        "--set",
        f"store.path={store}",
        "--set",
        "sweep.axes={T0_mean: {low: 0.5, high: 2, num: 100000}, sigma_mean: {low: 0.5, high: 2, num: 100000}}",
    )
    assert result.exit_code == 2, result.output
    assert "sweep.axes: 100,000 x 100,000 = 10,000,000,000 cases" in result.output
    assert not store.exists()


@pytest.mark.parametrize("command", ["inspect", "status"])
def test_a_path_inside_a_store_or_a_plain_zarr_group_exits_2(quickstart_store, tmp_path, command):
    import zarr

    result = run(command, quickstart_store / "value")
    assert result.exit_code == 2, result.output
    assert (
        f"{quickstart_store / 'value'} is a Zarr array inside the pipeline store {quickstart_store}; "
        f"give the store's own path"
    ) in result.output
    zarr.open_group(str(tmp_path / "plain.zarr"), mode="w").create_array("a", shape=(3,), dtype="f8")
    result = run(command, tmp_path / "plain.zarr")
    assert result.exit_code == 2 and "is a Zarr group but not a pipeline store" in result.output, result.output


def test_submit_warns_about_non_finite_results_and_still_exits_0(tmp_path):
    # sqrt of a grid from -1 to 1: the 200 samples below 0 (shards 0 and 1 of 4) give NaN
    job = tmp_path / "sqrt.yaml"
    job.write_text(
        "schema_version: 1\nname: sqrt\n"
        f"function: {{kind: import, target: 'user_fns:sqrt_first', python_path: ['{ROOT / 'tests'}']}}\n"
        "inputs: {kind: grid, axes: [{low: -1, high: 1, num: 400}]}\nquantities: [value]\n"
        f"store: {{path: '{tmp_path / 's.zarr'}', chunk_size: 100}}\nexecution: {{shard_size: 100}}\n"
    )
    result = run("submit", job, "--executor", "inline", "--quiet")
    assert result.exit_code == 0, result.output
    assert "complete:" in result.output
    assert "warning: 200 non-finite values (NaN or Inf) in 2 of 4 shards" in result.output
    assert f"pipeline inspect {tmp_path / 's.zarr'}" in result.output
    # a finite run prints no warning
    result = run(
        "submit",
        job,
        "--executor",
        "inline",
        "--quiet",
        "--set",
        "inputs.axes=[{low: 0.5, high: 1, num: 400}]",
        "--set",
        f"store.path={tmp_path / 'finite.zarr'}",
    )
    assert result.exit_code == 0 and "complete:" in result.output and "non-finite" not in result.output


def test_unstable_ftcs_heat_sweep_exits_2_without_a_store(tmp_path):
    store = tmp_path / "s.zarr"
    result = run(
        "submit",
        ROOT / "jobs/sweep.yaml",
        "--executor",
        "inline",
        "--set",
        f"store.path={store}",
        "--set",
        "solver={name: heat1d, options: {nx: 64, t_end: 0.01, n_saves: 2, scheme: ftcs}}",
        "--set",
        "sweep.axes={diffusivity: [0.1, 5.0]}",
        "--set",
        "fixed={}",
    )
    assert result.exit_code == 2, result.output
    assert (
        "case 1 (diffusivity=5) cannot be solved as asked" in result.output
        and "scheme='ftcs' is unstable" in result.output
    )
    assert "run the same command again" not in result.output and not store.exists()


@pytest.mark.parametrize("command", ["pipeline submit", "pipeline verify --repair"])
def test_a_second_driver_of_a_store_stops_before_starting_ray(tmp_path, lock_holder, command):
    store = tmp_path / "s.zarr"
    holder = lock_holder(store, command)  # the message named `pipeline submit` also for a repair's lock
    result = run("submit", ROOT / "jobs/quickstart.yaml", "--local", "--set", f"store.path={store}")
    assert result.exit_code == 2
    assert f"another `{command}` is running this store (pid {holder.pid}" in result.output
    assert "executor:" not in result.output and not store.exists()


def three_shards(store: Path) -> list[str]:
    """Overrides that make jobs/quickstart.yaml 600 samples in 3 shards of 200, stored at ``store``."""
    return ["--set", f"store.path={store}", "--set", "inputs.n=600", "--set", "store.chunk_size=100"] + [
        "--set",
        "execution.shard_size=200",
    ]


def test_validate_refuses_what_submit_would_refuse_to_resume(tmp_path):
    """An existing store made by another spec: validate said valid, then submit refused it (exit 2)."""
    store = tmp_path / "q.zarr"
    small, job = three_shards(store), ROOT / "jobs/quickstart.yaml"
    assert run("submit", job, "--executor", "inline", "-q", *small).exit_code == 0
    same = run("validate", job, *small)
    assert same.exit_code == 0 and f"resumes the store at {store}: 3 shards are committed" in same.output
    other = [*small, "--set", "derivatives.dtype=float64"]
    refused = run("validate", job, *other)
    assert refused.exit_code == 2 and "holds results of another spec" in refused.output, refused.output
    assert "derivatives.dtype" in refused.output and "--overwrite" in refused.output
    assert run("submit", job, "--executor", "inline", "-q", *other).exit_code == 2  # as submit says
    replacing = run("validate", job, *other, "--overwrite")
    assert replacing.exit_code == 0 and "resumes" not in replacing.output, replacing.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q.zarr"]  # validate left nothing


def test_a_complete_store_resubmitted_needs_no_cluster(tmp_path):
    """Nothing to run: no Ray is started or joined (an address where no Ray listens is never tried)."""
    store = tmp_path / "q.zarr"
    small, job = three_shards(store), ROOT / "jobs/quickstart.yaml"
    assert run("submit", job, "--executor", "inline", "-q", *small).exit_code == 0

    def fresh_process(*args):  # a process of its own: this one may hold another test's Ray already
        import subprocess
        import sys

        command = [sys.executable, "-m", "pipeline.cli", "submit", str(job), *args, *small]
        return subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT)

    again = fresh_process("--address", "127.0.0.1:9")  # port 9 (discard): no Ray there
    assert again.returncode == 0, again.stderr
    assert "resumed: 3 shards were already committed" in again.stderr and "0 shards run" in again.stdout
    partial = tmp_path / "q.zarr" / "_shards" / "1.json"
    partial.unlink()  # one shard pending: now the cluster is needed, and this one is refused
    refused = fresh_process("--address", "127.0.0.1:9")
    assert refused.returncode == 2 and "127.0.0.1:9" in refused.stderr, refused.stderr


def test_the_reading_commands_take_a_file_url_as_store_path_does(quickstart_store, tmp_path):
    import pipeline

    url = f"file://{quickstart_store}"
    for command in ("status", "inspect", "verify"):
        result = run(command, url)
        assert result.exit_code == 0 and "not a pipeline store" not in result.output, (command, result.output)
    assert run("report", url, "-o", tmp_path / "r.html").exit_code == 0 and (tmp_path / "r.html").is_file()
    assert pipeline.open_results(url).value.shape == pipeline.open_results(quickstart_store).value.shape


def test_a_slow_check_of_the_job_says_what_it_waits_for(tmp_path, monkeypatch):
    # validate (and submit) solved the first case in silence: an FTCS heat1d with a tiny dt ran for hours unexplained
    import pipeline.driver

    monkeypatch.setattr(pipeline.driver, "SLOW_CHECK_S", 0.05)
    heat = ["--set", "solver={name: heat1d, options: {nx: 64, scheme: ftcs, dt: 2.0e-5}}", "--set", "fixed={}"]
    heat += ["--set", "sweep.axes={diffusivity: [0.1, 0.2]}", "--set", f"store.path={tmp_path / 's.zarr'}"]
    result = run("validate", ROOT / "jobs/sweep.yaml", *heat)
    assert result.exit_code == 0, result.output
    assert "note: checking the job: its first cases are being computed here" in result.output
    monkeypatch.setattr(pipeline.driver, "SLOW_CHECK_S", 60.0)
    assert "checking the job" not in run("validate", ROOT / "jobs/sweep.yaml", *heat).output
