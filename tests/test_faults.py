"""Faults, injected with real local Ray: each run ends bit-identical to a clean run, no sample lost.

(A damaged store found by `pipeline verify` and repaired: tests/test_verify.py.)
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from pipeline.driver import submit
from pipeline.runner import RayExecutor
from pipeline.spec import load_spec, validate_spec
from pipeline.store import read_markers, summarize
from pipeline.verify import verify_store
from pipeline.watchdog import _stat, alive, descendants

ROOT = Path(__file__).resolve().parents[1]
TESTS = str(Path(__file__).resolve().parent)
sys.path.insert(0, TESTS)
from test_verify import chunk_files  # noqa: E402

JOB = """schema_version: 1
name: faults
function: {{kind: mlp, in_features: 2, hidden: [64, 64], out_features: 3}}
inputs: {{kind: uniform, n: 12000, shape: [2], seed: 4}}
quantities: [value, jacobian, hessian]
derivatives: {{dtype: float64}}
store: {{path: {store}, chunk_size: 250}}
execution: {{shard_size: 500, retries: 2}}
"""


def start_driver(tmp_path, store: str, stdout) -> tuple[subprocess.Popen, Path]:
    """``pipeline submit JOB --local -q`` of the test job in a session of its own; and its store's marker folder."""
    job = tmp_path / "job.yaml"
    job.write_text(JOB.format(store=tmp_path / store))
    driver = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "submit", str(job), "--local", "-q"],
        cwd=ROOT,
        stdout=stdout,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    return driver, tmp_path / store / "_shards"


def test_a_killed_driver_leaves_no_ray_and_resumes_bit_identical(tmp_path, ray_cluster):
    driver, markers = start_driver(tmp_path, "killed.zarr", stdout=subprocess.DEVNULL)
    ray_processes: list[tuple[int, int]] = []
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and len(list(markers.glob("*.json"))) < 2 and driver.poll() is None:
            time.sleep(0.05)
        ray_processes = [(pid, _stat(pid)[2]) for pid in descendants(driver.pid) if _stat(pid)]
        os.kill(driver.pid, signal.SIGKILL)  # mid-run: some shards committed, some running
        driver.wait()
        assert ray_processes, "the driver had started no Ray processes"
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(alive(p, s) for p, s in ray_processes):
            time.sleep(0.2)
        left = [p for p, s in ray_processes if alive(p, s)]
        assert not left, f"Ray processes still running 10 s after the driver was killed: {left}"
        committed = len(list(markers.glob("*.json")))  # a worker may commit as its driver dies: that is kept
        assert 2 <= committed < 24, committed
    finally:
        for pid, start in ray_processes:  # ours, whatever the outcome
            if alive(pid, start):
                os.kill(pid, signal.SIGKILL)
    # the resume runs only what was not committed, and the store is a clean run's, bit for bit
    job = tmp_path / "job.yaml"
    spec = load_spec(job)
    summary = submit(spec, RayExecutor())
    assert summary.complete and summary.skipped == committed and summary.ran == 24 - committed
    clean = load_spec(job, [f"store.path={tmp_path / 'clean.zarr'}"])
    assert submit(clean, RayExecutor()).complete
    assert chunk_files(Path(spec.store.path)) == chunk_files(Path(clean.store.path))
    assert verify_store(spec.store.path).ok and summarize(spec.store.path)["samples_done"] == 12000


def test_a_worker_killed_mid_shard_is_retried_bit_identical(tmp_path, ray_cluster):
    flag = tmp_path / "kill-the-first-worker"
    flag.write_text("")

    def spec_at(name):
        return validate_spec(
            {
                "schema_version": 1,
                "name": "worker-kill",
                "function": {
                    "kind": "import",
                    "target": "user_fns:dies_once_on_a_worker",
                    "kwargs": {"flag": str(flag), "driver_pid": os.getpid()},
                    "python_path": [TESTS],
                },
                "inputs": {"kind": "uniform", "n": 4000, "shape": [2], "seed": 2},
                "quantities": ["value", "jacobian", "hessian"],
                "derivatives": {"dtype": "float64", "method": "taylor"},  # auto may time a close call either way
                "store": {"path": str(tmp_path / name), "chunk_size": 250},
                "execution": {"shard_size": 500, "retries": 2},
            }
        )

    spec = spec_at("killed.zarr")
    summary = submit(spec, RayExecutor())
    assert not flag.exists()  # a worker did die (SIGKILL), mid-shard, after its attempt began
    assert summary.complete and not summary.failed
    attempts = {i: r.attempts for i, r in read_markers(spec.store.path).items()}
    assert sorted(attempts.values()) == [1] * 7 + [2]  # exactly one shard needed a second attempt
    clean = spec_at("clean.zarr")
    assert submit(clean, RayExecutor()).complete
    assert chunk_files(Path(spec.store.path)) == chunk_files(Path(clean.store.path))


