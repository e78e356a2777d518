"""The driver at scale: plan, track and finalize the seed-000 job of 1e10 samples, the shards' work simulated.

What runs is the real driver (``driver.submit``: prepare and plan, the store
created, the lock, ``live.LiveRun`` tracking progress from ``_shards/``, the
finalize writing the manifest and consolidating the store) with a simulated
executor in place of Ray: for each shard it does what a worker does when it
commits (``store.write_marker``, one JSON file per shard) and reports the
record, without computing or writing arrays. So the figures are the driver's
own: its peak memory above the imported baseline and its seconds per phase.

Run: ``python bench/scale.py`` (1e10 samples at the default shard size of
4,096: 2,441,407 shards, ~10 GB of marker files on local disk, a few minutes)
or ``python bench/scale.py --shards 100000`` for a smaller plan; ``--json``
prints one JSON object (what tests/test_scale.py reads).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
JOB = ROOT / "jobs/seed000.yaml"


def rss_bytes() -> int:
    """This process's resident memory now (from /proc; 0 where there is none)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except OSError:
        return 0
    return pages * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


class SimulatedExecutor:
    """The executor protocol of ``runner``, the shards' work reduced to their commit (marker + record)."""

    def __init__(self) -> None:
        self.run_began = self.run_ended = 0.0
        self.host = socket.gethostname()

    def start(self) -> None:
        pass

    def describe(self) -> str:
        return "simulated"

    def check(self, spec) -> None:
        pass

    def run(self, unit, spec, shards, on_done, on_failed) -> None:
        from pipeline.store import ShardRecord, write_marker

        self.run_began = time.perf_counter()
        for shard in shards:
            now = time.time()
            record = ShardRecord.done(
                shard,
                attempts=1,
                host=self.host,
                device="simulated",
                seconds=0.0,
                started=now,
                finished=now,
                worker=f"{self.host}:{os.getpid()}",
            )
            write_marker(spec.store.path, record)
            on_done(record)
        self.run_ended = time.perf_counter()


def measure(samples: int, shard_size: int, folder: Path) -> dict:
    """Plan, track and finalize ``samples`` samples in shards of ``shard_size`` into a store under ``folder``."""
    import pyarrow.parquet as pq

    from pipeline.driver import prepare, submit
    from pipeline.spec import load_spec

    store = folder / "scale.zarr"
    spec = load_spec(
        str(JOB),
        [
            f"inputs.n={samples}",
            f"execution.shard_size={shard_size}",
            f"store.path={store}",
            "store.check_free_space=false",
        ],
    )
    baseline = rss_bytes()
    began = time.perf_counter()
    prepared = prepare(spec)
    planned = time.perf_counter()
    executor = SimulatedExecutor()
    summary = submit(spec, executor, prepared=prepared)
    ended = time.perf_counter()
    driver_peak = peak_rss_bytes()  # the driver's own peak, before this bench reads anything back
    manifest = pq.read_table(store / "manifest.parquet", columns=["status"])
    statuses = manifest.column("status").value_counts().to_pylist()
    result = {
        "samples": samples,
        "shard_size": shard_size,
        "shards": summary.total,
        "committed": summary.ran,
        "complete": summary.complete,
        "manifest_rows": manifest.num_rows,
        "manifest_status": {item["values"]: item["counts"] for item in statuses},
        "manifest_bytes": (store / "manifest.parquet").stat().st_size,
        "plan_bytes": (store / "plan.parquet").stat().st_size,
        "seconds_plan": planned - began,
        "seconds_create": executor.run_began - planned,
        "seconds_track": executor.run_ended - executor.run_began,
        "seconds_finalize": ended - executor.run_ended,
        "seconds_total": ended - began,
        "baseline_rss_bytes": baseline,
        "peak_rss_bytes": driver_peak,
    }
    result["driver_bytes"] = result["peak_rss_bytes"] - baseline
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=float, default=1e10, help="samples in the job (default 1e10)")
    parser.add_argument("--shards", type=int, default=None, help="shards instead (samples = shards x shard size)")
    parser.add_argument("--shard-size", type=int, default=4096, help="samples per shard (default 4096, the default)")
    parser.add_argument("--dir", default=None, help="where the store goes (default: a temporary dir, removed)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    samples = args.shards * args.shard_size if args.shards else int(args.samples)
    folder = Path(tempfile.mkdtemp(prefix="scale-", dir=args.dir))
    # imported before measure() takes its baseline: the baseline includes the package, torch and zarr
    import pipeline
    import pipeline.driver
    import pipeline.live  # noqa: F401

    try:
        result = measure(samples, args.shard_size, folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    if args.json:
        print(json.dumps(result))
        return
    shards = result["shards"]
    print(
        f"bench/scale.py on {platform.node()} ({platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs), Python {sys.version.split()[0]}"
    )
    print(
        f"seed-000 job of {samples:.3g} samples, shard size {args.shard_size}: {shards:,} shards, "
        f"work simulated (a marker per shard)"
    )
    print("| phase | seconds | us per shard |\n|---|---:|---:|")
    for phase in ("plan", "create", "track", "finalize", "total"):
        seconds = result[f"seconds_{phase}"]
        print(f"| {phase} | {seconds:.1f} | {seconds / shards * 1e6:.1f} |")
    print(
        f"driver peak memory above baseline: {result['driver_bytes'] / 2**20:.0f} MiB "
        f"({result['driver_bytes'] / shards:.1f} B per shard); baseline {result['baseline_rss_bytes'] / 2**20:.0f} MiB"
    )
    print(
        f"manifest: {result['manifest_rows']:,} rows, {result['manifest_bytes'] / 2**20:.1f} MiB "
        f"({result['manifest_status']}); plan.parquet {result['plan_bytes'] / 2**20:.1f} MiB; "
        f"complete: {result['complete']}"
    )


if __name__ == "__main__":
    main()
