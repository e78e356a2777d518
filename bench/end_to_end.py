"""End to end: what a job's shards cost next to their compute alone and their writes alone.

For the flagship jobs (jobs/seed000.yaml, jobs/sweep.yaml, sizes set here),
measured side by side in one process on one device:

- compute only:   every shard computed block by block as a task does (``tasks.compute_block``), nothing written
- write only:     the same arrays written as a task does (region + checksum + marker), nothing computed
- one block per shard, then write: ``run_shard`` computing each shard whole, then writing it
- blocks, no overlap: ``run_shard``'s blocks, each written before the next computes
- ours:           ``run_shard`` as jobs run it: each block written in a background thread
                  while the next computes (``writer.BlockWriter``)
- whole job:      ``pipeline.submit`` in this process (adds the driver's check, store creation, finalize)
- bound, across shards: like "ours", but each shard's last writes finish under the next shard's
                  first block (``time_across_shards``): NOT how jobs run (a task returns only after its
                  shard commits), what a worker that overlaps writes across shards would reach

Ratios are to "compute only"; "bound" is max(compute, write) / compute, what
a perfect overlap of the two would give.

``--part ray``: (a) compute alone and (b) writes alone in this process,
divided by the shards that run at once, and the same two measured in that
many processes at once (``lanes_at_once``), next to (c) the whole job on a
local Ray, per output option. Run: ``python bench/end_to_end.py
[--device cuda] [--n 65536] [--cases 1024] [--threads 2] [--part ray --workers 2 --options "H packed float16, J float16"]``.

``--part long``: a long job as a user runs it, ``pipeline submit
jobs/seed000.yaml --local`` with ``--long-n`` samples (3e6: 11 GB on disk),
with ``store.direct_writes`` true and false alternately (``--repeats``
each), timing the command and the machine's CPU (every core, the kernel's
writeback and reclaim too): where every page-cache page is a new one, as in
any job larger than a burst.
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from timing import machine_cpu  # bench/timing.py

import pipeline.tasks as tasks
from pipeline.driver import pending_shards, prepare, submit
from pipeline.plan import shard_blocks
from pipeline.runner import InlineExecutor
from pipeline.spec import load_spec
from pipeline.store import ShardRecord, checksum, open_for_writing, write_marker, write_region
from pipeline.writer import BlockWriter

ROOT = Path(__file__).resolve().parent.parent


def workloads(args, folder: Path):
    yield (
        "seed000 derivatives",
        "samples",
        load_spec(
            ROOT / "jobs/seed000.yaml",
            [
                f"inputs.n={args.n}",
                f"store.path={folder / 'seed000.zarr'}",
                "store.overwrite=true",
                f"store.compression={args.compression}",
            ],
        ),
    )
    yield (
        "rte1d sweep",
        "cases",
        load_spec(
            ROOT / "jobs/sweep.yaml",
            [
                "sweep.axes.T0_mean.num=" + str(max(1, args.cases // 64)),
                "sweep.axes.sigma_mean.num=32",
                f"store.path={folder / 'sweep.zarr'}",
                "store.overwrite=true",
                f"store.compression={args.compression}",
            ],
        ),
    )


def fresh_store(spec):
    """A new store for ``spec`` (overwriting), and its shards."""
    prepared = prepare(spec)
    shards, _ = pending_shards(prepared, overwrite=True)
    return shards


def blocks_of(spec, shards):
    """The blocks ``run_shard`` computes, per shard."""
    per_sample = prepare(spec).plan.bytes_per_sample()
    per_object = spec.store.chunk_size * (spec.store.shards or 1)
    return [tasks.shard_blocks(shard, per_object, per_sample) for shard in shards]


def time_compute(spec, shards, device):
    """Every shard computed in ``run_shard``'s blocks; the results joined per shard (outside the timing)."""
    blocks = blocks_of(spec, shards)
    began = time.perf_counter()
    parts, previous = [], None
    for shard_blocks_ in blocks:
        previous, done = None, []
        for block in shard_blocks_:
            arrays, previous = tasks.compute_block(spec, block, device, previous)
            done.append(arrays.wait() if hasattr(arrays, "wait") else arrays)  # the device-to-host copy too
        parts.append(done)
    seconds = time.perf_counter() - began
    results = [{k: np.concatenate([d[k] for d in done]) for k in done[0]} for done in parts]
    return seconds, results


