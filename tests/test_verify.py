"""`pipeline verify` finds a damaged store, `--repair` restores it bit for bit; only committed data is visible."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline.driver import submit
from pipeline.runner import InlineExecutor
from pipeline.store import open_results, read_markers, summarize
from pipeline.verify import verify_store

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_pipeline import make_spec  # noqa: E402


def chunk_files(store: Path) -> dict[str, bytes]:
    """Every chunk file of every array, by its path in the store: what "bit-identical" compares."""
    found = {}
    for file in sorted(store.rglob("*")):
        rel = file.relative_to(store).as_posix()
        if file.is_file() and "/c/" in f"/{rel}":
            found[rel] = file.read_bytes()
    return found


def flip(file: Path, offset: int, mask: bytes) -> None:
    data = bytearray(file.read_bytes())
    for i, m in enumerate(mask):
        data[offset + i] ^= m
    file.write_bytes(bytes(data))


def pipeline_cli(*args, cwd=ROOT):
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )


@pytest.fixture
def clean_and_damaged(tmp_path):
    spec = make_spec(tmp_path, "clean.zarr", quantities=["value", "jacobian", "hessian"])
    assert submit(spec, InlineExecutor()).complete
    damaged = tmp_path / "damaged.zarr"
    shutil.copytree(spec.store.path, damaged)
    # shard 0: a chunk file deleted; shard 2: one bit flipped; shard 4: four bytes overwritten
    os.remove(damaged / "hessian" / "c" / "1" / "0" / "0" / "0")
    flip(damaged / "jacobian" / "c" / "5" / "0" / "0", 12, b"\x01")
    flip(damaged / "value" / "c" / "9" / "0", 3, b"\xff\xff\xff\xff")
    return Path(spec.store.path), damaged


def test_verify_reports_exactly_the_damaged_shards_and_repair_restores_a_clean_store(clean_and_damaged):
    clean, damaged = clean_and_damaged
    assert verify_store(clean).ok
    report = verify_store(damaged)
    assert report.damaged_shards == [0, 2, 4]
    found = {(p.kind, p.array, p.shard, p.chunk) for p in report.problems}
    assert ("missing", "hessian", 0, 1) in found and ("mismatch", "hessian", 0, None) in found
    assert ("unreadable", "jacobian", 2, 5) in found  # the crc32c codec refuses the flipped bit
    assert ("unreadable", "value", 4, 9) in found
    assert {p.shard for p in report.problems} == {0, 2, 4}
    # the CLI says the same, exit 1, --json for scripts
    run = pipeline_cli("verify", str(damaged), "--json")
    assert run.returncode == 1, run.stderr
    assert json.loads(run.stdout)["damaged_shards"] == [0, 2, 4]
    # --repair un-commits exactly those shards and recomputes them: the store is a clean run's, bit for bit
    run = pipeline_cli("verify", str(damaged), "--repair", "--executor", "inline", "-q")
    assert run.returncode == 0, run.stderr
    assert "un-committed shards 0, 2, 4" in run.stderr and "resumed: 2 shards were already committed" in run.stderr
    assert chunk_files(damaged) == chunk_files(clean)
    assert verify_store(damaged).ok and summarize(damaged)["complete"]
    assert pipeline_cli("verify", str(damaged), "-q").returncode == 0


def test_submit_repair_recomputes_the_damaged_shards(tmp_path, clean_and_damaged):
    clean, damaged = clean_and_damaged
    job = tmp_path / "job.yaml"
    job.write_text(
        "schema_version: 1\nname: t\n"
        "function: {kind: mlp, in_features: 2, hidden: [16, 16], out_features: 3, activation: tanh}\n"
        "inputs: {kind: uniform, n: 37, shape: [2], seed: 1}\nquantities: [value, jacobian, hessian]\n"
        f"derivatives: {{dtype: float64}}\nstore: {{path: {damaged}, chunk_size: 4}}\n"
        "execution: {shard_size: 8, retries: 0}\n"
    )
    # a plain resume trusts the commit markers: nothing to run, the damage stays
    run = pipeline_cli("submit", str(job), "--executor", "inline", "-q")
    assert run.returncode == 0 and "0 shards run" in run.stdout
    run = pipeline_cli("submit", str(job), "--executor", "inline", "-q", "--repair")
    assert run.returncode == 0, run.stderr
    assert "un-committed 3 damaged shards (0, 2, 4)" in run.stderr and "3 shards run" in run.stdout
    assert chunk_files(damaged) == chunk_files(clean)


def test_a_failed_attempts_partial_blocks_are_never_visible(tmp_path, monkeypatch):
    import pipeline.kinds.derivative as kind

    real = kind.compute
    calls = []

    def dies_in_shard_1_after_two_blocks(spec, shard, device, previous=None, *, budget):
        calls.append(shard.start)
        if shard.start == 24:  # the third block (of one chunk) of shard 1 = samples [16, 32)
            raise RuntimeError("worker lost mid-shard")
        return real(spec, shard, device, previous, budget=budget)

    monkeypatch.setattr(kind, "compute", dies_in_shard_1_after_two_blocks)
    spec = make_spec(
        tmp_path, "partial.zarr", quantities=["value", "jacobian"], **{"execution.shard_size": 16, "inputs.n": 48}
    )
    summary = submit(spec, InlineExecutor())
    assert not summary.complete and list(summary.failed) == [1]
    assert 16 in calls and 20 in calls  # blocks of shard 1 were computed before it died; the first is written
    import zarr

    raw = zarr.open_group(spec.store.path, mode="r", use_consolidated=False)["value"][16:20]
    assert np.isfinite(raw).all()  # they are in the store ...
    ds = open_results(spec.store.path)
    committed = ds.committed.values
    assert committed[:16].all() and not committed[16:32].any() and committed[32:].all()
    for name in ("inputs", "value", "jacobian"):
        values = ds[name].values
        assert np.isnan(values[16:32]).all(), name  # ... but never shown
        assert np.isfinite(values[:16]).all() and np.isfinite(values[32:]).all(), name
        assert ds[name].dtype == np.float64
    assert 1 not in read_markers(spec.store.path)
    # the retry completes it, and the values are those of a clean run
    monkeypatch.setattr(kind, "compute", real)
    assert submit(spec, InlineExecutor()).complete
    clean = make_spec(
        tmp_path, "clean.zarr", quantities=["value", "jacobian"], **{"execution.shard_size": 16, "inputs.n": 48}
    )
    submit(clean, InlineExecutor())
    assert chunk_files(Path(spec.store.path)) == chunk_files(Path(clean.store.path))
    assert open_results(spec.store.path).committed.values.all()


def test_checksums_are_crc32c_and_a_store_made_with_zlibs_crc32_still_verifies(clean_and_damaged):
    from dataclasses import replace

    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.store import Checksum, write_marker

    # the published check values of both polynomials, for the 9 bytes "123456789"
    data = {"x": np.frombuffer(b"123456789", dtype=np.uint8)}
    new, old = Checksum(), Checksum("crc32")
    new.update(data)
    old.update(data)
    assert new.per_array() == {"x": "e3069283"} and old.per_array() == {"x": "cbf43926"}
    assert new.hexdigest().startswith("crc32c:") and Checksum.like(old.hexdigest()).kind == "crc32"

    clean, damaged = clean_and_damaged
    ds = open_results(clean)
    for store in (clean, damaged):  # every marker rewritten as before CRC32C: zlib's CRC32 of the same bytes
        for record in read_markers(store).values():
            assert record.checksum.startswith("crc32c:")
            summer = Checksum("crc32")
            summer.update(
                {name: ds[name].values[record.start : record.stop] for name in json.loads(record.array_checksums)}
            )
            write_marker(
                store, replace(record, checksum=summer.hexdigest(), array_checksums=json.dumps(summer.per_array()))
            )
        manifest = pq.read_table(store / "manifest.parquet")  # and the manifest, which records them too
        markers = read_markers(store)
        sums = pa.array([markers[i].checksum for i in manifest.column("shard_id").to_pylist()])
        pq.write_table(
            manifest.set_column(manifest.schema.get_field_index("checksum"), "checksum", sums),
            store / "manifest.parquet",
        )
    assert verify_store(clean).ok
    report = verify_store(damaged)
    assert report.damaged_shards == [0, 2, 4]
    assert ("mismatch", "hessian", 0, None) in {(p.kind, p.array, p.shard, p.chunk) for p in report.problems}


def test_verify_of_a_path_that_is_not_a_store_is_one_line(tmp_path):
    """Exit 2 and the error line first: no progress bar's blank line before it, no store left."""
    result = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "verify", str(tmp_path / "none.zarr")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error: ") and "is not a pipeline store" in result.stderr, repr(result.stderr)
    assert not any(tmp_path.iterdir())


