"""Live status of a bucket store: `pipeline status s3://...` while a real driver replaces it (never complete), when
its lease expires (stale), after a resume (complete). Against the real S3 server of tests/s3server.py.

The driver publishes the same record as for a local store, as the object ``<store>.driver.json`` beside its
lease object; its workers' block progress is the objects ``_shards/<id>.progress``. The lease's TTL is
shortened to a few seconds (``PIPELINE_LEASE_TTL_S``) so that a lost driver is seen in seconds.
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
from click.testing import CliRunner
from test_live_status import within_a_shard

from pipeline import storage
from pipeline.cli import main

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
SLOW_ENV = "PIPELINE_TEST_SECONDS_PER_CALL"  # user_fns.slow_sin sleeps this long per call
TTL_S = 3.0  # the drivers' lease lasts this long unless renewed (renewed every TTL_S / 4)


def run(*args, env=None):
    return CliRunner(env=env).invoke(main, [str(a) for a in args], catch_exceptions=False)


def write_job(folder: Path, store: str, *, n: int, shard_size: int) -> Path:
    """A job calling tests/user_fns.py's slow_sin (method forward calls it on every block of 4 samples)."""
    job = folder / "live.yaml"
    job.write_text(
        json.dumps(
            {
                "schema_version": 1,
                "name": "live",
                "function": {"kind": "import", "target": "user_fns:slow_sin", "python_path": [str(TESTS)]},
                "inputs": {"kind": "uniform", "n": n, "shape": [2], "seed": 1},
                "quantities": ["value", "jacobian"],
                "derivatives": {"method": "forward", "dtype": "float64"},
                "store": {"path": store, "chunk_size": 4},
                "execution": {"shard_size": shard_size, "retries": 1},
            }
        )
    )
    return job


