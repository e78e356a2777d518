"""--accept-changed-code: resume after fixing the function's module; the store says which shards ran under which code."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

from pipeline.store import open_results, read_attributes, read_manifest

ROOT = Path(__file__).resolve().parents[1]

BROKEN = "import torch\n\ndef f(x):\n    return 0 * torch.sqrt(x[0] - 0.4) + (x ** 2).sum()   # NaN below 0.4: a bug\n"
FIXED = "import torch\n\ndef f(x):\n    return (x ** 2).sum()\n"


def submit(job, *extra):
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "submit", str(job), "--executor", "inline", "-q", *extra],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_a_fixed_module_resumes_with_accept_changed_code(tmp_path):
    module = tmp_path / "buggy_fns.py"
    module.write_text(BROKEN)
    job = tmp_path / "job.yaml"
    # a grid from 0 to 1, one x[0] per shard: shards 0 and 1 (x[0] = 0, 1/3) hit the bug and fail
    job.write_text(
        "schema_version: 1\nname: fix\nfunction: {kind: import, target: 'buggy_fns:f'}\n"
        "inputs: {kind: grid, axes: [{low: 0, high: 1, num: 4}, {low: 0, high: 1, num: 8}]}\n"
        "quantities: [value, jacobian]\nderivatives: {dtype: float64, method: taylor}\n"
        f"store: {{path: {tmp_path / 's.zarr'}, chunk_size: 8}}\n"
        "execution: {shard_size: 8, retries: 0, on_nonfinite: fail}\n"
    )
    first = submit(job)
    assert first.returncode == 1, first.stderr
    before = read_manifest(tmp_path / "s.zarr").to_pydict()
    assert before["status"] == ["failed", "failed", "done", "done"]
    module.write_text(FIXED)  # the fix
    refused = submit(job)
    assert refused.returncode == 2 and "function.target" in refused.stderr and "--accept-changed-code" in refused.stderr
    resumed = submit(job, "--accept-changed-code")
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed: 2 shards were already committed" in resumed.stderr and "2 shards run" in resumed.stdout
    manifest = read_manifest(tmp_path / "s.zarr").to_pydict()
    old_code, new_code = manifest["code"][2], manifest["code"][0]
    assert manifest["status"] == ["done"] * 4 and old_code and new_code and old_code != new_code
    assert manifest["code"] == [new_code, new_code, old_code, old_code]
    history = read_attributes(tmp_path / "s.zarr")["code_history"]
    assert [(h["before"], h["after"]) for h in history] == [(old_code, new_code)]
    ds = open_results(tmp_path / "s.zarr", require_complete=True)
    x = ds.inputs.values
    np.testing.assert_allclose(ds.value.values, (x**2).sum(axis=1), rtol=1e-14)
    np.testing.assert_allclose(ds.jacobian.values, 2 * x, rtol=1e-14)
    # a later plain resume accepts the recorded (fixed) module as it is now
    assert submit(job).returncode == 0