class SameThreadWriter(BlockWriter):
    """Writes each block at once, in the computing thread: no overlap."""

    def submit(self, start, stop, arrays):
        self._write(start, stop, arrays)


def time_write(spec, shards, results, fresh=True):
    if fresh:
        fresh_store(spec)
    began = time.perf_counter()
    for shard, arrays in zip(shards, results):
        write_region(spec.store.path, arrays, shard.start, shard.stop, direct=spec.store.direct_writes)
        write_marker(spec.store.path, ShardRecord.done(shard, attempts=1, checksum=checksum(arrays)))
    return time.perf_counter() - began


def time_across_shards(spec):
    """Every shard's blocks computed and written as ``run_shard`` does, but a shard's writer is closed only
    after the next shard's first block computed: its last block's write (the wait at the end of each task,
    ~30 ms of a 0.4-0.5 s seed000 shard on the CI VM) runs under compute. A bound for a worker that
    overlaps writes across shards; no commit markers are written."""
    from pipeline.tasks import stored_encodings

    shards = fresh_store(spec)
    group = open_for_writing(spec.store.path)
    stored_as, device = stored_encodings(group), tasks.pick_device()
    began = time.perf_counter()
    previous = None
    for shard_blocks_ in blocks_of(spec, shards):
        writer, info = BlockWriter(spec.store.path, group=group, stored_as=stored_as), None
        for i, block in enumerate(shard_blocks_):
            arrays, info = tasks.compute_block(spec, block, device, info)
            if i == 0 and previous is not None:
                previous.close()
            writer.submit(block.start, block.stop, arrays)
        previous = writer
    if previous is not None:
        previous.close()
    return time.perf_counter() - began


def time_run_shards(spec, blocks: int | None, overlap: bool = True):
    shards = fresh_store(spec)
    per_sample = prepare(spec).plan.bytes_per_sample()
    original, writer = tasks.shard_blocks, tasks.BlockWriter
    if blocks is not None:
        tasks.shard_blocks = functools.partial(shard_blocks, blocks=blocks)
    if not overlap:
        tasks.BlockWriter = SameThreadWriter
    try:
        began = time.perf_counter()
        for shard in shards:
            tasks.run_shard(spec, shard, bytes_per_sample=per_sample)
        return time.perf_counter() - began
    finally:
        tasks.shard_blocks, tasks.BlockWriter = original, writer


def time_job(spec):
    shutil.rmtree(spec.store.path, ignore_errors=True)  # a new store, as in time_ray_job
    began = time.perf_counter()
    summary = submit(spec, InlineExecutor(), overwrite=True)
    assert summary.complete, "the job did not complete"
    return time.perf_counter() - began


OUTPUT_OPTIONS = {  # seed000's output options (point 1 of the compact-results issue), today's first
    "float32, full (today)": [],
    "hessian packed": ["store.encoding={hessian: {packed: true}}"],
    "H packed float16, J float16": [
        "store.encoding={hessian: {packed: true, dtype: float16}, jacobian: {dtype: float16}}"
    ],
    "all float16, H packed": ["store.dtype=float16", "store.encoding={hessian: {packed: true}}"],
    "all bfloat16, H packed": ["store.dtype=bfloat16", "store.encoding={hessian: {packed: true}}"],
    "H diagonal only, float16": ["store.dtype=float16", "store.encoding={hessian: {entries: [[0, 0], [1, 1]]}}"],
    "H packed float16 + zstd, 4 chunks per object": [
        "store.dtype=float16",
        "store.encoding={hessian: {packed: true}}",
        "store.compression=zstd",
        "store.shards=4",
    ],
}