def test_a_sweep_store_whose_case_table_is_gone_is_damaged_beyond_shard_repair(tmp_path):
    """Every shard reads its cases from cases.parquet: with it gone verify says so and --repair refuses with the
    fix (before: "ok", and a repair's shards failed with FileNotFoundError)."""
    from test_sweep_jobs import sweep_spec

    solver = {"name": "heat1d", "options": {"nx": 16, "n_saves": 2}, "dtype": "float64"}
    spec = sweep_spec(tmp_path, {"kind": "zip", "values": {"amplitude": [1.0, 2.0, 3.0]}}, solver=solver)
    assert submit(spec, InlineExecutor()).complete
    store = Path(spec.store.path)
    assert verify_store(store).ok
    (store / "cases.parquet").unlink()
    report = verify_store(store)
    assert [(p.kind, p.array, p.shard) for p in report.problems] == [("missing", "cases.parquet", None)]
    run = pipeline_cli("verify", str(store))
    assert run.returncode == 1 and "pipeline submit JOB --overwrite" in run.stdout, run.stdout
    assert "--repair" not in run.stdout  # which would refuse
    run = pipeline_cli("verify", str(store), "--repair", "--executor", "inline", "-q")
    assert run.returncode == 2 and "cases.parquet" in run.stderr and "--overwrite" in run.stderr, run.stderr
    assert len(read_markers(store)) == 1  # nothing was un-committed


