"""bench/gpu.sh's one call, dry run on the CPU in quick mode: every part of it still runs and writes its table."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_one_call_dry_run_writes_each_part_as_it_finishes(tmp_path):
    out = tmp_path / "out"
    env = {
        **os.environ,
        "OUT": str(out),
        "E2E_DIR": str(tmp_path / "e2e"),
        "PYTHON": sys.executable,
        "GPU_CALL_LIMIT": "100",
    }
    result = subprocess.run(
        ["bash", "bench/gpu.sh", "--device", "cpu", "--quick"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "## done after" in result.stdout
    assert sorted(p.name for p in out.iterdir()) == ["derivatives.txt", "device.txt", "e2e.txt", "sweeps.txt"]
    assert "| taylor" in (out / "derivatives.txt").read_text() or "taylor" in (out / "derivatives.txt").read_text()
    assert "| 4 |" in (out / "sweeps.txt").read_text()
    e2e = (out / "e2e.txt").read_text()
    assert "## exit 0" in e2e and "complete" in e2e, e2e
    assert not (tmp_path / "e2e").exists()  # the job's store is removed, never sent back
