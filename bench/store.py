"""Store write speed: our shard writes vs the raw write speed of the disk, side by side.

Writes the seed-000 result layout (value [N,150], jacobian [N,150,2],
hessian [N,150,2,2], float32: 4.2 KB per sample) in shards, and compares:

- raw:     ``numpy.ndarray.tofile`` of the same bytes, one file per array and shard
- zarr:    ``pipeline.store.write_region`` alone, per codec (none, lz4, zstd)
- ours:    region writes + checksum + commit marker, as a task does

Prints MB/s and the ratio to raw. Run: ``python bench/store.py [--n 65536]``.
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
            write_marker(path, ShardRecord(shard.id, shard.start, shard.stop, "done", 1, "", "", 0, 0, 0, checksum(part)))
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=65536)
    parser.add_argument("--chunk", type=int, default=4096)
    parser.add_argument("--shard", type=int, default=16384)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    data = arrays(args.n)
    nbytes = sum(v.nbytes for v in data.values())
    plan = plan_derivative_job(args.n, (2,), (150,), ("value", "jacobian", "hessian"), args.chunk, args.shard, "float32")
    variants = {"raw (ndarray.tofile)": None}
    for codec in ("none", "lz4", "zstd"):
        variants[f"zarr regions, {codec}"] = (codec, False)
        variants[f"ours (+checksum, marker), {codec}"] = (codec, True)
    rows = {label: [] for label in variants}
    for _ in range(args.repeat):
        for label, variant in variants.items():
            folder = Path(tempfile.mkdtemp(prefix="bench-store-"))
            try:
                if variant is None:
                    rows[label].append(time_raw(folder, data, plan.shards))
                else:
                    rows[label].append(time_ours(folder, data, plan, with_marker=variant[1], compression=variant[0]))
            finally:
                shutil.rmtree(folder, ignore_errors=True)
    raw = min(rows["raw (ndarray.tofile)"])
    print(f"store writes: N={args.n}, {nbytes / 1e6:.0f} MB, chunk {args.chunk}, shard {args.shard}, "
          f"best of {args.repeat}; {platform.processor() or platform.machine()}, {os.cpu_count()} cores")
    print(f"| {'method':36} | {'seconds':>8} | {'MB/s':>8} | {'x raw time':>10} |")
    print(f"|{'-' * 38}|{'-' * 10}|{'-' * 10}|{'-' * 12}|")
    for label, times in rows.items():
        best = min(times)
        print(f"| {label:36} | {best:8.3f} | {nbytes / 1e6 / best:8.0f} | {best / raw:10.2f} |")


if __name__ == "__main__":
    main()
