"""A local Ray under ``ulimit -v`` (an HPC login node, a batch job's memory limit).

Every Ray process maps the whole object store, which Ray sizes to 30% of the
machine's memory: under a limit below that plus a worker's own ~2 GB, each
worker failed to start and Ray started another forever, so `pipeline submit
--local` hung without a word. The local Ray's object store is now sized to
the limit, and a limit too small for any worker is refused up front.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline import open_results
from pipeline.errors import ClusterError
from pipeline.models import make_mlp
from pipeline.runner import RAY_WORKER_ADDRESS_SPACE, object_store_under_limit, ray_default_object_store

ROOT = Path(__file__).resolve().parent.parent
GIB = 2**30


def test_the_object_store_is_sized_to_the_limit_and_a_too_small_limit_is_refused():
    assert object_store_under_limit(None, 7 * GIB) is None  # no limit: Ray's default
    assert object_store_under_limit(64 * GIB, 7 * GIB) is None  # Ray's default fits in a quarter of 64 GiB
    for limit in (4 * GIB, 8 * GIB, 12 * GIB):
        size = object_store_under_limit(limit, 7 * GIB)
        assert size == limit // 4
        assert size + RAY_WORKER_ADDRESS_SPACE + size <= limit  # a worker maps it and keeps as much for its chunks
    with pytest.raises(ClusterError, match=r"ulimit -v 3145728\).*4 GiB or more.*--executor inline"):
        object_store_under_limit(3 * GIB, 7 * GIB)


def _submit(tmp_path: Path, limit: int, *extra: str) -> subprocess.CompletedProcess:
    store = tmp_path / "limited.zarr"
    overrides = ["inputs.n=512", "store.chunk_size=128", "execution.shard_size=256", f"store.path={store}"]
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "submit", str(ROOT / "jobs/quickstart.yaml"), "-q", *extra]
        + [arg for override in overrides for arg in ("--set", override)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=240,  # the old code hung here (workers failing to start, forever)
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (limit, resource.RLIM_INFINITY)),
    )


def test_a_local_ray_runs_under_a_limit_below_its_default_object_store(tmp_path):
    # Ray's own object store plus 1 GiB: no worker (~2 GiB of its own) fits beside it; at least 5 GiB
    limit = max(5 * GIB, ray_default_object_store() + GIB)
    result = _submit(tmp_path, limit, "--local")
    assert result.returncode == 0, result.stdout + result.stderr
    ds = open_results(tmp_path / "limited.zarr", require_complete=True)
    # the values against the built-in MLP itself, in float64 (jobs/quickstart.yaml: 2 -> 32 -> 32 -> 3, tanh, seed 0)
    function = make_mlp(2, [32, 32], 3, "tanh", seed=0).to(torch.float64)
    with torch.no_grad():
        expected = function(torch.as_tensor(ds.inputs.values, dtype=torch.float64)).numpy()
    np.testing.assert_allclose(ds.value.values, expected, rtol=1e-5, atol=1e-6)


def test_a_limit_no_ray_worker_fits_under_is_one_message_and_no_store(tmp_path):
    result = _submit(tmp_path, 3 * GIB, "--local")
    assert result.returncode == 2, result.stdout + result.stderr
    assert "ulimit -v" in result.stderr and "--executor inline" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "limited.zarr").exists() and sorted(os.listdir(tmp_path)) == []