def test_a_full_disk_at_the_finalize_is_one_message_that_says_the_run_resumes(tmp_path, monkeypatch):
    import pytest

    import pipeline.driver
    from pipeline.runner import InlineExecutor
    from pipeline.store import StoreError

    job = tmp_path / "job.yaml"
    job.write_text(JOB.format(store=tmp_path / "full.zarr").replace("n: 12000", "n: 1000"))
    spec = load_spec(job)

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pipeline.driver, "append_run", full)
    with pytest.raises(StoreError, match=r"No space left on device.*once the disk has room.*\(it resumes\)"):
        submit(spec, InlineExecutor())  # exit 2 with this line, not an OSError traceback
    monkeypatch.undo()
    assert submit(spec, InlineExecutor()).complete


def test_sigterm_stops_the_driver_as_ctrl_c_does(tmp_path):
    """`timeout`, a batch scheduler's cancel, `kill`: exit 130 with the resume message, not Ray's abort (134)."""
    driver, markers = start_driver(tmp_path, "term.zarr", stdout=subprocess.PIPE)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and not list(markers.glob("*.json")) and driver.poll() is None:
        time.sleep(0.05)
    os.kill(driver.pid, signal.SIGTERM)
    begin = time.monotonic()
    output, _ = driver.communicate(timeout=120)
    # within the grace `ray job stop` gives before its SIGKILL (3 s); Ray's exit hooks alone took 4
    assert time.monotonic() - begin < 3, output
    assert driver.returncode == 130, output
    assert "interrupted: committed shards are kept" in output and "SIGTERM received" not in output
    assert summarize(tmp_path / "term.zarr")["done"] >= 1


def test_what_a_killed_overwrite_left_beside_the_store_is_removed_by_the_next_run(tmp_path, monkeypatch):
    """A driver killed while --overwrite deletes the old store leaves it moved aside, hidden; the next run removes it."""
    import shutil

    import pytest

    from pipeline.runner import InlineExecutor

    job = tmp_path / "job.yaml"
    job.write_text(JOB.format(store=tmp_path / "s.zarr").replace("n: 12000", "n: 1000"))
    spec = load_spec(job)
    assert submit(spec, InlineExecutor()).complete
    real = shutil.rmtree

    def killed(target, *args, **kwargs):  # the driver dies before it deletes the old store it moved aside
        if str(target).endswith(".old"):
            raise KeyboardInterrupt
        real(target, *args, **kwargs)

    monkeypatch.setattr(shutil, "rmtree", killed)
    with pytest.raises(KeyboardInterrupt):
        submit(spec, InlineExecutor(), overwrite=True)
    monkeypatch.undo()
    (tmp_path / ".s.zarr.keep").mkdir()  # a user's own folder: not ours to remove
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".s.zarr.staging-")]
    assert len(leftovers) == 1 and leftovers[0].endswith(".old")  # the whole old store, hidden
    assert submit(spec, InlineExecutor()).complete
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".s.zarr")) == [".s.zarr.keep"]


def test_a_full_disk_starts_no_more_shards_and_says_so(tmp_path, monkeypatch):
    """ENOSPC at shard 3's commit: not retried, the later shards never start, and the console says why and the fix."""
    from click.testing import CliRunner

    import pipeline.tasks
    from pipeline.cli import main
    from pipeline.runner import InlineExecutor

    real = pipeline.tasks.write_marker
    calls = []

    def full_from_shard_3(store, record):
        calls.append(record.shard_id)
        if record.shard_id >= 3:
            raise OSError(28, "No space left on device")
        real(store, record)

    monkeypatch.setattr(pipeline.tasks, "write_marker", full_from_shard_3)
    job = tmp_path / "job.yaml"
    job.write_text(JOB.format(store=tmp_path / "full.zarr").replace("n: 12000", "n: 4000"))  # 8 shards
    result = CliRunner().invoke(main, ["submit", str(job), "--executor", "inline"])
    assert result.exit_code == 1, result.output
    assert calls == [0, 1, 2, 3]  # shard 3 once (no retries), shards 4-7 never computed
    assert "retrying" not in result.output and "shard 3: attempt 1/3 failed, giving up" in result.output
    assert "1 of 8 shards failed" in result.output
    assert "is full (or over its quota), so the other 4 shards were not started" in result.output
    monkeypatch.undo()
    assert summarize(tmp_path / "full.zarr")["done"] == 3
    assert submit(load_spec(job), InlineExecutor()).complete  # room again: it resumes


