"""CLI manners: submit --dry-run, inspect --json, -q / -v and Ray's own logging."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import zarr
from click.testing import CliRunner

from pipeline.cli import main
from pipeline.store import summarize

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--set", "inputs.n=2048", "--set", "store.chunk_size=1024", "--set", "execution.shard_size=1024"]


def test_dry_run_prints_the_plan_and_an_estimate_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["submit", str(ROOT / "jobs/quickstart.yaml"), "--dry-run", *SMALL])
    assert result.exit_code == 0, result.output
    assert "2,048 samples in 2 shards of 1024 (chunks of 1024)" in result.output
    # inputs 2 + value 3 + jacobian 6 + hessian 12 + laplacian 3 = 26 float32 per sample
    assert "results: 208.0 KiB to write" in result.output
    assert "probe: 1024 samples in" in result.output and "estimated compute:" in result.output
    sweep = CliRunner().invoke(
        main,
        [
            "submit",
            str(ROOT / "jobs/sweep.yaml"),
            "--dry-run",
            "--set",
            "sweep.axes.T0_mean.num=4",
            "--set",
            "solver.options.t_end=0.1",
        ],
    )
    assert sweep.exit_code == 0, sweep.output
    assert "256 cases in 1 shard of 256" in sweep.output and "probe: 8 cases in" in sweep.output
    assert list(tmp_path.rglob("*")) == []  # no store, no lock, no results folder


def test_dry_run_of_bad_input_fails_like_submit(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(
        main, ["submit", str(ROOT / "jobs/grid.yaml"), "--dry-run", "--set", "function.output_names=[a]"]
    )
    assert result.exit_code == 2 and "function.output_names: 1 names for 3 outputs" in result.output


def test_inspect_json_matches_the_store(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ran = CliRunner().invoke(main, ["submit", str(ROOT / "jobs/quickstart.yaml"), "--executor", "inline", "-q", *SMALL])
    assert ran.exit_code == 0, ran.output
    result = CliRunner().invoke(main, ["inspect", "results/quickstart.zarr", "--json"])
    assert result.exit_code == 0
    facts = json.loads(result.output)
    assert (
        facts["complete"] and facts["name"] == "quickstart" and facts["shards"] == summarize("results/quickstart.zarr")
    )
    group = zarr.open_group("results/quickstart.zarr", mode="r")
    assert {a["name"]: a["shape"] for a in facts["arrays"]} == {k: list(group[k].shape) for k in group.array_keys()}
    assert facts["manifest"]["max_attempts"] == 1 and facts["failed"] == []
    bad = CliRunner().invoke(main, ["inspect", "nothing.zarr", "--json"])
    assert bad.exit_code == 2


def test_quiet_silences_rays_own_logging(tmp_path):
    """`-q` on a fresh local Ray: no INFO lines, no token warning, no progress; the result line stays."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    done = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "submit", str(ROOT / "jobs/quickstart.yaml"), "--local", "-q", *SMALL],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("complete: ")
    assert "INFO" not in done.stderr and "Token" not in done.stderr and "shards" not in done.stderr, done.stderr


def test_quiet_inline_run_prints_no_warnings(tmp_path):
    """`-q` in one process: nothing on stderr (zarr's listing warnings about our Parquet files and markers neither)."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline.cli",
            "submit",
            str(ROOT / "jobs/quickstart.yaml"),
            "--executor",
            "inline",
            "-q",
            *SMALL,
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("complete: ")
    assert "Warning" not in done.stderr, done.stderr


def test_a_job_smaller_than_one_shard_is_said_as_one_shard_of_its_size():
    result = CliRunner().invoke(main, ["validate", str(ROOT / "jobs/quickstart.yaml"), "--set", "inputs.n=100"])
    assert result.exit_code == 0, result.output
    assert "1 shard of 100 samples" in result.output  # not the shard_size, which no shard reaches
    dry = CliRunner().invoke(main, ["submit", str(ROOT / "jobs/quickstart.yaml"), "--dry-run", "--set", "inputs.n=100"])
    assert dry.exit_code == 0 and "100 samples in 1 shard of 100 " in dry.output, dry.output