def test_a_repair_that_cannot_reach_its_cluster_un_commits_nothing(clean_and_damaged):
    """`verify --repair` without --local and without RAY_ADDRESS stops before it changes the store."""
    _, damaged = clean_and_damaged
    committed = sorted(p.name for p in (damaged / "_shards").iterdir())
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    run = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "verify", str(damaged), "--repair", "-q"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert run.returncode == 2, run.stderr
    assert "un-committed" not in run.stderr and "RAY_ADDRESS" in run.stderr, run.stderr
    assert sorted(p.name for p in (damaged / "_shards").iterdir()) == committed
    assert summarize(damaged)["complete"]


def test_a_repair_holds_the_store_lock_as_verify_repair(clean_and_damaged, monkeypatch):
    # the lock named every holder `pipeline submit`: a second driver was told to wait for a submit nobody ran
    import contextlib

    from click.testing import CliRunner

    import pipeline.lock as lock
    from pipeline.cli import main

    _, damaged = clean_and_damaged
    recorded: list[str] = []
    real = lock.store_lock

    @contextlib.contextmanager
    def recording(store, *args):
        with real(store, *args):
            recorded.append(json.loads(lock.lock_path(store).read_text())["command"])
            yield

    monkeypatch.setattr(lock, "store_lock", recording)
    result = CliRunner().invoke(main, ["verify", str(damaged), "--repair", "--executor", "inline", "-q"])
    assert result.exit_code == 0, result.output
    assert recorded == ["pipeline verify --repair"] and verify_store(damaged).ok


def test_verify_tells_its_progress_the_shard_count_before_the_first_shard_is_checked(clean_and_damaged):
    """The bar showed ``0/?`` while the first shard was read (seconds on a big store); now ``0/N`` at once."""
    clean, _ = clean_and_damaged
    calls = []
    report = verify_store(clean, threads=1, progress=lambda done, total: calls.append((done, total)))
    assert report.ok and calls[0] == (0, report.committed) and calls[-1] == (report.committed, report.committed)
    assert [done for done, _ in calls] == list(range(report.committed + 1))


def test_verify_of_a_store_a_driver_is_still_writing_says_so(tmp_path, clean_and_damaged, lock_holder):
    """ "ok: 3 of 5 shards committed" alone read as a finished check while the job was still running."""
    clean, _ = clean_and_damaged
    running = tmp_path / "running.zarr"
    shutil.copytree(clean, running)
    for marker in ("3.json", "4.json"):  # not committed yet
        (running / "_shards" / marker).unlink()
    quiet = pipeline_cli("verify", str(running))
    assert quiet.returncode == 0 and "still writing" not in quiet.stdout, quiet.stdout + quiet.stderr
    holder = lock_holder(running)
    run = pipeline_cli("verify", str(running))
    assert run.returncode == 0, run.stdout + run.stderr
    assert "ok: " in run.stdout and f"a driver is still writing this store (pid {holder.pid} on " in run.stdout
    assert json.loads(pipeline_cli("verify", str(running), "--json").stdout)["running"] is True
    assert json.loads(pipeline_cli("verify", str(clean), "--json").stdout)["running"] is False