def disk_bytes(path: Path) -> int:
    return sum(
        f.stat().st_size
        for f in Path(path).rglob("*")
        if f.is_file() and "_shards" not in f.parts and not f.name.endswith(".parquet") and f.name != "zarr.json"
    )


def time_ray_job(spec, executor):
    """(c): the whole job through ``pipeline.submit`` on the local Ray; returns seconds and its :func:`timeline`.

    Into a new store, as a first submit makes it: the previous run's store is
    deleted before the clock starts (replacing 1.1 GB of chunk files took
    0.3-0.5 s of the head here, which is not the job's work).
    """
    from pipeline.store import read_manifest

    shutil.rmtree(spec.store.path, ignore_errors=True)
    began = time.time()
    summary = submit(spec, executor, overwrite=True)
    ended = time.time()
    assert summary.complete, "the job did not complete"
    return ended - began, timeline(read_manifest(spec.store.path), began, ended)


def timeline(manifest, began: float, ended: float) -> dict:
    """Where a job's wall time went, from its manifest (``pipeline.timeline``, what ``pipeline report`` shows).

    - head: ``submit`` called -> the first shard starts (the driver's probe, store creation, first dispatch);
    - tail: the last shard commits -> ``submit`` returns (finalize: manifest, consolidated metadata);
    - per_shard: the gap between one worker's consecutive shards (Ray: result back, next task in) plus a
      shard's time in ``run_shard`` outside its ``seconds`` (attempt record, marker); None with no such gap;
    - shard: mean ``seconds`` of a shard (its blocks computed and written).
    """
    from pipeline.timeline import per_shard_overhead, worker_timeline

    rows = manifest.select(["worker", "started", "finished", "seconds"]).to_pylist()
    return {
        "head": min(r["started"] for r in rows) - began,
        "tail": ended - max(r["finished"] for r in rows),
        "per_shard": per_shard_overhead(worker_timeline(rows)),
        "shard": float(np.mean([r["seconds"] for r in rows])),
    }


def time_encoded_write(spec, shards, results):
    """(b): the stored form of ``results`` written as tasks write it (encoded outside the timing)."""
    from pipeline.encoding import encode_arrays, encodings

    fresh_store(spec)
    found = encodings(open_for_writing(spec.store.path))
    encoded = [encode_arrays(r, found) for r in results]
    return time_write(spec, shards, encoded, fresh=False)


def _lane(job_file: str, overrides: list[str], shard_ids: list[int], device: str, barrier, results) -> None:
    """One of the processes of :func:`lanes_at_once`: its shards computed, then written, each timed between barriers."""
    from pipeline.encoding import encode_arrays, encodings

    torch.set_num_threads(1)
    spec = load_spec(Path(job_file), overrides)
    shards = [s for s in prepare(spec).plan.shards if s.id in set(shard_ids)]
    time_compute(spec, shards[:1], torch.device(device))  # warm-up: the function built, traced
    barrier.wait()
    a, computed = time_compute(spec, shards, torch.device(device))
    found = encodings(open_for_writing(spec.store.path))
    encoded = [encode_arrays(r, found) for r in computed]
    barrier.wait()
    b = time_write(spec, shards, encoded, fresh=False)
    results.put((a, b))


def lanes_at_once(job_file: Path, overrides: list[str], lanes: int, device: str) -> tuple[float, float]:
    """(a) and (b) as the job's workers would meet them: ``lanes`` processes at once, each on every lanes-th shard.

    Returns the wall seconds of the compute phase and of the write phase (the
    slowest process of each; all start together at a barrier). Where the
    processes slow each other (shared caches, memory bandwidth, the host's
    scheduling of the VM's cores) this is what the job's workers get, where
    (a) / lanes assumes they do not.
    """
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(lanes), context.Queue()
    shards = fresh_store(load_spec(job_file, overrides))
    processes = [
        context.Process(
            target=_lane,
            args=(str(job_file), overrides, [s.id for s in shards[i::lanes]], device, barrier, results),
        )
        for i in range(lanes)
    ]
    for process in processes:
        process.start()
    times = [results.get(timeout=900) for _ in processes]
    for process in processes:
        process.join()
    return max(t[0] for t in times), max(t[1] for t in times)