def test_sigterm_stops_an_inline_driver_as_ctrl_c_does(tmp_path):
    """No Ray to set the handler: SIGTERM still finalizes, says so and exits 130, and the rerun resumes."""
    from pipeline.runner import InlineExecutor

    job = tmp_path / "job.yaml"
    job.write_text(JOB.format(store=tmp_path / "term.zarr").replace("n: 12000", "n: 4000"))
    driver = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "submit", str(job), "--executor", "inline", "-q"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    markers = tmp_path / "term.zarr" / "_shards"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not list(markers.glob("*.json")) and driver.poll() is None:
        time.sleep(0.01)
    os.kill(driver.pid, signal.SIGTERM)  # mid-run: one shard committed, 7 to go
    output, _ = driver.communicate(timeout=60)
    assert driver.returncode == 130, output
    assert "interrupted: committed shards are kept" in output
    assert (tmp_path / "term.zarr" / "manifest.parquet").exists()  # finalized with what it committed
    spec = load_spec(job)
    summary = submit(spec, InlineExecutor())
    assert summary.complete and summary.skipped >= 1 and verify_store(spec.store.path).ok


INTERRUPTED_IMPORT = """
import os, signal, sys


class CtrlC:  # Ctrl-C while `pipeline submit` imports the driver (torch: seconds)
    def find_spec(self, name, path=None, target=None):
        if name == "pipeline.driver":
            os.kill(os.getpid(), signal.SIGINT)
        return None


sys.meta_path.insert(0, CtrlC())
from pipeline.cli import main

main(sys.argv[1:])
"""


