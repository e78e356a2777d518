"""Live progress overhead: shards run with and without the workers' block progress files, side by side.

Runs the quickstart job's shards in this process (``tasks.run_shard``, as a
worker does) at the default sizes (shards of 4,096 samples, chunks of 2,048:
blocks of one chunk), alternating runs with block progress on and off (off =
``tasks.write_block_progress`` replaced by a no-op), best of ``--repeats``.
Also times one driver poll (``live.LiveRun.poll``: one listing of ``_shards/``,
reading the in-flight shards' progress files) of a store with ``--shards``
shard markers and 16 shards in flight, against the poll interval.

Run: ``python bench/live.py [--repeats 5] [--shards 4096]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import pipeline.tasks as tasks
from pipeline import live
from pipeline.driver import open_store, prepare
from pipeline.spec import load_spec

ROOT = Path(__file__).resolve().parents[1]


def time_shards(spec, shards, report: bool, per_sample: int) -> float:
    real = tasks.write_block_progress
    if not report:
        tasks.write_block_progress = lambda *args, **kwargs: None
    try:
        began = time.perf_counter()
        for shard in shards:
            tasks.run_shard(spec, shard, bytes_per_sample=per_sample)
        return time.perf_counter() - began
    finally:
        tasks.write_block_progress = real


def time_poll(folder: Path, n_shards: int, in_flight: int = 16) -> float:
    store = folder / "poll.zarr"
    (store / "_shards").mkdir(parents=True)
    run = live.LiveRun(store)
    run._sizes = {i: 4096 for i in range(n_shards)}
    run._run_began = time.time() - 1
    for i in range(n_shards - in_flight):
        (store / "_shards" / f"{i}.json").write_text("{}")
        (store / "_shards" / f"{i}.attempts").write_text("1\n")
    for i in range(n_shards - in_flight, n_shards):
        live.write_block_progress(store, i, 1, 2048, 4096)
    best = float("inf")
    for _ in range(5):
        began = time.perf_counter()
        snapshot = run.poll()
        best = min(best, time.perf_counter() - began)
    assert snapshot.shards_running == in_flight, snapshot
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--shards", type=int, default=4096)
    parser.add_argument("--n", type=int, default=8 * 4096)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        spec = load_spec(ROOT / "jobs/quickstart.yaml", [f"inputs.n={args.n}", f"store.path={tmp}/q.zarr"])
        prepared = prepare(spec)
        shards = open_store(prepared).shards
        per_sample = prepared.plan.bytes_per_sample()
        blocks = len(tasks.shard_blocks(shards[0], spec.store.chunk_size, per_sample))
        time_shards(spec, shards[:1], True, per_sample)  # warm up: engine choice, imports
        on, off = [], []
        for _ in range(args.repeats):
            off.append(time_shards(spec, shards, False, per_sample))
            on.append(time_shards(spec, shards, True, per_sample))
        poll = time_poll(Path(tmp), args.shards)
        began = time.perf_counter()
        for i in range(200):
            live.write_block_progress(spec.store.path, 0, 1, i, 4096)
        write = (time.perf_counter() - began) / 200
    n_blocks = blocks * len(shards)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; torch threads 1")
    print(
        f"quickstart, {args.n:,} samples in {len(shards)} shards of {shards[0].size:,} ({blocks} blocks each), "
        f"best of {args.repeats}"
    )
    print()
    print("| what | seconds | ratio |")
    print("|---|---|---|")
    print(f"| shards, block progress off | {min(off):.3f} | 1.000 |")
    print(f"| shards, block progress on  | {min(on):.3f} | {min(on) / min(off):.3f} |")
    print(
        f"| one progress write (x {len(shards)} to {n_blocks + len(shards)} per run) | {write:.6f} | "
        f"{write * len(shards) / min(off):.4f} to {write * (n_blocks + len(shards)) / min(off):.4f} "
        "of the shards' time |"
    )
    print(
        f"| one driver poll, {args.shards:,} shards, 16 in flight | {poll:.4f} | "
        f"{poll / live.POLL_INTERVAL_S:.4f} of the poll interval ({live.POLL_INTERVAL_S} s) |"
    )
    print(json.dumps({"off": off, "on": on, "write_s": write, "poll_s": poll}))


if __name__ == "__main__":
    main()