def ray_rows(args, folder: Path) -> None:
    """(a) compute alone, (b) writes alone, (c) the job on a local Ray of ``--workers`` workers, per output option."""
    import ray

    from pipeline.runner import RayExecutor

    workers = args.workers
    ray.init(
        address="local", num_cpus=workers, object_store_memory=200_000_000, include_dashboard=False, log_to_driver=False
    )
    executor = RayExecutor()
    # shards that run at once: one per worker on the CPU; on a GPU machine each task takes a GPU
    # (execution.gpus_per_task: auto), so at most one per GPU
    lanes = workers if tasks.pick_device().type == "cpu" else max(1, min(workers, torch.cuda.device_count()))
    print(f"#### whole jobs on a local Ray, {workers} worker(s) of 1 CPU (1 torch thread each), {lanes} at once\n")
    print(
        f"(a) compute alone and (b) writes alone are measured in this process with 1 thread and divided by "
        f"{lanes} (perfect scaling over the shards running at once); '(a) at once' and '(b) at once' are the same "
        f"work in {lanes} processes at once, each on every {lanes}-th shard (`lanes_at_once`: what the workers meet "
        "when they slow each other); efficiency = max(a, b) / (c). CPU floor = ((a) + (b)) / (c): "
        "where the workers' compute and their writer threads share the same cores they cannot overlap, and "
        "(a) + (b) is the best (c) can be. From the manifest's timeline (`timeline`): head = submit -> first "
        "shard starts (probe, store creation, first dispatch), tail = last commit -> submit returns (finalize), "
        "per-shard overhead = the gap between one worker's consecutive shards (Ray's scheduling, result and "
        "argument transfer) + the time in run_shard outside the shard's own seconds, as a share of a shard.\n"
    )
    print(
        "| job | output option | stored B/sample | on disk B/sample | x today | (a) s | (b) s | (a) at once s | "
        "(b) at once s | (c) s | (c) samples/s | efficiency | efficiency (at once) | CPU floor | "
        "CPU floor (at once) | shard s | head s | tail s | per-shard overhead | max rel. error (stated) |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    torch.set_num_threads(1)
    base_bytes = None
    chosen = None if args.options is None else {"float32, full (today)", *args.options.split(";")}
    with_sweep = chosen is None or "sweep" in chosen
    if chosen is not None:
        chosen.discard("sweep")
    unknown = sorted((chosen or set()) - set(OUTPUT_OPTIONS))
    if unknown:
        raise SystemExit(f"--options: {unknown} are not output options; choose from {list(OUTPUT_OPTIONS)}")
    jobs = [("seed000", name, extra) for name, extra in OUTPUT_OPTIONS.items() if chosen is None or name in chosen]
    if with_sweep:
        jobs.append(("rte1d sweep", "float32, full (today)", []))
    for job, option, extra in jobs:
        spec = next(s for t, _, s in workloads(args, folder) if t.startswith(job.split()[0]))
        job_file = ROOT / ("jobs/seed000.yaml" if job == "seed000" else "jobs/sweep.yaml")
        overrides = [*overrides_of(spec, args, folder), *extra]
        spec = load_spec(job_file, overrides)
        shards = fresh_store(spec)
        n = sum(s.size for s in shards)
        time_compute(spec, shards[:1], tasks.pick_device())  # warm-up
        a, results = min(
            (time_compute(spec, shards, tasks.pick_device()) for _ in range(args.repeats)), key=lambda r: r[0]
        )
        b = min(time_encoded_write(spec, shards, results) for _ in range(args.repeats))
        del results
        at_once = [lanes_at_once(job_file, overrides, lanes, str(tasks.pick_device())) for _ in range(args.repeats)]
        a_lanes, b_lanes = min(t[0] for t in at_once), min(t[1] for t in at_once)
        time_ray_job(spec, executor)  # warm-up: the workers' first function build
        c, parts = min((time_ray_job(spec, executor) for _ in range(args.repeats)), key=lambda r: r[0])
        from pipeline.driver import prepare as prep
        from pipeline.encoding import stored_bytes_per_sample

        stored = stored_bytes_per_sample(prep(spec).plan)
        on_disk = disk_bytes(spec.store.path) / n
        if job == "seed000" and base_bytes is None:
            base_bytes = on_disk
        ratio = f"{on_disk / base_bytes:.2f}" if job == "seed000" else ""
        per_shard = parts["per_shard"]
        overhead = (
            "- (no worker ran two shards)"
            if per_shard is None
            else f"{per_shard * 1e3:.1f} ms ({per_shard / parts['shard']:.1%})"
        )
        errors = []
        import zarr

        group = zarr.open_group(spec.store.path, mode="r")
        for name in group.array_keys():
            err = (group[name].attrs.get("pipeline_encoding") or {}).get("rounding_error")
            if err:
                errors.append(f"{name} {err['max_error_relative_to_max']:.1e}")
        a2, b2 = a / lanes, b / lanes
        print(
            f"| {job} ({n} in {len(shards)} shards of {spec.shard_size}) | {option} | {stored} | {on_disk:,.0f} | "
            f"{ratio} | {a2:.2f} | {b2:.2f} | {a_lanes:.2f} | {b_lanes:.2f} | {c:.2f} | {n / c:,.0f} | "
            f"{max(a2, b2) / c:.2f} | {max(a_lanes, b_lanes) / c:.2f} | {(a2 + b2) / c:.2f} | "
            f"{(a_lanes + b_lanes) / c:.2f} | {parts['shard']:.3f} | {parts['head']:.2f} | {parts['tail']:.2f} | "
            f"{overhead} | {', '.join(errors) or 'exact'} |",
            flush=True,
        )
    ray.shutdown()


def long_rows(args, folder: Path) -> None:
    """``pipeline submit jobs/seed000.yaml --local`` of ``--long-n`` samples, direct writes on and off, alternately."""
    import subprocess
    import sys

    store = folder / "long.zarr"
    print(
        f"#### a long job: `pipeline submit jobs/seed000.yaml --local --set inputs.n={args.long_n}` "
        f"(a local Ray of {os.cpu_count()} CPUs), store.direct_writes true and false alternately\n"
    )
    print("| store.direct_writes | run | seconds | samples/s | machine CPU s | on disk GB |")
    print("|---|---:|---:|---:|---:|---:|")
    seconds: dict[str, list[float]] = {"true": [], "false": []}
    for run in range(args.repeats):
        for direct in ("true", "false"):
            shutil.rmtree(store, ignore_errors=True)
            os.sync()
            time.sleep(3)  # the freed pages go back to the host before the next run
            command = [sys.executable, "-m", "pipeline.cli", "submit", str(ROOT / "jobs/seed000.yaml"), "--local"]
            command += ["--quiet", "--overwrite", f"--set=inputs.n={args.long_n}", f"--set=store.path={store}"]
            command += [f"--set=store.direct_writes={direct}"]
            began, cpu = time.perf_counter(), machine_cpu()
            subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
            wall, used = time.perf_counter() - began, machine_cpu() - cpu
            seconds[direct].append(wall)
            print(
                f"| {direct} | {run + 1} | {wall:.1f} | {args.long_n / wall:,.0f} | {used:.0f} | "
                f"{disk_bytes(store) / 1e9:.1f} |",
                flush=True,
            )
    shutil.rmtree(store, ignore_errors=True)
    print(f"\nbest of each: page cache / direct = {min(seconds['false']) / min(seconds['true']):.2f}x the time\n")


def overrides_of(spec, args, folder):
    """The bench overrides of ``workloads`` for ``spec``'s job."""
    if spec.kind == "sweep":
        return [
            "sweep.axes.T0_mean.num=" + str(max(1, args.cases // 64)),
            "sweep.axes.sigma_mean.num=32",
            f"store.path={folder / 'sweep.zarr'}",
            "store.overwrite=true",
            f"store.compression={args.compression}",
            f"store.direct_writes={args.direct_writes}",
        ]
    return [
        f"inputs.n={args.n}",
        f"store.path={folder / 'seed000.zarr'}",
        "store.overwrite=true",
        f"store.compression={args.compression}",
        f"store.direct_writes={args.direct_writes}",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--n", type=int, default=65536, help="samples of the seed000 job")
    parser.add_argument("--cases", type=int, default=1024, help="cases of the sweep job (multiple of 64)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--compression", default="auto", choices=["auto", "lz4", "zstd", "none"])
    parser.add_argument(
        "--direct-writes",
        default="true",
        choices=["true", "false"],
        help="store.direct_writes: chunk files of 1 MiB or more past the page cache (O_DIRECT) or not",
    )
    parser.add_argument(
        "--options",
        default=None,
        help="--part ray: only these seed000 output options, names of OUTPUT_OPTIONS separated by ; "
        "(float32 full is always measured, for 'x today'); add sweep for the sweep row",
    )
    parser.add_argument("--repeats", type=int, default=3, help="best of this many runs per row")
    parser.add_argument(
        "--workers",
        type=int,
        default=2,
        help="--part ray: Ray workers (CPUs of the local Ray); 1 leaves a core to the writer thread",
    )
    parser.add_argument(
        "--part",
        default="all",
        choices=["all", "blocks", "ray", "long"],
        help="blocks: the in-process rows; ray: (a)/(b)/(c) on a local Ray per output option; "
        "long: a long job through the CLI, direct writes on and off",
    )
    parser.add_argument("--long-n", type=int, default=3_000_000, help="--part long: samples of the job")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device here")
    tasks.pick_device = lambda: device  # every row on the asked device
    print(
        f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, {args.threads} threads, "
        f"device {tasks.device_name(device)}, compression {args.compression}, direct_writes {args.direct_writes}, "
        f"best of {args.repeats}\n"
    )
    folder = Path(
        tempfile.mkdtemp(prefix="bench-pipeline-", dir=ROOT / "results" if (ROOT / "results").is_dir() else None)
    )
    try:
        if args.part == "long":
            long_rows(args, folder)
        if args.part in ("all", "ray"):
            ray_rows(args, folder)
        for title, unit, spec in workloads(args, folder) if args.part in ("all", "blocks") else ():
            shards = fresh_store(spec)
            n = sum(s.size for s in shards)
            time_compute(spec, shards[:1], device)  # warm-up: model build, trace, caches
            rows = {}

            def best(run, *args_, **kwargs):
                return min(run(*args_, **kwargs) for _ in range(args.repeats))

            compute_s = min(time_compute(spec, shards, device)[0] for _ in range(args.repeats))
            _, results = time_compute(spec, shards, device)
            rows["compute only"] = compute_s
            rows["write only"] = best(time_write, spec, shards, results)
            rows["one block per shard, then write"] = best(time_run_shards, spec, blocks=1)
            rows["blocks, each written before the next computes"] = best(
                time_run_shards, spec, blocks=None, overlap=False
            )
            rows["ours: blocks written in the background"] = best(time_run_shards, spec, blocks=None)
            rows["whole job (pipeline.submit, inline)"] = best(time_job, spec)
            rows["bound, across shards: each shard's last writes under the next one's compute"] = best(
                time_across_shards, spec
            )
            size = sum(a.nbytes for r in results for a in r.values())
            bound = max(rows["compute only"], rows["write only"]) / rows["compute only"]
            print(
                f"#### {title}: {n} {unit} in {len(shards)} shards of {spec.shard_size}, "
                f"chunks of {spec.store.chunk_size}, {size / 1e6:.0f} MB of results\n"
            )
            print(f"| step | seconds | {unit}/s | x compute only |")
            print("|---|---:|---:|---:|")
            for name, seconds in rows.items():
                print(f"| {name} | {seconds:.3f} | {n / seconds:,.0f} | {seconds / rows['compute only']:.2f} |")
            print(f"\nbound (perfect overlap): {bound:.2f}x compute only\n", flush=True)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
