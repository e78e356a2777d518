"""Provenance: store attributes (who, where, which commit, each run's start and end) and manifest columns."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
from click.testing import CliRunner

from pipeline.cli import main
from pipeline.provenance import git_state

ROOT = Path(__file__).resolve().parents[1]
JOB = str(ROOT / "jobs/quickstart.yaml")
SMALL = [
    "--executor",
    "inline",
    "-q",
    "--set",
    "inputs.n=2048",
    "--set",
    "store.chunk_size=512",
    "--set",
    "execution.shard_size=1024",
]


def expected_git() -> dict | None:
    try:
        commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
    except OSError:
        return None
    if commit.returncode:
        return None
    status = subprocess.run(
        ["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True
    ).stdout
    return {"commit": commit.stdout.strip(), "dirty": bool(status.strip())}


def test_store_records_who_ran_it_from_which_commit_and_each_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for _ in range(2):  # a run, then a resume with nothing left to do
        result = CliRunner().invoke(main, ["submit", JOB, *SMALL])
        assert result.exit_code == 0, result.output
    attributes = json.loads((tmp_path / "results/quickstart.zarr/zarr.json").read_text())["attributes"]
    provenance = attributes["provenance"]
    assert provenance["job_file"] == JOB and provenance["cwd"] == str(tmp_path) and provenance["host"]
    git = expected_git()
    if git is None:
        assert provenance["git"] is None
    else:
        assert {k: provenance["git"][k] for k in ("commit", "dirty")} == git
    runs = attributes["runs"]
    assert [r["shards_run"] for r in runs] == [2, 0] and all(r["shards_failed"] == 0 for r in runs)
    assert runs[0]["started_epoch"] <= runs[0]["finished_epoch"] <= runs[1]["started_epoch"]
    manifest = pq.read_table(tmp_path / "results/quickstart.zarr/manifest.parquet").to_pylist()
    for row in manifest:
        assert row["job"] == "quickstart" and row["spec_hash"] == attributes["spec_hash"]
        assert runs[0]["started_epoch"] - 1 <= row["started"] <= row["finished"] <= runs[0]["finished_epoch"] + 1
        assert row["worker"].split(":")[0] == row["host"]


def test_manifests_of_many_stores_group_and_order_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for seed in (1, 0):  # seed 1 first: ordering by start must put it first whatever the names
        result = CliRunner().invoke(
            main,
            ["submit", JOB, *SMALL, "--set", f"function.seed={seed}", "--set", f"store.path=results/seed{seed}.zarr"],
        )
        assert result.exit_code == 0, result.output
    paths = sorted(str(p) for p in tmp_path.glob("results/*.zarr/manifest.parquet"))
    shards = ds.dataset(paths, format="parquet").to_table()
    runs = (
        shards.filter(pc.equal(shards["status"], "done"))
        .group_by(["job", "spec_hash"])
        .aggregate([("started", "min"), ("stop", "max"), ("status", "count")])
        .sort_by([("started_min", "ascending")])
    ).to_pylist()
    hashes = [
        json.loads((tmp_path / f"results/seed{s}.zarr/zarr.json").read_text())["attributes"]["spec_hash"]
        for s in (1, 0)
    ]
    assert [r["spec_hash"] for r in runs] == hashes and len(set(hashes)) == 2
    assert all(r["stop_max"] == 2048 and r["status_count"] == 2 for r in runs)


def test_git_state_is_none_outside_a_work_tree(tmp_path):
    assert git_state(tmp_path / "job.yaml") is None
