"""Cluster overheads, measured side by side in one run on `ray start` clusters on this machine.

1. Per-shard overhead at the default shard size (4096 samples of
   jobs/quickstart.yaml) on a head + 2 workers (1 CPU each): the time a shard
   spends computing and writing (the manifest's `seconds`) against what Ray
   adds around it: scheduling a task on a warm worker, and a worker's start
   plus loading the shard function (a new job's first tasks).
2. The same job (8 shards) on 1 node of 3 CPUs vs 3 nodes of 1 CPU: the time
   of `pipeline submit` (driver start included) and the ratio.

    .venv/bin/python bench/cluster.py
"""

from __future__ import annotations

import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from rayheads import start_cluster  # noqa: E402

JOB = str(ROOT / "jobs/quickstart.yaml")
SHARDS = 8
SHARD = 4096

PROBE = """
import sys, time, ray
ray.init(address=sys.argv[1], logging_level="ERROR", log_to_driver=False)
from pipeline.tasks import run_shard
f = ray.remote(num_cpus=1)(lambda *a: None)
big = ray.remote(num_cpus=1)(lambda *a: run_shard.__name__)   # the shard function's module loaded on the worker
t = time.perf_counter(); ray.get([big.remote() for _ in range(3)]); cold = (time.perf_counter() - t)
t = time.perf_counter(); n = 60; ray.get([f.remote() for _ in range(n)]); warm = (time.perf_counter() - t) * 3 / n
print(cold, warm)
"""


def submit(cluster, store: Path) -> tuple[float, list[float]]:
    import pyarrow.parquet as pq

    begin = time.perf_counter()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline",
            "submit",
            JOB,
            "--address",
            cluster.address,
            "-q",
            "--set",
            f"inputs.n={SHARDS * SHARD}",
            "--set",
            f"store.path={store}",
        ],
        capture_output=True,
        text=True,
        env=cluster.env,
        cwd=ROOT,
    )
    wall = time.perf_counter() - begin
    assert result.returncode == 0, result.stderr[-3000:]
    return wall, pq.read_table(store / "manifest.parquet").column("seconds").to_pylist()


def main() -> None:
    rows = []
    tmp = Path(tempfile.mkdtemp(prefix="plc-bench-"))
    three = start_cluster(num_cpus=1, workers=[1, 1])
    try:
        out = subprocess.run(
            [sys.executable, "-c", PROBE, three.address], capture_output=True, text=True, env=three.env, cwd=ROOT
        )
        assert out.returncode == 0, out.stderr[-3000:]
        cold, warm = map(float, out.stdout.split()[-2:])
        wall3, seconds = submit(three, tmp / "three.zarr")
    finally:
        three.stop()
    one = start_cluster(num_cpus=3)
    try:
        wall1, _ = submit(one, tmp / "one.zarr")
    finally:
        one.stop()
    shard = sum(seconds) / len(seconds)
    rows.append(("shard compute + write (manifest seconds, mean)", f"{shard:.3f} s", "1.00"))
    rows.append(("task scheduling on a warm worker", f"{warm * 1000:.1f} ms", f"{warm / shard:.3f}"))
    rows.append(("worker start + function load (a job's first task)", f"{cold:.2f} s", f"{cold / shard:.2f}"))
    rows.append((f"job, {SHARDS} shards: 1 node x 3 CPUs", f"{wall1:.1f} s", "1.00"))
    rows.append((f"job, {SHARDS} shards: 3 nodes x 1 CPU", f"{wall3:.1f} s", f"{wall3 / wall1:.2f}"))
    print(
        f"machine: {platform.processor() or platform.machine()}, {__import__('os').cpu_count()} cores, "
        f"python {platform.python_version()}, ray {__import__('ray').__version__}"
    )
    print("| measurement | time | ratio |")
    print("|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
