"""End to end: what a job's shards cost next to their compute alone and their writes alone.

For the flagship jobs (jobs/seed000.yaml, jobs/sweep.yaml, sizes set here),
measured side by side in one process on one device:

- compute only:   every shard computed block by block as a task does (``tasks.compute_shard``), nothing written
- write only:     the same arrays written as a task does (region + checksum + marker), nothing computed
- one block per shard, then write: ``run_shard`` computing each shard whole, then writing it
- blocks, no overlap: ``run_shard``'s blocks, each written before the next computes
- ours:           ``run_shard`` as jobs run it: each block written in a background thread
                  while the next computes (``writer.BlockWriter``)
- whole job:      ``pipeline.submit`` in this process (adds the driver's check, store creation, finalize)

Ratios are to "compute only"; "bound" is max(compute, write) / compute, what
a perfect overlap of the two would give. Run: ``python bench/end_to_end.py
[--device cuda] [--n 65536] [--cases 1024] [--threads 2]``.
"""

from __future__ import annotations

import argparse
import functools
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import pipeline.tasks as tasks
from pipeline.driver import pending_shards, prepare, submit
from pipeline.plan import shard_blocks
from pipeline.runner import InlineExecutor
from pipeline.spec import load_spec
from pipeline.store import ShardRecord, bytes_per_sample, checksum, open_for_writing, write_marker, write_region
from pipeline.writer import BlockWriter

ROOT = Path(__file__).resolve().parent.parent


def workloads(args, folder: Path):
    yield "seed000 derivatives", "samples", load_spec(ROOT / "jobs/seed000.yaml", [
        f"inputs.n={args.n}", f"store.path={folder / 'seed000.zarr'}", "store.overwrite=true",
        f"store.compression={args.compression}",
    ])
    yield "rte1d sweep", "cases", load_spec(ROOT / "jobs/sweep.yaml", [
        "sweep.axes.T0_mean.num=" + str(max(1, args.cases // 64)), "sweep.axes.sigma_mean.num=32",
        f"store.path={folder / 'sweep.zarr'}", "store.overwrite=true", f"store.compression={args.compression}",
    ])


def fresh_store(spec):
    """A new store for ``spec`` (overwriting), and its shards."""
    prepared = prepare(spec)
    shards, _ = pending_shards(prepared, overwrite=True)
    return shards


def blocks_of(spec, shards):
    """The blocks ``run_shard`` computes, per shard."""
    per_sample = bytes_per_sample(open_for_writing(spec.store.path))
    return [tasks.shard_blocks(shard, spec.store.chunk_size, per_sample) for shard in shards]


def time_compute(spec, shards, device):
    """Every shard computed in ``run_shard``'s blocks; the results joined per shard (outside the timing)."""
    blocks = blocks_of(spec, shards)
    began = time.perf_counter()
    parts, hint = [], None
    for shard_blocks_ in blocks:
        hint, done = None, []
        for block in shard_blocks_:
            arrays, hint = tasks.compute_shard(spec, block, device, hint)
            done.append(arrays)
        parts.append(done)
    seconds = time.perf_counter() - began
    results = [{k: np.concatenate([d[k] for d in done]) for k in done[0]} for done in parts]
    return seconds, results


class SameThreadWriter(BlockWriter):
    """Writes each block at once, in the computing thread: no overlap."""

    def submit(self, start, stop, arrays):
        self._write(start, stop, arrays)


def time_write(spec, shards, results):
    fresh_store(spec)
    began = time.perf_counter()
    for shard, arrays in zip(shards, results):
        write_region(spec.store.path, arrays, shard.start, shard.stop)
        write_marker(spec.store.path, ShardRecord(shard.id, shard.start, shard.stop, "done", 1, "", "", 0, 0, 0,
                                                  checksum(arrays)))
    return time.perf_counter() - began


def time_run_shards(spec, blocks: int | None, overlap: bool = True):
    shards = fresh_store(spec)
    original, writer = tasks.shard_blocks, tasks.BlockWriter
    if blocks is not None:
        tasks.shard_blocks = functools.partial(shard_blocks, blocks=blocks)
    if not overlap:
        tasks.BlockWriter = SameThreadWriter
    try:
        began = time.perf_counter()
        for shard in shards:
            tasks.run_shard(spec, shard)
        return time.perf_counter() - began
    finally:
        tasks.shard_blocks, tasks.BlockWriter = original, writer


def time_job(spec):
    began = time.perf_counter()
    summary = submit(spec, InlineExecutor(), overwrite=True)
    assert summary.complete, "the job did not complete"
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--n", type=int, default=65536, help="samples of the seed000 job")
    parser.add_argument("--cases", type=int, default=1024, help="cases of the sweep job (multiple of 64)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--compression", default="lz4", choices=["lz4", "zstd", "none"])
    parser.add_argument("--repeats", type=int, default=3, help="best of this many runs per row")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device here")
    tasks.pick_device = lambda: device  # every row on the asked device
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, {args.threads} threads, "
          f"device {tasks.device_name(device)}, compression {args.compression}, best of {args.repeats}\n")
    folder = Path(tempfile.mkdtemp(prefix="bench-pipeline-", dir=ROOT / "results" if (ROOT / "results").is_dir()
                                   else None))
    try:
        for title, unit, spec in workloads(args, folder):
            shards = fresh_store(spec)
            n = sum(s.size for s in shards)
            time_compute(spec, shards[:1], device)  # warm-up: model build, trace, caches
            rows = {}
            best = lambda run: min(run() for _ in range(args.repeats))  # noqa: E731
            compute_s = min(time_compute(spec, shards, device)[0] for _ in range(args.repeats))
            _, results = time_compute(spec, shards, device)
            rows["compute only"] = compute_s
            rows["write only"] = best(lambda: time_write(spec, shards, results))
            rows["one block per shard, then write"] = best(lambda: time_run_shards(spec, blocks=1))
            rows["blocks, each written before the next computes"] = best(
                lambda: time_run_shards(spec, blocks=None, overlap=False))
            rows["ours: blocks written in the background"] = best(lambda: time_run_shards(spec, blocks=None))
            rows["whole job (pipeline.submit, inline)"] = best(lambda: time_job(spec))
            size = sum(a.nbytes for r in results for a in r.values())
            bound = max(rows["compute only"], rows["write only"]) / rows["compute only"]
            print(f"#### {title}: {n} {unit} in {len(shards)} shards of {spec.shard_size}, "
                  f"chunks of {spec.store.chunk_size}, {size / 1e6:.0f} MB of results\n")
            print(f"| step | seconds | {unit}/s | x compute only |")
            print("|---|---:|---:|---:|")
            for name, seconds in rows.items():
                print(f"| {name} | {seconds:.3f} | {n / seconds:,.0f} | {seconds / rows['compute only']:.2f} |")
            print(f"\nbound (perfect overlap): {bound:.2f}x compute only\n", flush=True)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
