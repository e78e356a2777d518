"""GPU workers that the autoscaler starts: Ray's fake multi-node autoscaler with a node type that declares GPU: 1.

From zero workers, `pipeline submit` (gpus_per_task: auto) asks for one GPU
per shard although no node has a GPU yet; the autoscaler starts "GPU" workers,
the shards run on them (the manifest names the Ray node and the GPU ids Ray
assigned; a fake GPU has no CUDA, so the torch device is `cpu`), and the
workers go away again when idle.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from rayheads import alive_nodes, start_autoscaling_cluster

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def gpu_cluster():
    cluster = start_autoscaling_cluster(
        {"gpu_worker": {"resources": {"CPU": 1, "GPU": 1}, "min_workers": 0, "max_workers": 2}}
    )
    yield cluster
    cluster.stop()


def test_the_autoscaler_starts_gpu_workers_for_the_shards_and_stops_them(gpu_cluster, tmp_path):
    assert [n.get("GPU", 0) for n in alive_nodes(gpu_cluster)] == [0]  # the head alone, no GPU yet
    store = tmp_path / "gpu.zarr"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline",
            "submit",
            "jobs/quickstart.yaml",
            "--address",
            gpu_cluster.address,
            "--set",
            f"store.path={store}",
            "--set",
            "inputs.n=4096",
            "--set",
            "store.chunk_size=2048",
            "--set",
            "execution.shard_size=2048",
            "--set",
            "quantities=[value, jacobian]",
        ],
        capture_output=True,
        text=True,
        env=gpu_cluster.env,
        cwd=ROOT,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert "executor: ray (1 CPUs, 0 GPUs, 1 nodes)" in result.stderr  # none when the job starts ...
    assert "wait for the autoscaler to start GPU workers (gpu_worker)" in result.stderr  # ... so it says it waits
    manifest = pq.read_table(store / "manifest.parquet").to_pydict()
    assert set(manifest["status"]) == {"done"}
    assert all(re.fullmatch(r"cpu \(ray node [0-9a-f]{56}, GPU \d\)", d) for d in manifest["device"]), manifest[
        "device"
    ]
    nodes = {
        device.partition("(ray node ")[2].partition(",")[0] for device in manifest["device"]
    }  # Ray node ids, of the fake GPU workers
    assert not any(node.endswith("00000") for node in nodes)  # not the head (the fake provider's id ...00000)
    # idle workers are removed again (idle_timeout_minutes: 0.1; autoscaler v2 as in AutoscalingCluster(autoscaler_v2=True))
    deadline = time.monotonic() + 90
    while any(n.get("GPU", 0) for n in alive_nodes(gpu_cluster)):
        assert time.monotonic() < deadline, "the GPU workers were not scaled down"
        time.sleep(2)


def test_explicit_gpus_per_task_is_accepted_on_a_cluster_that_can_add_gpus(gpu_cluster, tmp_path):
    """Checked without running: `check` passes (before, it refused: 0 GPUs *now*)."""
    code = (
        "import sys; from pipeline.runner import RayExecutor; from pipeline.spec import load_spec\n"
        f"spec = load_spec('jobs/quickstart.yaml', ['execution.gpus_per_task=1', 'store.path={tmp_path}/x.zarr'])\n"
        f"executor = RayExecutor(address='{gpu_cluster.address}'); executor.check(spec)\n"
        "print(executor.resources(spec)[1], executor.waiting)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=gpu_cluster.env, cwd=ROOT, timeout=120
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith("1.0 the cluster has 0 GPUs now"), result.stdout


def test_node_types_are_read_on_the_head_by_a_task_for_a_driver_elsewhere(gpu_cluster):
    """A driver off the head of a `ray up` (autoscaler v1) cluster: a tiny task reads the head's config file.

    On one machine every driver is on the head, so the test says it is not (``_on_head``) and
    hides the config the autoscaler reports to the GCS (what v1 heads do not report): the
    node types then come from the task, and equal what the GCS reports.
    """
    code = (
        "import json, ray; import pipeline.cluster as c; from ray._private.state import state\n"
        f"ray.init(address='{gpu_cluster.address}', logging_level='ERROR', log_to_driver=False)\n"
        "reported = c.node_types()\n"
        "c._on_head = lambda gcs: False; state.get_cluster_config = lambda: None\n"
        "print('TYPES ' + json.dumps([reported, c.node_types()]))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=gpu_cluster.env, cwd=ROOT, timeout=120
    )
    assert result.returncode == 0, result.stderr[-3000:]
    import json

    reported, from_task = json.loads(next(line for line in result.stdout.splitlines() if line.startswith("TYPES "))[6:])
    assert from_task["gpu_worker"] == {"resources": {"CPU": 1, "GPU": 1}, "min_workers": 0, "max_workers": 2}
    assert reported["gpu_worker"]["resources"] == from_task["gpu_worker"]["resources"], (reported, from_task)