def test_ctrl_c_while_submit_starts_is_an_interrupt_not_click_abort(tmp_path):
    """A Ctrl-C in the seconds before the job is loaded: exit 130 and the interrupted line, nothing written."""
    job = tmp_path / "job.yaml"
    job.write_text(JOB.format(store=tmp_path / "s.zarr"))
    done = subprocess.run(
        [sys.executable, "-c", INTERRUPTED_IMPORT, "submit", str(job), "--executor", "inline", "-q"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 130, output
    assert "interrupted before any store was written" in output and "Aborted!" not in output
    assert list(tmp_path.iterdir()) == [job]


def test_ctrl_c_in_a_repair_after_the_un_commit_says_the_store_is_kept_and_the_rerun_repairs(tmp_path):
    """`verify --repair` interrupted once it has un-committed the damaged shards: not "before any store was written"."""
    from pipeline.runner import InlineExecutor

    job = tmp_path / "job.yaml"
    job.write_text(JOB.format(store=tmp_path / "s.zarr").replace("n: 12000", "n: 1000"))
    spec = load_spec(job)
    assert submit(spec, InlineExecutor()).complete
    chunk = next(p for p in sorted((tmp_path / "s.zarr" / "value").rglob("*")) if p.is_file() and p.name != "zarr.json")
    chunk.unlink()  # shard 0 damaged
    repair = ["verify", str(tmp_path / "s.zarr"), "--repair", "--executor", "inline", "-q"]
    done = subprocess.run(
        [sys.executable, "-c", INTERRUPTED_IMPORT, *repair], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    output = done.stdout + done.stderr
    assert done.returncode == 130 and "un-committed shards 0" in output, output
    assert "interrupted: committed shards are kept; run the same command again" in output, output
    again = subprocess.run([sys.executable, "-m", "pipeline.cli", *repair], cwd=ROOT, capture_output=True, text=True)
    assert again.returncode == 0, again.stdout + again.stderr
    assert verify_store(spec.store.path).ok


def test_temporaries_of_killed_writes_are_removed_when_the_store_completes(tmp_path):
    """A worker or driver SIGKILLed between a write and its rename leaves its temporary file (a ``.partial`` chunk
    file can be megabytes); once every shard has committed, the finalize removes them, and nothing else."""
    from pipeline.runner import InlineExecutor
    from pipeline.store import uncommit_shards

    job = tmp_path / "job.yaml"
    job.write_text(JOB.format(store=tmp_path / "s.zarr").replace("n: 12000", "n: 1000"))
    spec = load_spec(job)
    store = tmp_path / "s.zarr"
    assert submit(spec, InlineExecutor()).complete
    clean = chunk_files(store)
    uncommit_shards(store, [1])  # as a shard whose worker was killed: the next run computes it again
    chunk = next(store / name for name in clean if name.startswith("hessian/"))
    left = [
        chunk.with_name(f"{chunk.name}.5f0e0c6a.partial"),  # chunk_files.store_chunk's temporary name
        store / "_shards" / ".1.json.999999.tmp",  # store.write_marker's
        store / "_shards" / ".0.progress.999999.7.tmp",  # live._put_json's
        store / ".manifest.parquet.999999.tmp",  # store._write_manifest's
        tmp_path / ".s.zarr.driver.json.999999.7.tmp",  # the driver's record, beside the store
    ]
    for file in left:
        file.write_bytes(b"half a write")
    kept = [tmp_path / ".s.zarr.keep", store / "_shards" / "notes.txt"]  # not written by a pipeline process
    for file in kept:
        file.write_text("mine")
    assert submit(spec, InlineExecutor()).complete
    assert [file.name for file in left if file.exists()] == []
    assert all(file.exists() for file in kept)
    assert chunk_files(store) == clean and verify_store(store).ok


def test_a_manifest_write_interrupted_leaves_no_temporary(tmp_path, monkeypatch):
    """Ctrl-C while the finalize writes the manifest: its half-written ``.manifest.parquet.<pid>.tmp`` was left."""
    import pyarrow.parquet as pq
    import pytest

    from pipeline.runner import InlineExecutor

    job = tmp_path / "job.yaml"
    job.write_text(JOB.format(store=tmp_path / "s.zarr").replace("n: 12000", "n: 1000"))
    spec = load_spec(job)

    real = pq.ParquetWriter.write_table

    def interrupted(self, table, *args, **kwargs):  # Ctrl-C at the finalize, after the manifest's first batch
        real(self, table, *args, **kwargs)
        if "status" in table.column_names:  # the manifest's rows, not the plan's
            raise KeyboardInterrupt

    monkeypatch.setattr(pq.ParquetWriter, "write_table", interrupted)
    with pytest.raises(KeyboardInterrupt):
        submit(spec, InlineExecutor())
    monkeypatch.undo()
    assert [p.name for p in (tmp_path / "s.zarr").iterdir() if p.name.endswith(".tmp")] == []
    assert submit(spec, InlineExecutor()).complete and verify_store(tmp_path / "s.zarr").ok


def test_a_worker_that_does_not_see_the_drivers_store_says_so_and_writes_nothing(tmp_path):
    """A local store.path on a cluster of machines without a shared disk: a worker elsewhere found no store (its
    first write failed on the missing _shards folder, FileNotFoundError), or another store made at the same path
    on its own disk, and wrote into that one. Simulated on one machine: while the shards run, the path holds no
    store, then another job's store."""
    import shutil

    from pipeline.runner import InlineExecutor

    job = tmp_path / "job.yaml"
    job.write_text(JOB.format(store=tmp_path / "s.zarr").replace("n: 12000", "n: 1000"))
    spec = load_spec(job)
    other = load_spec(job, [f"store.path={tmp_path / 'other.zarr'}"])
    assert submit(other, InlineExecutor()).complete  # a store made on "that machine"
    other_files = chunk_files(tmp_path / "other.zarr")
    store = tmp_path / "s.zarr"

    class Elsewhere(InlineExecutor):
        """Runs the shards where ``store`` shows what ``view`` puts there."""

        def __init__(self, view):
            self.view = view

        def run(self, unit, spec, shards, on_done, on_failed):
            store.rename(tmp_path / "hidden.zarr")
            self.view()
            try:
                super().run(unit, spec, shards, on_done, on_failed)
            finally:
                self.left = chunk_files(store) if store.exists() else None  # what the shards did there
                shutil.rmtree(store, ignore_errors=True)
                (tmp_path / "hidden.zarr").rename(store)

    summary = submit(spec, Elsewhere(lambda: None))
    assert not summary.complete and len(summary.failed) == 2
    for record in summary.failed.values():
        assert "StoreNotHere" in record.error and "does not exist on this worker's machine" in record.error
        assert "use a bucket URL" in record.error and "every node sees" in record.error
    assert not list((store / "_shards").glob("*.json"))

    elsewhere = Elsewhere(lambda: shutil.copytree(tmp_path / "other.zarr", store))
    summary = submit(spec, elsewhere)
    assert not summary.complete
    assert all("holds another store than the driver's" in r.error for r in summary.failed.values())
    assert elsewhere.left == other_files  # the other store was not written into

    summary = submit(spec, InlineExecutor())  # where the store is seen, the same command finishes the job
    assert summary.complete and verify_store(store).ok