def start_driver(job: Path, *args: str, seconds_per_call: float) -> subprocess.Popen:
    """`python -m pipeline submit JOB ...` in its own process, finding the server by the AWS_* variables."""
    env = {
        **os.environ,
        SLOW_ENV: str(seconds_per_call),
        "PIPELINE_LEASE_TTL_S": str(TTL_S),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline", "submit", str(job), *args],
        cwd=str(job.parent),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def status(url: str) -> tuple[int, dict | None]:
    """`pipeline status URL --json`: its exit code and report (None while there is no store and no driver)."""
    result = run("status", url, "--json")
    return result.exit_code, (json.loads(result.output) if result.exit_code != 2 else None)


def wait_for(predicate, process: subprocess.Popen, url: str, limit_s: float = 60.0) -> dict:
    """Poll `status --json` until ``predicate(report)``; fails if the driver ends first."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        _, report = status(url)
        if report is not None and predicate(report):
            return report
        assert process.poll() is None, process.stdout.read()
        time.sleep(0.5)
    raise AssertionError("the driver never got there")


def kill(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGKILL)  # no clean-up of its own: its lease and record stay behind
    process.wait()


def lease(url: str) -> dict:
    return json.loads(storage.read_bytes(url + ".lease"))


def progress_objects(url: str) -> list[str]:
    return [name for name in storage.listdir(storage.join(url, "_shards")) if name.endswith(".progress")]


@pytest.fixture
def drivers():
    started: list[subprocess.Popen] = []
    yield started
    for process in started:
        if process.poll() is None:
            kill(process)


def test_running_then_stale_when_the_lease_expires_then_complete_after_resume(s3_server, tmp_path, drivers):
    url = s3_server.url("live-status.zarr")
    job = write_job(tmp_path, url, n=128, shard_size=16)  # 8 shards of 4 blocks, ~0.3 s a block when slow
    assert run("submit", job, "--executor", "inline", "--quiet", env={SLOW_ENV: "0"}).exit_code == 0
    code, report = status(url)
    assert (code, report["state"]) == (0, "complete")

    # a driver replacing that store (--overwrite): from the moment it holds the lease, never called complete
    driver = start_driver(job, "--executor", "inline", "--overwrite", seconds_per_call=0.15)
    drivers.append(driver)
    (tmp_path / "clean").mkdir()  # meanwhile, the reference: a clean run of the same job on local disk
    local = tmp_path / "clean" / "live.zarr"
    clean = write_job(tmp_path / "clean", str(local), n=128, shard_size=16)
    assert run("submit", clean, "--executor", "inline", "--quiet", env={SLOW_ENV: "0"}).exit_code == 0
    while not storage.exists(url + ".lease"):  # a cheap look while the driver starts (a status reads every marker)
        assert driver.poll() is None, driver.stdout.read()
        time.sleep(0.2)
    seen = []
    while True:
        code, report = status(url)
        seen.append((code, report and report["state"], report and report["complete"]))
        if report and report["state"] == "running" and (report["driver"]["progress"] or {}).get("samples_done"):
            break
        assert driver.poll() is None and len(seen) < 200, driver.stdout.read()
        time.sleep(0.5)  # a status costs this process and the server CPU that the driver needs
    running = [i for i, s in enumerate(seen) if s[1] == "running"]
    assert all(s == (3, "running", False) for s in seen[running[0] :]), seen

    # running: who, since when, the command, live counters that count samples within a shard (progress objects)
    info = report["driver"]
    assert info["pid"] == driver.pid and info["alive"] is True and info["phase"] == "running"
    assert info["host"] == lease(url)["host"] and info["started"] and info["updated_seconds_ago"] < 10
    assert info["command"] == f"python -m pipeline submit {job} --executor inline --overwrite"
    assert info["cwd"] == str(tmp_path)
    progress = info["progress"]
    assert (progress["shards"], progress["samples"], progress["shards_failed"]) == (8, 128, 0)
    assert progress["shards_done"] + progress["shards_running"] + progress["shards_pending"] == 8
    report = wait_for(
        lambda r: (
            r["state"] == "running"
            and r["done"] >= 1
            and within_a_shard(r["driver"]["progress"], 16)
            and r["driver"]["progress"]["eta_seconds"]
        ),
        driver,
        url,
    )
    assert report["complete"] is False and report["driver"]["progress"]["samples_per_second"] > 0
    assert storage.exists(url + ".driver.json")
    text = run("status", url)
    assert text.exit_code == 3
    assert f"running: pid {driver.pid} on " in text.output and "samples/s" in text.output and "eta " in text.output

    # a driver that stops renewing its lease (frozen, or its machine cut off) is running until the lease expires
    driver.send_signal(signal.SIGSTOP)
    expires = lease(url)["expires"]
    seen = []
    while time.time() < expires + 10:
        code, report = status(url)
        seen.append((time.time(), code, report["state"]))
        if report["state"] == "stale":
            break
        time.sleep(0.1)
    assert seen[0][1:] == (3, "running") and seen[-1][1:] == (1, "stale"), seen
    assert all(s[1:] == (3, "running") for s in seen[:-1]), seen
    assert seen[-1][0] >= expires > seen[0][0], (expires, seen)  # stale only once the lease has expired
    assert report["driver"]["alive"] is False and report["driver"]["pid"] == driver.pid
    assert report["complete"] is False and 0 < report["done"] < 8 and report["pending"] > 0
    text = run("status", url).output
    assert "stale: the driver of this store is gone" in text and f"pid {driver.pid}" in text
    assert f"resume: cd {tmp_path} && python -m pipeline submit {job} --executor inline" in text

    kill(driver)  # and now its process is gone too: still stale, with its committed shards
    code, stale = status(url)
    assert (code, stale["state"], stale["done"]) == (1, "stale", report["done"])

    # the command again (without --overwrite, fast now) takes the lease over and resumes: committed shards are kept
    committed = report["done"]
    result = run("submit", job, "--executor", "inline", env={SLOW_ENV: "0"})
    assert result.exit_code == 0, result.output
    were = "shard was" if committed == 1 else "shards were"
    assert f"resumed: {committed} {were} already committed" in result.output
    code, report = status(url)
    assert (code, report["state"], report["driver"], report["complete"]) == (0, "complete", None, True)
    assert not storage.exists(url + ".driver.json") and not storage.exists(url + ".lease")
    assert progress_objects(url) == []  # each cleared when its shard committed

    # the resumed store: bit for bit a clean run on local disk, and sin(x).sum(-1) with its Jacobian cos(x)
    import pipeline

    ds = pipeline.open_results(url, require_complete=True)
    reference = pipeline.open_results(local, require_complete=True)
    for name in ("inputs", "value", "jacobian"):
        np.testing.assert_array_equal(ds[name].values, reference[name].values, err_msg=name)
    np.testing.assert_allclose(ds.value.values[:, 0], np.sin(ds.inputs.values).sum(-1), rtol=1e-12)
    np.testing.assert_allclose(ds.jacobian.values[:, 0, :], np.cos(ds.inputs.values), rtol=1e-12)


def test_status_of_a_lease_left_fresh_expired_or_by_a_dead_process(s3_server, tmp_path):
    """The three leases a driver may leave: running while fresh and its process alive, stale otherwise."""
    from pipeline import live

    url = s3_server.url("live-leases.zarr")
    job = write_job(tmp_path, url, n=16, shard_size=16)
    assert run("submit", job, "--executor", "inline", "--quiet", env={SLOW_ENV: "0"}).exit_code == 0
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])  # a live holder's pid
    try:
        for pid, expires, state in (
            (other.pid, time.time() + 60, "running"),
            (other.pid, time.time() - 1, "stale"),
            (-1, time.time() + 60, None),
        ):
            if state is None:  # the same lease once its process has gone: stale at once, before it expires
                other.kill()
                other.wait()
                pid, state = other.pid, "stale"
            held = {"host": os.uname().nodename, "pid": pid, "token": "t", "since": "s", "expires": expires}
            storage.write_bytes(url + ".lease", json.dumps(held).encode())
            live.put_record(
                url,
                {
                    "host": held["host"],
                    "pid": pid,
                    "started": "s",
                    "phase": "replacing",
                    "replacing": True,
                    "progress": None,
                },
            )  # an --overwrite: never complete
            code, report = status(url)
            assert (code, report["state"], report["driver"]["pid"]) == ({"running": 3, "stale": 1}[state], state, pid)
            assert report["complete"] is False and report["driver"]["alive"] is (state == "running")
    finally:
        other.kill()
        other.wait()
        storage.remove(url + ".lease")
        live.delete_record(url)
