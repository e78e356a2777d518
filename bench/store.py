"""Store write speed: our shard writes vs the raw write speed of the disk, side by side.

Writes the seed-000 result layout (value [N,150], jacobian [N,150,2],
hessian [N,150,2,2], float32: 4.2 KB per sample) in shards, and compares:

- raw:     ``numpy.ndarray.tofile`` of the same bytes, one file per array and shard
- write_region: ``pipeline.store.write_region`` alone, whole shards, per codec (none, lz4, zstd)
- ours:    region writes + checksum + commit marker, as a task does
- blocks:  one chunk per write, as a task's writer thread writes: arrays opened per block with
           Zarr's fill check (before session 12); opened once per shard, fill check off, Zarr's
           ``__setitem__`` (session 12); ``write_region`` (``pipeline.chunk_files``: the same
           bytes encoded and written in the calling thread) through the page cache (session 13)
           and now past it (``O_DIRECT``, chunk files of 1 MiB or more)

Prints MB/s and the ratio to raw, and for the block rows the CPU time of
every thread of the process (what a worker's writer takes from its compute). Run: ``python bench/store.py [--n 65536]``.

``--sustained-gb G`` (default 0: skipped) then writes G GB of seed-000 blocks
(the same 276 MB written again and again into one big store, so far more
than the short rows above) through the page cache and past it, with the CPU
of the process and of the whole machine (the kernel's writeback and reclaim
too): the regime of a long job, where every page-cache page is a new page.

Then, against a local S3 server (moto, started and stopped here): the same
seed-000 bytes written through zarr's ObjectStore (obstore, what pipeline
uses for s3://) and FsspecStore (s3fs), vs local disk, vs raw PUTs of the
same bytes (the ceiling); and a whole job to s3:// vs local disk
(``--s3-only`` runs just these, ``--s3-n 0`` skips them).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from timing import machine_cpu  # bench/timing.py

from pipeline.plan import plan_derivative_job
from pipeline.store import ShardRecord, checksum, create_store, write_marker, write_region


def arrays(n: int) -> dict[str, np.ndarray]:
    """Real results of the seed-000 MLP (compressibility matters), tiled up to n samples."""
    import torch
    from torch.func import jacfwd, vmap

    from pipeline.models import make_mlp

    net = make_mlp(2, [128] * 4, 150)
    x = torch.rand(min(n, 8192), 2, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        out = {"inputs": x, "value": net(x), "jacobian": vmap(jacfwd(net))(x), "hessian": vmap(jacfwd(jacfwd(net)))(x)}
    reps = -(-n // x.shape[0])
    return {k: np.ascontiguousarray(np.concatenate([v.numpy()] * reps)[:n]) for k, v in out.items()}


def time_raw(folder: Path, data, shards) -> float:
    began = time.perf_counter()
    for shard in shards:
        for name, values in data.items():
            with open(folder / f"{name}.{shard.id}.bin", "wb") as handle:
                values[shard.start : shard.stop].tofile(handle)  # page cache, like zarr's writes
    return time.perf_counter() - began


def time_ours(folder: Path, data, plan, with_marker: bool, compression: str) -> float:
    path = folder / "s.zarr"
    create_store(path, plan, {"spec_hash": "bench"}, compression=compression)
    began = time.perf_counter()
    for shard in plan.shards:
        part = {k: v[shard.start : shard.stop] for k, v in data.items()}
        write_region(path, part, shard.start, shard.stop)
        if with_marker:
            write_marker(path, ShardRecord.done(shard, attempts=1, checksum=checksum(part)))
    return time.perf_counter() - began


def time_blocks(
    folder: Path, data, plan, compression: str, how: str, threads: int = 1, direct: bool = True
) -> tuple[float, float]:
    """Each shard written in blocks of one chunk, as a task's writer thread writes them: (wall, CPU) seconds.

    ``how``: "before", as tasks wrote until session 12, each block opening its
    arrays again (a ``zarr.json`` read each, a GET on a bucket) and Zarr
    checking every chunk against the fill value; "zarr", as they wrote in
    sessions 12-13 (arrays opened once per shard, the fill check off, Zarr's
    ``__setitem__``); "ours", ``write_region`` now (``chunk_files``: the same
    bytes encoded and written in the calling thread), with ``threads`` > 1 a
    block's chunks written by that many threads (a task of
    ``execution.cpus_per_task: threads``); chunk files of 1 MiB or more past
    the page cache (``O_DIRECT``) unless ``direct`` is false (the store's
    ``direct_writes``). CPU is the process's (every thread: Zarr's event loop
    and codec threads too; not the kernel's writeback of the page cache).
    """
    from concurrent.futures import ThreadPoolExecutor

    from pipeline.store import open_for_writing

    path = folder / "s.zarr"
    create_store(path, plan, {"spec_hash": "bench"}, compression=compression)
    group = open_for_writing(path)
    pool = ThreadPoolExecutor(threads) if threads > 1 else None
    began, cpu = time.perf_counter(), time.process_time()
    for shard in plan.shards:
        targets: dict = {}
        opened: dict = {}
        for start in range(shard.start, shard.stop, plan.chunk_size):
            stop = min(start + plan.chunk_size, shard.stop)
            part = {k: v[start:stop] for k, v in data.items()}
            if how == "before":
                for name, values in part.items():
                    group[name][start:stop] = values
            elif how == "zarr":
                for name, values in part.items():
                    if name not in opened:
                        opened[name] = group[name].with_config({"write_empty_chunks": True})
                    opened[name][start:stop] = values
            else:
                write_region(path, part, start, stop, group=group, targets=targets, pool=pool, direct=direct)
    if pool is not None:
        pool.shutdown()
    return time.perf_counter() - began, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=65536)
    parser.add_argument("--chunk", type=int, default=4096)
    parser.add_argument("--shard", type=int, default=16384)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--s3-n", type=int, default=16384, help="samples for the S3 rows (0: skip them)")
    parser.add_argument("--s3-only", action="store_true", help="only the S3 rows")
    parser.add_argument("--sustained-gb", type=float, default=0, help="GB of the sustained rows (0: skip them)")
    parser.add_argument("--sustained-dir", default=None, help="where the sustained rows write (default: the temp dir)")
    parser.add_argument("--short", action=argparse.BooleanOptionalAction, default=True, help="the short rows")
    args = parser.parse_args()
    if args.s3_only:
        s3_rows(args)
        return
    data = arrays(args.n)
    if not args.short:
        sustained_rows(args, data)
        return
    nbytes = sum(v.nbytes for v in data.values())
    plan = plan_derivative_job(
        args.n, (2,), (150,), ("value", "jacobian", "hessian"), args.chunk, args.shard, "float32"
    )
    variants = {"raw (ndarray.tofile)": None}
    for codec in ("none", "lz4", "zstd"):
        variants[f"write_region, whole shards, {codec}"] = (codec, False)
        variants[f"ours (+checksum, marker), {codec}"] = (codec, True)
    for codec in ("none", "lz4"):
        variants[f"blocks, {codec}, arrays opened per block + fill check (before)"] = (codec, "before")
        variants[f"blocks, {codec}, Zarr's setitem, arrays opened once (session 12)"] = (codec, "zarr")
        variants[f"blocks, {codec}, chunk_files, page cache (direct_writes: false)"] = (codec, "ours", 1, False)
        variants[f"blocks, {codec}, as tasks write (ours: chunk_files, O_DIRECT)"] = (codec, "ours")
        variants[f"blocks, {codec}, ours, 2 threads (cpus_per_task: 2)"] = (codec, "ours", 2)
    rows = {label: [] for label in variants}
    cpu: dict[str, list[float]] = {label: [] for label in variants}
    for _ in range(args.repeat):
        for label, variant in variants.items():
            folder = Path(tempfile.mkdtemp(prefix="bench-store-"))
            try:
                if variant is None:
                    rows[label].append(time_raw(folder, data, plan.shards))
                elif isinstance(variant[1], str):
                    wall, used = time_blocks(folder, data, plan, *variant)
                    rows[label].append(wall)
                    cpu[label].append(used)
                else:
                    rows[label].append(time_ours(folder, data, plan, with_marker=variant[1], compression=variant[0]))
            finally:
                shutil.rmtree(folder, ignore_errors=True)
    raw = min(rows["raw (ndarray.tofile)"])
    print(
        f"store writes: N={args.n}, {nbytes / 1e6:.0f} MB, chunk {args.chunk}, shard {args.shard}, "
        f"best of {args.repeat}; {platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    )
    print(f"| {'method':66} | {'seconds':>8} | {'MB/s':>8} | {'x raw time':>10} | {'CPU s':>6} |")
    print(f"|{'-' * 68}|{'-' * 10}|{'-' * 10}|{'-' * 12}|{'-' * 8}|")
    for label, times in rows.items():
        best = min(times)
        used = f"{min(cpu[label]):6.3f}" if cpu[label] else " " * 6  # CPU of every thread, where measured
        print(f"| {label:66} | {best:8.3f} | {nbytes / 1e6 / best:8.0f} | {best / raw:10.2f} | {used} |")
    if args.sustained_gb:
        sustained_rows(args, data)
    if args.s3_n:
        s3_rows(args)


def sustained_rows(args, data) -> None:
    """``--sustained-gb`` of blocks written as a task writes them, through the page cache and past it."""
    from pipeline.store import open_for_writing

    block = sum(v.nbytes for v in data.values())
    repeats = max(1, round(args.sustained_gb * 1e9 / block))
    n = args.n * repeats
    plan = plan_derivative_job(n, (2,), (150,), ("value", "jacobian", "hessian"), args.chunk, args.shard, "float32")
    print(
        f"\nsustained writes: {repeats} x {block / 1e6:.0f} MB = {repeats * block / 1e9:.1f} GB into one store "
        f"({n} samples), chunk {args.chunk}, one writer thread; machine CPU = every core, kernel threads too"
    )
    print("| codec | writes | seconds | MB/s | process CPU s | machine CPU s | machine CPU per GB |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for codec in ("none", "lz4"):
        for direct in (False, True):
            folder = Path(tempfile.mkdtemp(prefix="bench-store-", dir=args.sustained_dir))
            try:
                path = folder / "s.zarr"
                create_store(path, plan, {"spec_hash": "bench"}, compression=codec)
                group, targets = open_for_writing(path), {}
                os.sync()
                began, cpu, machine = time.perf_counter(), time.process_time(), machine_cpu()
                for offset in range(0, n, args.n):
                    for start in range(0, args.n, args.chunk):
                        stop = min(start + args.chunk, args.n)
                        part = {k: v[start:stop] for k, v in data.items()}
                        write_region(
                            path, part, offset + start, offset + stop, group=group, targets=targets, direct=direct
                        )
                os.sync()  # what is still in the page cache, written (its CPU counted in the machine's)
                wall, used, total = time.perf_counter() - began, time.process_time() - cpu, machine_cpu() - machine
            finally:
                shutil.rmtree(folder, ignore_errors=True)
            how = "past the page cache (O_DIRECT, ours)" if direct else "page cache (direct_writes: false)"
            gb = repeats * block / 1e9
            print(
                f"| {codec} | {how} | {wall:.1f} | {gb * 1e3 / wall:,.0f} | {used:.1f} | {total:.1f} | "
                f"{total / gb:.2f} s |",
                flush=True,
            )


def s3_rows(args) -> None:
    """The local S3 server (moto, started here): store layers vs local disk vs raw PUTs, and a whole job."""
    import socket
    import subprocess
    import sys
    import urllib.request

    from pipeline import storage

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen(
        [str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        endpoint = f"http://127.0.0.1:{port}"
        for _ in range(200):
            try:
                urllib.request.urlopen(endpoint + "/moto-api/", timeout=1)
                break
            except OSError:
                time.sleep(0.05)
        os.environ.update(
            {
                "AWS_ENDPOINT_URL": endpoint,
                "AWS_ACCESS_KEY_ID": "bench",
                "AWS_SECRET_ACCESS_KEY": "bench",
                "AWS_DEFAULT_REGION": "us-east-1",
            }
        )
        fs, _ = storage.filesystem("s3://bench")
        fs.mkdir("bench")
        data = arrays(args.s3_n)
        nbytes = sum(v.nbytes for v in data.values())
        plan = plan_derivative_job(
            args.s3_n, (2,), (150,), ("value", "jacobian", "hessian"), args.chunk, args.shard, "float32"
        )

        def raw_puts(i):
            began = time.perf_counter()
            for shard in plan.shards:
                for name, values in data.items():
                    fs.pipe_file(f"bench/raw{i}/{name}.{shard.id}", values[shard.start : shard.stop].tobytes())
            return time.perf_counter() - began

        def layer(name):
            def run(i):
                storage.ZARR_LAYER = name
                if name == "local":
                    folder = Path(tempfile.mkdtemp(prefix="bench-store-"))
                    try:
                        return time_ours(folder, data, plan, True, "lz4")
                    finally:
                        shutil.rmtree(folder, ignore_errors=True)
                url = f"s3://bench/{name}{i}.zarr"
                create_store(url, plan, {"spec_hash": "bench"}, compression="lz4")
                began = time.perf_counter()
                for shard in plan.shards:
                    part = {k: v[shard.start : shard.stop] for k, v in data.items()}
                    write_region(url, part, shard.start, shard.stop)
                    write_marker(url, ShardRecord.done(shard, attempts=1, checksum=checksum(part)))
                return time.perf_counter() - began

            return run

        variants = {
            "raw PUTs of the same bytes (ceiling)": raw_puts,
            "ours -> s3, zarr ObjectStore (obstore)": layer("obstore"),
            "ours -> s3, zarr FsspecStore (s3fs)": layer("fsspec"),
            "ours -> local disk": layer("local"),
        }
        rows = {label: [run(i) for i in range(args.repeat)] for label, run in variants.items()}
        storage.ZARR_LAYER = "obstore"
        ceiling = min(rows["raw PUTs of the same bytes (ceiling)"])
        print(
            f"\nlocal S3 server (moto): N={args.s3_n}, {nbytes / 1e6:.0f} MB seed-000 results, lz4, chunk "
            f"{args.chunk}, shard {args.shard}, best of {args.repeat}"
        )
        print(f"| {'method':40} | {'seconds':>8} | {'MB/s':>8} | {'x raw PUT time':>14} |")
        print(f"|{'-' * 42}|{'-' * 10}|{'-' * 10}|{'-' * 16}|")
        for label, times in rows.items():
            best = min(times)
            print(f"| {label:40} | {best:8.3f} | {nbytes / 1e6 / best:8.0f} | {best / ceiling:14.2f} |")
        root = Path(__file__).resolve().parents[1]
        job = [
            sys.executable,
            "-m",
            "pipeline.cli",
            "submit",
            str(root / "jobs/quickstart.yaml"),
            "--executor",
            "inline",
            "-q",
            "--set",
            "inputs.n=40000",
            "--set",
            "store.chunk_size=2000",
            "--set",
            "execution.shard_size=8000",
        ]
        jobs = {}
        for label, path in (("local disk", None), ("s3://", "s3://bench/job.zarr")):
            folder = Path(tempfile.mkdtemp(prefix="bench-job-"))
            began = time.perf_counter()
            subprocess.run(
                job + ["--set", f"store.path={path or folder / 'job.zarr'}"], check=True, stdout=subprocess.DEVNULL
            )
            jobs[label] = time.perf_counter() - began
            shutil.rmtree(folder, ignore_errors=True)
        print("\nwhole job (jobs/quickstart.yaml, n=40000, inline, process start included)")
        print("| store | seconds | x local |\n|---|---|---|")
        for label, seconds in jobs.items():
            print(f"| {label} | {seconds:.2f} | {seconds / jobs['local disk']:.2f} |")
    finally:
        server.kill()
        server.wait()


if __name__ == "__main__":
    main()
