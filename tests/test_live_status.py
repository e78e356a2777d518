"""Live status: `pipeline status` of a store while a real driver runs it, after it is killed, after a resume;
progress that counts samples within shards; one console line per failed attempt, tracebacks in the store."""

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

from pipeline.cli import main

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
SLOW_ENV = "PIPELINE_TEST_SECONDS_PER_CALL"  # user_fns.slow_sin sleeps this long per call


def run(*args, env=None):
    return CliRunner(env=env).invoke(main, [str(a) for a in args], catch_exceptions=False)


def write_job(
    folder: Path,
    *,
    n: int,
    shard_size: int,
    chunk_size: int = 4,
    target: str = "user_fns:slow_sin",
    retries: int = 1,
    kwargs: dict | None = None,
) -> tuple[Path, Path]:
    """A job file calling a tests/user_fns.py function (method forward calls it on every block)."""
    store = folder / "live.zarr"
    job = folder / "live.yaml"
    job.write_text(
        json.dumps(
            {
                "schema_version": 1,
                "name": "live",
                "function": {"kind": "import", "target": target, "python_path": [str(TESTS)], "kwargs": kwargs or {}},
                "inputs": {"kind": "uniform", "n": n, "shape": [2], "seed": 1},
                "quantities": ["value", "jacobian"],
                "derivatives": {"method": "forward", "dtype": "float64"},
                "store": {"path": str(store), "chunk_size": chunk_size},
                "execution": {"shard_size": shard_size, "retries": retries},
            }
        )
    )
    return job, store


