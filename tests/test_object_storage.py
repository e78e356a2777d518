"""Stores and inputs on object storage, against a real S3 server on localhost (moto server mode).

Every store written to ``s3://`` must equal, array by array and bit for bit,
the same job written to local disk (the local store is itself checked
against independent references in test_pipeline.py / test_sweep_jobs.py).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from click.testing import CliRunner
from s3server import Outage

from pipeline import storage
from pipeline.cli import main
from pipeline.store import open_results, read_attributes, read_markers

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "jobs/quickstart.yaml"
SMALL = ["--set", "inputs.n=6000", "--set", "store.chunk_size=250", "--set", "execution.shard_size=500"]  # 12 shards
SWEEP = [
    "--set",
    "solver.options={nx: 64, n_angles: 4, t_end: 0.25, save_every: 5}",
    "--set",
    "store.chunk_size=2",
    "--set",
    "execution.shard_size=2",
]


def cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def subprocess_cli(*args, env=None, **kwargs):
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", *map(str, args)],
        cwd=str(ROOT),
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **kwargs,
    )


def assert_same_dataset(ds: xr.Dataset, reference: xr.Dataset) -> None:
    assert sorted(ds.variables) == sorted(reference.variables)
    for name in reference.variables:
        np.testing.assert_array_equal(ds[name].values, reference[name].values, err_msg=name)
        assert ds[name].dims == reference[name].dims


def objects(url: str) -> list[str]:
    fs, path = storage.filesystem(url)
    fs.invalidate_cache()
    return sorted(p[len(path) + 1 :] for p in fs.find(path))


@pytest.fixture(scope="module")
def local_quickstart(tmp_path_factory):
    store = tmp_path_factory.mktemp("local") / "quick.zarr"
    result = cli("submit", QUICKSTART, "--executor", "inline", "-q", "--set", f"store.path={store}", *SMALL)
    assert result.exit_code == 0, result.output
    return store


@pytest.fixture(scope="module")
def s3_quickstart(s3_server):
    url = s3_server.url("quick.zarr")
    result = cli("submit", QUICKSTART, "--executor", "inline", "-q", "--set", f"store.path={url}", *SMALL)
    assert result.exit_code == 0, result.output
    assert f"complete: {url}" in result.output
    return url


def test_derivative_job_to_s3_equals_local_disk_and_reads_back(s3_server, s3_quickstart, local_quickstart):
    url = s3_quickstart
    reference = open_results(local_quickstart)
    ds = open_results(url, require_complete=True)
    assert ds.attrs["complete"] is True
    assert_same_dataset(ds, reference)
    plain = xr.open_zarr(url, storage_options=s3_server.storage_options())  # a notebook, without pipeline
    assert_same_dataset(plain, xr.open_zarr(local_quickstart))
    names = objects(url)
    assert {"zarr.json", "plan.parquet", "manifest.parquet"} <= set(names)
    for name in ("value", "jacobian", "hessian"):  # the same per-chunk checksum as on local disk
        codecs = json.loads(storage.read_bytes(f"{url}/{name}/zarr.json"))["codecs"]
        assert codecs[-1]["name"] == "crc32c", (name, codecs)
    assert sum(n.startswith("_shards/") and n.endswith(".json") for n in names) == 12
    assert not storage.exists(url + ".lease")  # released at the end of the run
    status = cli("status", url, "--json")
    assert status.exit_code == 0 and json.loads(status.output)["done"] == 12
    inspect = cli("inspect", url)
    assert inspect.exit_code == 0 and "complete" in inspect.output and "hessian" in inspect.output
    again = cli("submit", QUICKSTART, "--executor", "inline", "-q", "--set", f"store.path={url}", *SMALL)
    assert again.exit_code == 0 and "resumed: 12 shards" in again.output


def test_storage_options_are_used_and_never_stored(s3_server, local_quickstart, tmp_path, monkeypatch):
    """Right keys only in store.storage_options (the environment's are wrong): it works, and no secret is kept."""
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret")
    options = json.dumps(s3_server.storage_options())
    url = s3_server.url("with-options.zarr")
    args = ["submit", QUICKSTART, "--executor", "inline", "--set", f"store.path={url}"]
    args += ["--set", f"store.storage_options={options}", *SMALL]
    monkeypatch.setattr(sys, "argv", ["pipeline", *map(str, args)])  # the command line the store records
    result = cli(*args)
    assert result.exit_code == 0, result.output
    assert s3_server.secret not in result.output
    storage.set_options(url, s3_server.storage_options())
    assert_same_dataset(open_results(url), open_results(local_quickstart))
    raw = storage.read_bytes(storage.join(url, "zarr.json")).decode()
    assert s3_server.secret not in raw and s3_server.key not in raw
    attributes = read_attributes(url)
    assert "store.storage_options=<redacted>" in attributes["provenance"]["command"]
    assert "store.storage_options=<redacted>" in attributes["runs"][-1]["command"]
    recorded = read_attributes(url)["spec"]["store"]["storage_options"]
    assert recorded["secret"] == "<redacted>" and recorded["key"] == "<redacted>"


def test_an_input_outside_the_store_is_not_told_to_use_store_storage_options(s3_server, tmp_path):
    """store.storage_options reach the store's URL only: an input elsewhere in the bucket that the environment's
    keys cannot read is not told to set them there (before: "... or store.storage_options", already set)."""
    points = s3_server.url("inputs/outside.npy")
    local = tmp_path / "outside.npy"
    np.save(local, np.zeros((4, 2)))
    storage.write_bytes(points, local.read_bytes())
    options = json.dumps(s3_server.storage_options())
    url = s3_server.url("outside-input.zarr")
    args = ["submit", QUICKSTART, "--executor", "inline", "--set", f"store.path={url}"]
    args += ["--set", f"store.storage_options={options}", "--set", f"inputs={{kind: npy, path: {points}}}"]
    process = subprocess_cli(*args, env={"AWS_SECRET_ACCESS_KEY": "wrong-secret"})
    output = process.communicate(timeout=180)[0]
    assert process.returncode == 2, output
    assert "inputs.path: access to" in output and "AWS_SECRET_ACCESS_KEY" in output, output
    assert "store.storage_options" not in output, output
    assert objects(url) == []


def test_sweep_job_to_s3_on_ray_with_a_case_table_from_s3(s3_server, ray_cluster, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    cases = pa.table(
        {"T0_mean": [1.0, 2.0, 1.5, 0.5], "sigma_mean": [0.5, 1.0, 2.0, 1.0], "T0_phase": [0.0, 0.0, 1.0, 0.5]}
    )
    pq.write_table(cases, tmp_path / "cases.parquet")
    storage.write_bytes(s3_server.url("inputs/cases.parquet"), (tmp_path / "cases.parquet").read_bytes())
    local = tmp_path / "sweep.zarr"
    result = cli(
        "submit",
        ROOT / "jobs/sweep.yaml",
        "--executor",
        "inline",
        "-q",
        "--set",
        f"store.path={local}",
        "--set",
        f"sweep={{kind: parquet, path: {tmp_path / 'cases.parquet'}}}",
        *SWEEP,
    )
    assert result.exit_code == 0, result.output
    url = s3_server.url("sweep.zarr")
    # the workers of a Ray started earlier may lack this session's AWS variables: the options travel in the spec
    options = json.dumps(s3_server.storage_options())
    result = cli(
        "submit",
        ROOT / "jobs/sweep.yaml",
        "--local",
        "-q",
        "--set",
        f"store.path={url}",
        "--set",
        f"store.storage_options={options}",
        "--set",
        f"sweep={{kind: parquet, path: {s3_server.url('inputs/cases.parquet')}}}",
        *SWEEP,
    )
    assert result.exit_code == 0, result.output
    storage.set_options(url, s3_server.storage_options())
    assert_same_dataset(open_results(url), open_results(local))
    assert "etag" in read_attributes(url)["files"]["sweep.path"]  # an object is fingerprinted by its ETag
    assert storage.read_bytes(storage.join(url, "cases.parquet")) == (local / "cases.parquet").read_bytes()


def test_inputs_and_checkpoint_read_from_s3(s3_server, s3_quickstart, local_quickstart, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch

    from pipeline.models import make_mlp

    x = np.random.default_rng(3).uniform(-1, 1, size=(500, 2))
    np.save(tmp_path / "x.npy", x)
    pq.write_table(pa.table({"a": x[:, 0], "b": x[:, 1]}), tmp_path / "x.parquet", row_group_size=128)
    torch.save(make_mlp(2, [16], 3, activation="tanh").state_dict(), tmp_path / "net.pt")
    for name in ("x.npy", "x.parquet", "net.pt"):
        storage.write_bytes(s3_server.url(f"inputs/{name}"), (tmp_path / name).read_bytes())
    common = [
        "--set",
        "function={kind: mlp, in_features: 2, hidden: [16], out_features: 3, activation: tanh, "
        "seed: 0, checkpoint: %s}",
        "--set",
        "store.chunk_size=100",
        "--set",
        "execution.shard_size=200",
    ]
    jobs = {
        "npy": "inputs={kind: npy, path: %s/x.npy}",
        "parquet": "inputs={kind: parquet, path: %s/x.parquet, columns: [a, b]}",
    }
    for kind, inputs in jobs.items():
        stores = {}
        for where, base in (("local", str(tmp_path)), ("s3", s3_server.url("inputs"))):
            stores[where] = (tmp_path / f"{kind}.zarr") if where == "local" else s3_server.url(f"from-{kind}.zarr")
            result = cli(
                "submit",
                QUICKSTART,
                "--executor",
                "inline",
                "-q",
                "--set",
                f"store.path={stores[where]}",
                "--set",
                inputs % base,
                common[0],
                common[1] % f"{base}/net.pt",
                *common[2:],
            )
            assert result.exit_code == 0, (kind, where, result.output)
        assert_same_dataset(open_results(stores["s3"]), open_results(stores["local"]))
        assert "etag" in read_attributes(stores["s3"])["files"]["function.checkpoint"]
    # a Zarr input: the inputs array of the store written to s3 above
    out = {}
    for where, source in (("local", local_quickstart), ("s3", s3_quickstart)):
        out[where] = tmp_path / "from-store.zarr" if where == "local" else s3_server.url("from-store.zarr")
        result = cli(
            "submit",
            ROOT / "jobs/from_store.yaml",
            "--executor",
            "inline",
            "-q",
            "--set",
            f"store.path={out[where]}",
            "--set",
            f"inputs.path={source}",
            "--set",
            "store.chunk_size=1500",
            "--set",
            "execution.shard_size=3000",
        )
        assert result.exit_code == 0, (where, result.output)
    assert_same_dataset(open_results(out["s3"]), open_results(out["local"]))


def _wait_for_markers(url: str, process: subprocess.Popen, at_least: int = 1, timeout: float = 120) -> int:
    began = time.monotonic()
    while time.monotonic() - began < timeout:
        done = (
            len([n for n in objects(url) if n.startswith("_shards/") and n.endswith(".json")])
            if storage.exists(storage.join(url, "zarr.json"))
            else 0
        )
        if done >= at_least or process.poll() is not None:
            return done
        time.sleep(0.05)
    raise AssertionError("no shard committed in time")


def test_a_cut_short_npy_in_a_bucket_is_refused_before_any_work(s3_server, tmp_path):
    """Exit 2 naming inputs.path, as a local file is (before: a store made, a shard failing on a reshape, exit 1)."""
    np.save(tmp_path / "points.npy", np.zeros((50, 2)))
    whole = (tmp_path / "points.npy").read_bytes()
    points = s3_server.url("inputs/cut.npy")
    storage.write_bytes(points, whole[:-100])
    url = s3_server.url("cut-input.zarr")
    args = ["submit", QUICKSTART, "--executor", "inline", "--set", f"store.path={url}"]
    result = cli(*args, "--set", f"inputs={{kind: npy, path: {points}}}")
    assert result.exit_code == 2, result.output
    assert f"inputs.path: {points} is cut short" in result.output and "Traceback" not in result.output, result.output
    assert objects(url) == []


def test_resume_after_a_killed_driver_is_bit_identical(s3_server, local_quickstart):
    url = s3_server.url("killed.zarr")
    process = subprocess_cli("submit", QUICKSTART, "--executor", "inline", "-q", "--set", f"store.path={url}", *SMALL)
    try:
        _wait_for_markers(url, process)
        process.send_signal(signal.SIGKILL)  # no clean-up: the lease stays behind, its process gone
    finally:
        process.wait()
    done = len(read_markers(url))
    assert 0 < done < 12, f"kill came too late or too early: {done} of 12 shards committed"
    assert storage.exists(url + ".lease")
    status = cli("status", url, "--json")
    assert status.exit_code == 1 and json.loads(status.output)["done"] == done
    result = cli("submit", QUICKSTART, "--executor", "inline", "-q", "--set", f"store.path={url}", *SMALL)
    assert result.exit_code == 0, result.output
    assert f"resumed: {done} shard{' was' if done == 1 else 's were'} already committed" in result.output
    assert_same_dataset(open_results(url, require_complete=True), open_results(local_quickstart))


def test_server_gone_mid_run_commits_nothing_half_and_a_rerun_finishes(s3_server, local_quickstart):
    proxy = Outage(s3_server.port)  # the client's way to the server: switched off mid-run
    url = s3_server.url("outage.zarr")
    # one try per storage call and per shard, so that the shards after the outage fail fast (retries: below)
    env = {"AWS_ENDPOINT_URL": proxy.endpoint, "PIPELINE_STORAGE_RETRIES": "1"}
    args = (
        "submit",
        QUICKSTART,
        "--executor",
        "inline",
        "-q",
        "--set",
        f"store.path={url}",
        "--set",
        "execution.retries=0",
        *SMALL,
    )
    try:
        process = subprocess_cli(*args, env=env)
        try:
            _wait_for_markers(url, process)
            proxy.stop()
            output, _ = process.communicate(timeout=180)
        finally:
            process.kill()
            process.wait()
        assert process.returncode != 0, output
        assert "run the same command again" in output, output
        reference = open_results(local_quickstart)
        committed = read_markers(url)
        assert 0 < len(committed) < 12
        partial = open_results(url)  # every committed shard holds its whole results
        for record in committed.values():
            part = slice(record.start, record.stop)
            for name in ("value", "jacobian", "hessian", "laplacian"):
                np.testing.assert_array_equal(partial[name].values[part], reference[name].values[part])
        proxy.start()
        process = subprocess_cli(*args, env=env)
        output, _ = process.communicate(timeout=180)
        assert process.returncode == 0, output
        assert_same_dataset(open_results(url, require_complete=True), reference)
    finally:
        proxy.stop()


def test_wrong_credentials_and_missing_bucket_exit_2_before_any_work(s3_server, tmp_path):
    url = s3_server.url("never.zarr")
    wrong = json.dumps({**s3_server.storage_options(), "secret": "not-the-secret"})
    result = cli(
        "submit",
        QUICKSTART,
        "--executor",
        "inline",
        "--set",
        f"store.path={url}",
        "--set",
        f"store.storage_options={wrong}",
        *SMALL,
    )
    assert result.exit_code == 2, result.output
    assert "store.path" in result.output and "refused" in result.output and "credentials" in result.output
    assert "not-the-secret" not in result.output
    missing = "s3://no-such-bucket-here/x.zarr"
    result = cli("submit", QUICKSTART, "--executor", "inline", "--set", f"store.path={missing}", *SMALL)
    assert result.exit_code == 2, result.output
    assert (
        "store.path" in result.output and "no-such-bucket-here" in result.output and "does not exist" in result.output
    )
    result = cli(
        "submit",
        ROOT / "jobs/from_store.yaml",
        "--executor",
        "inline",
        "--set",
        f"store.path={tmp_path / 'y.zarr'}",
        "--set",
        "inputs.path=s3://no-such-bucket-here/in.zarr",
    )
    assert result.exit_code == 2 and "inputs.path" in result.output, result.output
    fs, path = storage.filesystem(url, s3_server.storage_options())  # the right keys: nothing was written
    assert not fs.exists(path) and not (tmp_path / "y.zarr").exists()


def test_unknown_scheme_exits_2_and_memory_url_works(tmp_path, local_quickstart, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = cli("submit", QUICKSTART, "--executor", "inline", "--set", "store.path=ftpx://host/x.zarr", *SMALL)
    assert result.exit_code == 2, result.output
    assert "store.path" in result.output and "ftpx://" in result.output
    assert not any(tmp_path.iterdir())  # no local folder named after the URL
    url = "memory://tests/quick.zarr"
    result = cli("submit", QUICKSTART, "--executor", "inline", "-q", "--set", f"store.path={url}", *SMALL)
    assert result.exit_code == 0, result.output
    assert_same_dataset(open_results(url), open_results(local_quickstart))


def test_a_memory_url_with_ray_is_refused_before_ray_starts(tmp_path, monkeypatch):
    """memory:// is the driver's own memory ('inline executor only'): Ray's workers would fail every shard."""
    from pipeline.runner import RayExecutor

    def no_ray(self):
        raise AssertionError("Ray was started")

    monkeypatch.setattr(RayExecutor, "start", no_ray)
    monkeypatch.chdir(tmp_path)
    url = "memory://tests/ray.zarr"
    result = cli("submit", QUICKSTART, "--local", "-q", "--set", f"store.path={url}", *SMALL)
    assert result.exit_code == 2, result.output
    assert f"store.path: {url}" in result.output and "--executor inline" in result.output
    assert not storage.exists(storage.join(url, "zarr.json"))


def test_a_second_driver_is_refused_by_the_lease(s3_server):
    from pipeline import lease

    url = s3_server.url("leased.zarr")
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])  # a live holder's pid
    try:
        held = {
            "host": os.uname().nodename,
            "pid": other.pid,
            "token": "other",
            "since": "now",
            "expires": time.time() + 60,
        }
        storage.write_bytes(lease.lease_url(url), json.dumps(held).encode())
        result = cli("submit", QUICKSTART, "--executor", "inline", "--set", f"store.path={url}", *SMALL)
        assert result.exit_code == 2, result.output
        assert "another `pipeline submit` is running this store" in result.output
        assert not storage.exists(storage.join(url, "zarr.json"))
        other.kill()
        other.wait()
        token = lease.acquire(url)  # its process is gone: taken over at once
        with pytest.raises(FileExistsError):  # the conditional put: a second create fails
            fs, path = storage.filesystem(lease.lease_url(url))
            fs.pipe_file(path, b"{}", mode="create")
        lease.release(url, token)
        assert not storage.exists(lease.lease_url(url))
    finally:
        other.kill()
        other.wait()


def test_transient_errors_are_retried_with_backoff_and_others_are_not(monkeypatch):
    monkeypatch.setattr(storage, "RETRY_BASE_SECONDS", 0.001)
    calls = []

    def flaky(fail: int, error: Exception):
        calls.append(1)
        if len(calls) <= fail:
            raise error
        return "ok"

    assert storage.retry(flaky, 3, ConnectionResetError(104, "connection reset by peer"), attempts=5) == "ok"
    assert len(calls) == 4
    calls.clear()
    with pytest.raises(OSError, match="SlowDown"):
        storage.retry(flaky, 9, OSError("SlowDown: please reduce your request rate"), attempts=3)
    assert len(calls) == 3
    calls.clear()
    with pytest.raises(FileNotFoundError):
        storage.retry(flaky, 9, FileNotFoundError("no such key"), attempts=5)
    assert len(calls) == 1  # not transient: raised at once


def test_verify_finds_a_damaged_bucket_chunk_and_repair_recomputes_it(s3_server, local_quickstart):
    """`pipeline verify` and `verify --repair` on an s3:// store: the same as on local disk (test_verify.py)."""
    url = s3_server.url("verify.zarr")
    made = cli("submit", QUICKSTART, "--executor", "inline", "-q", "--set", f"store.path={url}", *SMALL)
    assert made.exit_code == 0, made.output
    clean = cli("verify", url, "--json")
    assert clean.exit_code == 0 and json.loads(clean.output)["damaged_shards"] == [], clean.output
    chunk = sorted(name for name in objects(url) if name.startswith("hessian/c/"))[3]
    storage.write_bytes(f"{url}/{chunk}", b"not a chunk")  # one flipped object in the bucket
    damaged = cli("verify", url, "--json")
    assert damaged.exit_code == 1, damaged.output
    report = json.loads(damaged.output)
    assert len(report["damaged_shards"]) == 1 and report["problems"][0]["array"] == "hessian", report
    assert read_attributes(url)["complete"] is True  # verify alone changes nothing
    repaired = cli("verify", url, "--repair", "--executor", "inline", "-q")
    assert repaired.exit_code == 0, repaired.output
    assert f"un-committed shards {report['damaged_shards'][0]}" in repaired.output
    assert_same_dataset(open_results(url, require_complete=True), open_results(local_quickstart))
    assert cli("verify", url).exit_code == 0
    assert not storage.exists(url + ".lease") and not Path(url).exists() and not Path("s3:").exists()


def test_a_bucket_store_left_without_its_plan_is_made_anew_by_the_next_run(s3_server, local_quickstart):
    """A driver killed while it creates a bucket store leaves no plan.parquet (written last) and no commit."""
    url = s3_server.url("half.zarr")
    args = ("submit", QUICKSTART, "--executor", "inline", "--set", f"store.path={url}", *SMALL)
    assert cli(*args, "-q").exit_code == 0
    for name in objects(url):
        if name.startswith("_shards/") or name.endswith(".parquet"):
            storage.remove(f"{url}/{name}")
    status = cli("status", url)
    assert status.exit_code == 2, status.output
    assert "plan.parquet" in status.output and "pipeline submit JOB" in status.output, status.output
    assert "Traceback" not in status.output
    again = cli(*args)
    assert again.exit_code == 0, again.output
    assert f"made the store at {url} anew" in again.output, again.output
    assert_same_dataset(open_results(url, require_complete=True), open_results(local_quickstart))


def test_a_bucket_store_with_commits_but_no_plan_says_to_restore_it_or_overwrite(s3_server):
    """Running the job again cannot make such a store anew (it has commits): the message must not send the user round."""
    url = s3_server.url("noplan.zarr")
    args = ("submit", QUICKSTART, "--executor", "inline", "--set", f"store.path={url}", *SMALL)
    assert cli(*args, "-q").exit_code == 0
    storage.remove(f"{url}/plan.parquet")
    for result in (cli("status", url), cli(*args)):
        assert result.exit_code == 2, result.output
        assert "has committed shards" in result.output and "--overwrite" in result.output, result.output
        assert "makes a bucket store without commits anew" not in result.output
    assert cli(*args, "--overwrite", "-q").exit_code == 0


def test_verify_repair_of_a_store_made_with_storage_options_uses_the_environment(s3_server, local_quickstart):
    """The options were redacted in the store: the repair runs on the environment's keys (before: a crash after
    the damaged shards were un-committed)."""
    url = s3_server.url("verify-options.zarr")
    options = json.dumps(s3_server.storage_options())
    made = cli(
        "submit", QUICKSTART, "--executor", "inline", "-q", "--set", f"store.path={url}",
        "--set", f"store.storage_options={options}", *SMALL,
    )  # fmt: skip
    assert made.exit_code == 0, made.output
    chunk = sorted(name for name in objects(url) if name.startswith("value/c/"))[2]
    storage.write_bytes(f"{url}/{chunk}", b"not a chunk")
    repaired = cli("verify", url, "--repair", "--executor", "inline", "-q")
    assert repaired.exit_code == 0, repaired.output
    assert "were never recorded" in repaired.output and "this environment's credentials" in repaired.output
    assert s3_server.secret not in repaired.output
    assert_same_dataset(open_results(url, require_complete=True), open_results(local_quickstart))


def test_a_store_path_naming_an_existing_object_is_refused_and_the_object_kept(s3_server):
    url = s3_server.url("notes/data.txt")
    storage.write_bytes(url, b"the user's own object")
    for extra in ([], ["--overwrite"]):
        result = cli("submit", QUICKSTART, "--executor", "inline", "--set", f"store.path={url}", *SMALL, *extra)
        assert result.exit_code == 2, result.output
        assert "store.path" in result.output and "is an existing object" in result.output
        assert storage.read_bytes(url) == b"the user's own object"
        assert storage.listdir(url) == [] and not storage.exists(url + ".lease")  # nothing made under it


def test_reading_commands_say_what_is_wrong_with_the_bucket(s3_server, s3_quickstart):
    """status, inspect, verify and report on a store they cannot reach: one line naming the cause, exit 2
    (before: a traceback from status, "not a pipeline store" from the rest)."""
    from s3server import free_port

    unreachable = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}", "PIPELINE_STORAGE_RETRIES": "1"}
    cases = [
        ({"AWS_SECRET_ACCESS_KEY": "not-the-secret"}, s3_quickstart, "was refused", "AWS_SECRET_ACCESS_KEY"),
        (unreachable, s3_quickstart, "cannot reach the storage", "AWS_ENDPOINT_URL"),
        ({}, "s3://no-such-bucket-here/x.zarr", "does not exist", "aws s3 mb"),
    ]
    for env, url, cause, fix in cases:
        commands = ("status", "inspect", "verify", "report")
        processes = [subprocess_cli(command, url, env=env) for command in commands]  # the four at once
        for command, process in zip(commands, processes):
            output = process.communicate(timeout=180)[0]
            assert process.returncode == 2, (command, output)
            assert cause in output and fix in output, (command, output)
            assert "Traceback" not in output and "not a pipeline store" not in output, (command, output)
            assert "store.storage_options" not in output  # what these commands cannot take
    assert not Path("x.zarr").exists() and not Path(s3_quickstart.rsplit("/", 1)[1].replace(".zarr", ".html")).exists()


def test_report_of_a_bucket_store_is_written_beside_it_in_the_bucket(s3_server, s3_quickstart, tmp_path, monkeypatch):
    """`pipeline report s3://b/quick.zarr` writes s3://b/quick.html (before: a local folder `s3:` made of the URL)."""
    pytest.importorskip("matplotlib")
    monkeypatch.chdir(tmp_path)
    result = cli("report", s3_quickstart)
    assert result.exit_code == 0, result.output
    assert f"wrote {s3_server.url('quick.html')}" in result.output
    assert list(tmp_path.iterdir()) == []
    assert storage.read_bytes(s3_server.url("quick.html")).startswith(b"<!DOCTYPE html>")
    result = cli("report", s3_quickstart, "-o", tmp_path / "mine.html")
    assert result.exit_code == 0 and (tmp_path / "mine.html").read_text().startswith("<!DOCTYPE html>"), result.output


def test_open_results_takes_storage_options_and_says_why_it_cannot_read(s3_server, s3_quickstart, local_quickstart):
    from pipeline.storage import StorageError

    url = s3_quickstart
    try:
        wrong = {**s3_server.storage_options(), "secret": "not-the-secret"}
        with pytest.raises(StorageError, match=r"was refused.*storage_options="):
            open_results(url, storage_options=wrong)
        ds = open_results(url, storage_options=s3_server.storage_options())
        assert_same_dataset(ds, open_results(local_quickstart))
    finally:
        storage.set_options(url, {})  # the environment's again, for the other tests of this module


def test_workers_without_credentials_are_told_apart_from_a_bug(ray_cluster, tmp_path):
    """A shard failing with botocore's NoCredentialsError: the run's last words say the nodes lack the keys
    (running the same command again, the generic advice, would fail the same way)."""
    function = f"{{kind: import, target: 'user_fns:no_credentials_off_driver', python_path: ['{ROOT / 'tests'}'], "
    function += f"kwargs: {{driver_pid: {os.getpid()}}}}}"
    result = cli(
        "submit", QUICKSTART, "--local", "--set", f"function={function}", "--set", "quantities=[value]",
        "--set", f"store.path={tmp_path / 'x.zarr'}", "--set", "execution.retries=0", *SMALL,
    )  # fmt: skip
    assert result.exit_code == 1, result.output
    assert "NoCredentialsError" in result.output and "the workers found no credentials" in result.output
    assert "AWS_ACCESS_KEY_ID" in result.output and "store.storage_options" in result.output


def test_reading_a_store_does_not_list_its_bucket(s3_server, s3_quickstart, monkeypatch):
    """A reader allowed only under a prefix may not list the bucket's top level: reading HEADs the store's
    zarr.json, and the bucket probe (storage.check_access, which lists it) only explains a failure."""
    from pipeline import store as store_module

    probes = []
    monkeypatch.setattr(storage, "check_access", lambda *args, **kwargs: probes.append(args))
    assert open_results(s3_quickstart).attrs["complete"]
    assert cli("status", s3_quickstart).exit_code == 0 and cli("inspect", s3_quickstart).exit_code == 0
    assert probes == []
    store_module.check_readable(s3_server.url("nothing-here.zarr"))  # no store: now the bucket is asked why
    assert len(probes) == 1


def test_a_status_code_counts_as_transient_only_where_a_client_wrote_one():
    """ "float16 holds |x| <= 65504" read as a 504: a stored-dtype overflow counted as a storage outage."""
    from pipeline.errors import RejectedResults
    from pipeline.runner import Attempts

    assert storage.is_transient(OSError("An error occurred (503) when calling the PutObject operation"))
    assert storage.is_transient(OSError("Server returned non-2xx status code: 500 Internal Server Error"))
    overflow = RejectedResults("shard 502 (samples 384-448): float16 holds |x| <= 65504")
    assert not storage.is_transient(overflow) and not storage.is_transient(OSError("shard 500 failed"))
    attempts = Attempts(retries=1)
    for shard in range(3):  # three shards rejected in a row: no outage, each simply not retried
        assert attempts.failed(shard, overflow) is False
    assert attempts.storage_down is None