def start_driver(job: Path, *args: str, seconds_per_call: float) -> subprocess.Popen:
    env = {**os.environ, SLOW_ENV: str(seconds_per_call), "PIPELINE_PROGRESS_INTERVAL": "0.5"}
    pipeline = Path(sys.executable).with_name("pipeline")  # the console script, as a user runs it
    return subprocess.Popen(
        [str(pipeline), "submit", str(job), *args],
        cwd=str(job.parent),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def status(store: Path) -> tuple[int, dict]:
    result = run("status", store, "--json")
    return result.exit_code, json.loads(result.output)


def wait_for(predicate, process: subprocess.Popen, store: Path, limit_s: float = 120.0) -> dict:
    """Poll `status --json` until ``predicate(report)``; fails if the driver ends first."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if os.path.exists(store / "zarr.json") or os.path.exists(f"{store}.lock"):
            try:
                _, report = status(store)
            except json.JSONDecodeError:  # no store yet and no driver holding it
                report = None
            if report is not None and predicate(report):
                return report
        assert process.poll() is None, process.stdout.read()
        time.sleep(0.2)
    raise AssertionError("the driver never got there")


def kill(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGKILL)  # no clean-up of its own: its lock goes with it, its record stays
    process.wait()


def within_a_shard(progress: dict, shard_size: int) -> bool:
    """Samples counted from a shard that has not committed yet (blocks reported as they are written)."""
    return progress["samples_done"] > progress["shards_done"] * shard_size


@pytest.fixture
def killed_driver(tmp_path):
    started = []
    yield started
    for process in started:
        if process.poll() is None:
            kill(process)


def test_running_then_stale_after_sigkill_then_complete_after_resume(tmp_path, killed_driver):
    job, store = write_job(tmp_path, n=128, shard_size=16)  # 8 shards of 4 blocks, ~0.2 s a block
    driver = start_driver(job, "--executor", "inline", seconds_per_call=0.1)
    killed_driver.append(driver)
    report = wait_for(
        lambda r: r["state"] == "running" and (r["driver"]["progress"] or {}).get("samples_done"), driver, store
    )
    # running: who, since when, the command, live counters that count samples within a shard
    assert status(store)[0] == 3
    info = report["driver"]
    assert info["pid"] == driver.pid and info["alive"] is True and info["phase"] == "running"
    assert info["command"] == f"pipeline submit {job} --executor inline"
    assert info["cwd"] == str(tmp_path) and info["started"] and info["host"]
    progress = info["progress"]
    assert set(progress) >= {
        "shards",
        "shards_done",
        "shards_running",
        "shards_pending",
        "shards_failed",
        "samples",
        "samples_done",
        "samples_per_second",
        "eta_seconds",
    }
    assert progress["shards"] == 8 and progress["samples"] == 128 and progress["shards_failed"] == 0
    assert progress["shards_done"] + progress["shards_running"] + progress["shards_pending"] == 8
    # a shard committed (so the resume below keeps it) and the next one part-way
    report = wait_for(
        lambda r: (
            r["driver"]["progress"]["shards_done"] >= 1
            and r["driver"]["progress"]["eta_seconds"]
            and within_a_shard(r["driver"]["progress"], 16)
        ),
        driver,
        store,
    )
    assert report["complete"] is False and report["driver"]["progress"]["samples_per_second"] > 0
    text = run("status", store)
    assert text.exit_code == 3
    assert f"running: pid {driver.pid} on " in text.output and "samples/s" in text.output and "eta " in text.output
    assert "run the job again" not in text.output  # somebody is running it

    kill(driver)
    code, report = status(store)
    assert code == 1 and report["state"] == "stale" and report["driver"]["alive"] is False
    assert report["complete"] is False and report["pending"] > 0
    text = run("status", store).output
    assert "stale: the driver of this store is gone" in text and f"pid {driver.pid}" in text
    assert f"resume: cd {tmp_path} && " in text and "live.yaml --executor inline" in text

    # the same command again (fast now) resumes: committed shards are kept, the record is gone
    committed = report["done"]
    result = run("submit", job, "--executor", "inline", env={SLOW_ENV: "0"})
    assert result.exit_code == 0, result.output
    were = "shard was" if committed == 1 else "shards were"
    assert f"resumed: {committed} {were} already committed" in result.output
    code, report = status(store)
    assert (code, report["state"], report["driver"], report["complete"]) == (0, "complete", None, True)
    assert not Path(f"{store}.driver.json").exists()
    import pipeline

    ds = pipeline.open_results(store, require_complete=True)  # sin(x).sum(-1) and its Jacobian cos(x)
    np.testing.assert_allclose(ds.value.values[:, 0], np.sin(ds.inputs.values).sum(-1), rtol=1e-12)
    np.testing.assert_allclose(ds.jacobian.values[:, 0, :], np.cos(ds.inputs.values), rtol=1e-12)


def test_a_store_being_replaced_is_never_complete(tmp_path, killed_driver):
    job, store = write_job(tmp_path, n=64, shard_size=16)
    assert run("submit", job, "--executor", "inline", "--quiet", env={SLOW_ENV: "0"}).exit_code == 0
    assert status(store)[1]["state"] == "complete"
    driver = start_driver(job, "--executor", "inline", "--overwrite", seconds_per_call=0.1)
    killed_driver.append(driver)
    seen = []
    while driver.poll() is None and len(seen) < 400:
        code, report = status(store)
        seen.append((code, report["state"], report["complete"]))
        if report["state"] == "running" and (report["driver"]["progress"] or {}).get("samples_done"):
            break
        time.sleep(0.1)
    assert driver.poll() is None, driver.stdout.read()
    running = [i for i, s in enumerate(seen) if s[1] == "running"]
    assert running, seen
    # from the moment a driver holds it, the old complete store is not called complete
    assert all(s == (3, "running", False) for s in seen[running[0] :]), seen
    kill(driver)
    code, report = status(store)
    assert (code, report["state"], report["complete"]) == (1, "stale", False)


def test_a_driver_that_holds_the_lock_but_has_not_published_is_starting(tmp_path, lock_holder):
    job, store = write_job(tmp_path, n=16, shard_size=16)
    assert run("submit", job, "--executor", "inline", "--quiet", env={SLOW_ENV: "0"}).exit_code == 0
    holder = lock_holder(store)  # another process holds the driver lock (e.g. while its Ray starts)
    code, report = status(store)
    assert (code, report["state"], report["complete"]) == (3, "running", False)
    assert report["driver"]["pid"] == holder.pid and report["driver"]["phase"] == "starting"
    assert "starting: no shard has run yet" in run("status", store).output


def test_ray_progress_lines_count_samples_off_a_terminal(tmp_path, ray_cluster):
    # 2 shards of 4 blocks on 2 Ray workers, ~0.3 s a block (mid-shard reports every 0.25 s at most: room on a loaded host)
    job, store = write_job(tmp_path, n=32, shard_size=16, kwargs={"seconds": 0.3})
    result = run("submit", job, "--progress-interval", "0.1")
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("progress: ")]
    assert len(lines) >= 3, result.output
    counts = [int(line.split()[1].split("/")[0].replace(",", "")) for line in lines]
    done = [int(line.split("shards ")[1].split()[0]) for line in lines]
    assert counts == sorted(counts) and counts[-1] == 32 and lines[-1].endswith("0 failed of 2")
    # blocks reported from Ray workers as they are written: samples of shards not committed yet
    assert any(c > 16 * d for c, d in zip(counts, done)), lines
    assert any("eta 0:" in line and "samples/s" in line for line in lines[:-1]), lines
    assert not Path(f"{store}.driver.json").exists() and status(store)[0] == 0


def test_failed_attempts_are_one_line_each_and_inspect_shows_the_traceback(tmp_path, ray_cluster):
    job, store = write_job(tmp_path, n=16, shard_size=8, chunk_size=8, target="user_fns:fails_in_ray_task", retries=2)
    result = run("submit", job, "--progress-interval", "60")
    assert result.exit_code == 1, result.output
    out = result.output
    for shard in (0, 1):
        for attempt in (1, 2):
            line = f"shard {shard}: attempt {attempt}/3 failed, retrying: RuntimeError: this worker always fails\n"
            assert out.count(line) == 1, out
        assert (
            out.count(
                f"shard {shard}: attempt 3/3 failed, giving up: RuntimeError: this worker always fails "
                f"(traceback: pipeline inspect {store} --shard {shard})"
            )
            == 1
        ), out
    assert "Traceback" not in out and "retries remaining" not in out and "File " not in out, out
    from pipeline.store import read_manifest

    manifest = read_manifest(store).to_pydict()
    assert manifest["status"] == ["failed", "failed"] and manifest["attempts"] == [3, 3]
    assert all(
        e.startswith("Traceback (most recent call last)") and "fails_in_ray_task" in e for e in manifest["error"]
    )
    summary = run("inspect", store).output
    assert "shard 1 failed: RuntimeError: this worker always fails\n" in summary and "Traceback" not in summary
    shard = run("inspect", store, "--shard", 1)
    flat = " ".join(shard.output.split())  # rich wraps at 120 columns off a terminal: where depends on the path
    assert shard.exit_code == 0 and "shard 1 [8, 16)" in flat and "failed, 3 attempts" in flat
    assert shard.output.count("Traceback (most recent call last)") == 3
    assert 'user_fns.py", line' in shard.output and "in fails_in_ray_task" in shard.output
    bad = run("inspect", store, "--shard", 7)
    assert bad.exit_code == 2 and "--shard 7" in bad.output and "0 to 1" in bad.output


def test_the_resume_hint_drops_overwrite_once_the_store_was_replaced():
    """Run again as it was, an interrupted --overwrite would discard the shards it had committed since."""
    from pipeline.report import resume_command

    command = "pipeline submit 'my job.yaml' --overwrite --executor inline"
    assert resume_command({"command": command, "replacing": False}) == "pipeline submit 'my job.yaml' --executor inline"
    assert resume_command({"command": command, "replacing": True}) == command  # the old store is still there
    assert resume_command({"command": "pipeline submit j.yaml --local"}) == "pipeline submit j.yaml --local"


def test_an_error_with_square_brackets_is_shown_whole(tmp_path, ray_cluster):
    """The summary's first-error line is the error's own text: "[batch, 3]" is not taken for console markup."""
    message = "expected shape [batch, 3] or [/data/x]"
    job, _ = write_job(
        tmp_path, n=8, shard_size=8, chunk_size=8, target="user_fns:fails_in_ray_task", retries=0,
        kwargs={"message": message},
    )  # fmt: skip
    result = run("submit", job, "--progress-interval", "60")
    assert result.exit_code == 1, result.output
    assert f"first error (shard 0): RuntimeError: {message}" in " ".join(result.output.split()), result.output
