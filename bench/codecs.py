"""Chunk codecs side by side: on-disk bytes per sample and write speed of seed-000's real results.

The seed-000 job (jobs/seed000.yaml) is computed once for ``--n`` samples
(value, Jacobian, Hessian in float32), then stored in each output option's
form (the store's own ``encoding.encode``) and written with each candidate
codec chain into a fresh local Zarr v3 array of the job's chunks (4096
samples), crc32c last as every store array has it. Each write is read back
and compared bit for bit. Bytes are the chunk files' sizes, the inputs
included (``inputs [sample, 2]`` float32, with the same codec); "x today" is
over float32 full with the old default codec (Blosc lz4 5, byte shuffle),
the first row. Write and read speeds are stored megabytes per CPU second
of this process (CPU time, not wall time: the other jobs on a shared machine
change wall time, not the work), best of ``--repeats``, the candidates run in
turn, Zarr's thread pool at one thread.

A second table (``--encode-costs``, alone) times, per 16-bit output option and
array, what a task's writer does to one chunk-sized block before the codecs:
the encoding (``encoding.encode``: packing, selection, the cast) and the
overflow count of its cast (``encoding.overflow_count``, on the stored bits),
against numpy's ``isinf`` on the float16 values, CPU milliseconds per block.

Run: ``python bench/codecs.py [--n 16384] [--repeats 3] [--only 'old default,auto'] [--encode-costs]``.
"""

from __future__ import annotations

import argparse
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
SCRATCH = Path(tempfile.gettempdir())  # prepare() checks the store path; nothing is written there

OPTIONS = {  # output options of bench/end_to_end.py
    "float32, full (today)": [],
    "H packed float16, J float16": [
        "store.encoding={hessian: {packed: true, dtype: float16}, jacobian: {dtype: float16}}"
    ],
    "all float16, H packed": ["store.dtype=float16", "store.encoding={hessian: {packed: true}}"],
    "all bfloat16, H packed": ["store.dtype=bfloat16", "store.encoding={hessian: {packed: true}}"],
}


def candidates():
    """name -> codec chain of an array: ``chain(values, chunk) -> (array-to-array filters, compressors)``."""
    import math

    from zarr.codecs import BloscCodec, TransposeCodec, ZstdCodec

    from pipeline.encoding import compressors

    def sample_last(values):  # each chunk stored entry by entry: one entry's samples contiguous
        return [TransposeCodec(order=(*range(1, values.ndim), 0))] if values.ndim > 1 else []

    def blosc(cname, level, shuffle, whole_chunk=False, transpose=False):
        def chain(values, chunk):
            size = chunk * math.prod(values.shape[1:]) * values.itemsize if whole_chunk else 0
            return (
                sample_last(values) if transpose else [],
                [BloscCodec(cname=cname, clevel=level, shuffle=shuffle, blocksize=size)],
            )

        return chain

    def auto(values, chunk):  # pipeline's default: what encoding.create_options gives each array
        dtype = "float16" if values.dtype == np.float16 else "bfloat16" if values.dtype == np.uint16 else None
        return [], [
            compressors("auto", stored_dtype=dtype, chunk_bytes=chunk * math.prod(values.shape[1:]) * values.itemsize)
        ]

    return {
        "blosc lz4 5 shuffle (lz4, the old default)": blosc("lz4", 5, "shuffle"),
        "blosc lz4 9 shuffle": blosc("lz4", 9, "shuffle"),
        "blosc lz4 5 bitshuffle": blosc("lz4", 5, "bitshuffle"),
        "blosc lz4 9 bitshuffle": blosc("lz4", 9, "bitshuffle"),
        "blosc zstd 3 shuffle": blosc("zstd", 3, "shuffle"),
        "blosc zstd 5 shuffle": blosc("zstd", 5, "shuffle"),
        "blosc zstd 3 bitshuffle": blosc("zstd", 3, "bitshuffle"),
        "zstd 3, no shuffle (store.compression: zstd)": lambda values, chunk: ([], [ZstdCodec(level=3)]),
        "sample-last + blosc lz4 5 bitshuffle": blosc("lz4", 5, "bitshuffle", transpose=True),
        "sample-last + blosc zstd 3 shuffle": blosc("zstd", 3, "shuffle", transpose=True),
        "blosc zstd 1 shuffle, one block per chunk": blosc("zstd", 1, "shuffle", whole_chunk=True),
        "blosc zstd 2 shuffle, one block per chunk": blosc("zstd", 2, "shuffle", whole_chunk=True),
        "blosc zstd 3 shuffle, one block per chunk": blosc("zstd", 3, "shuffle", whole_chunk=True),
        "sample-last + blosc zstd 2 shuffle, one block per chunk": blosc(
            "zstd", 2, "shuffle", whole_chunk=True, transpose=True
        ),
        "auto (the new default: lz4; 16-bit arrays zstd 2, one block per chunk)": auto,
    }


def results(n: int):
    """seed000's inputs and full float32 results for ``n`` samples, as a task computes them (one block)."""
    import pipeline.tasks as tasks
    from pipeline.driver import prepare
    from pipeline.plan import Shard
    from pipeline.spec import load_spec

    spec = load_spec(
        ROOT / "jobs/seed000.yaml",
        [f"inputs.n={n}", f"execution.shard_size={n}", f"store.path={SCRATCH / 'seed000.zarr'}"],
    )
    prepare(spec)
    arrays, _ = tasks.compute_block(spec, Shard(0, 0, n), torch.device("cpu"))
    arrays = arrays.wait() if hasattr(arrays, "wait") else arrays
    return {name: np.asarray(values) for name, values in arrays.items()}


def stored_forms(full, n: int):
    """option -> {array name: stored values}, through the store's own encoding of each option."""
    from pipeline.driver import prepare
    from pipeline.encoding import ATTRIBUTE, encode
    from pipeline.spec import load_spec

    forms = {}
    for option, extra in OPTIONS.items():
        spec = load_spec(
            ROOT / "jobs/seed000.yaml",
            [f"inputs.n={n}", f"execution.shard_size={n}", f"store.path={SCRATCH / 'seed000.zarr'}", *extra],
        )
        attributes = prepare(spec).array_attributes
        forms[option] = {
            name: encode(values, attributes[name][ATTRIBUTE]) if ATTRIBUTE in attributes.get(name, {}) else values
            for name, values in full.items()
        }
    return forms


def encode_costs(full, n: int, chunk: int, repeats: int) -> None:
    """Print the CPU ms per ``chunk``-sample block of encoding each 16-bit array and of counting its overflow."""
    from pipeline.driver import prepare
    from pipeline.encoding import ATTRIBUTE, LOSSY, encode, overflow_count
    from pipeline.spec import load_spec

    def best(call) -> float:
        times = []
        for _ in range(repeats):
            began = time.process_time()
            call()
            times.append(time.process_time() - began)
        return min(times) * 1e3

    print(f"\n# encode and overflow check of one {chunk}-sample block, CPU ms, best of {repeats}\n")
    print("| output option | array | encode ms | overflow_count ms (bits) | x encode | numpy isinf ms | x encode |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for option, extra in OPTIONS.items():
        spec = load_spec(
            ROOT / "jobs/seed000.yaml",
            [f"inputs.n={n}", f"execution.shard_size={n}", f"store.path={SCRATCH / 'seed000.zarr'}", *extra],
        )
        attributes = prepare(spec).array_attributes
        for name, values in full.items():
            enc = attributes.get(name, {}).get(ATTRIBUTE)
            if not enc or enc.get("dtype") not in LOSSY:
                continue
            block = values[:chunk]
            stored = encode(block, enc)
            encode_ms = best(lambda: encode(block, enc))  # noqa: B023 (timed at once, in this iteration)
            count_ms = best(lambda: overflow_count(block, stored, enc))  # noqa: B023
            isinf = "| | |"  # bfloat16 is stored as uint16 bits: numpy has no isinf for it
            if enc["dtype"] == "float16":
                isinf_ms = best(lambda: np.isinf(stored))  # noqa: B023
                isinf = f"| {isinf_ms:.3f} | {isinf_ms / encode_ms:.1%} |"
            print(
                f"| {option} | {name} | {encode_ms:.2f} | {count_ms:.3f} | {count_ms / encode_ms:.1%} {isinf}",
                flush=True,
            )
    began = time.process_time()
    results(chunk)
    print(
        f"\ncomputing one such block (seed000 value, jacobian, hessian, float32): {(time.process_time() - began) * 1e3:.0f} ms CPU"
    )


def write(folder: Path, arrays, chain, chunk: int) -> tuple[int, float, float]:
    """Bytes on disk, CPU seconds of writing and of reading ``arrays`` as one Zarr group (checked bit for bit)."""
    import zarr
    from zarr.codecs import Crc32cCodec

    shutil.rmtree(folder, ignore_errors=True)
    group = zarr.open_group(folder, mode="w")
    made = {}
    for name, values in arrays.items():
        filters, compressors = chain(values, chunk)
        made[name] = group.create_array(
            name,
            shape=values.shape,
            chunks=(chunk, *values.shape[1:]),
            dtype=values.dtype,
            filters=filters,
            compressors=[*compressors, Crc32cCodec()],
        )
    began = time.process_time()
    for name, values in arrays.items():
        made[name][...] = values
    seconds = time.process_time() - began
    began = time.process_time()
    back = {name: zarr.open_array(folder / name, mode="r")[...] for name in arrays}
    read = time.process_time() - began
    for name, values in arrays.items():
        assert back[name].dtype == values.dtype and back[name].tobytes() == values.tobytes(), f"{name} differs"
    size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file() and f.name != "zarr.json")
    return size, seconds, read


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=16384, help="samples of seed000")
    parser.add_argument("--repeats", type=int, default=3, help="best of this many writes")
    parser.add_argument("--chunk", type=int, default=4096, help="samples per chunk (the job's chunk_size)")
    parser.add_argument(
        "--only",
        default="",
        help="only the codec chains whose names contain one of these comma-separated parts, e.g. 'old default,auto'",
    )
    parser.add_argument("--options", default="", help="only these output options (names separated by ;)")
    parser.add_argument(
        "--encode-costs", action="store_true", help="only the table of encode and overflow-check costs per block"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    import zarr

    zarr.config.set({"threading.max_workers": 1})
    full = results(args.n)
    if args.encode_costs:
        print(f"# {platform.processor() or platform.machine()}, seed000 n={args.n}, 1 thread")
        encode_costs(full, args.n, args.chunk, max(args.repeats, 20))
        return
    forms = stored_forms(full, args.n)
    print(
        f"# {platform.processor() or platform.machine()}, zarr {zarr.__version__}, seed000 n={args.n}, "
        f"chunks of {args.chunk}, write best of {args.repeats}, 1 thread\n"
    )
    print(
        "| output option | codec chain | on disk B/sample | x today | value | jacobian | hessian | "
        "write MB/CPU-s | read MB/CPU-s |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    folder = Path(tempfile.mkdtemp(prefix="bench-codecs-"))
    today = None
    try:
        for option, arrays in forms.items():
            if args.options and option not in args.options.split(";") and option != "float32, full (today)":
                continue
            stored_mb = sum(a.nbytes for a in arrays.values()) / 1e6
            chosen = {
                name: chain
                for name, chain in candidates().items()
                if not args.only or any(part in name for part in args.only.split(","))
            }
            runs: dict[str, list] = {name: [] for name in chosen}
            for _ in range(args.repeats):  # the candidates in turn, so that a change of load hits them alike
                for name, chain in chosen.items():
                    runs[name].append(write(folder / name.replace(" ", "_"), arrays, chain, args.chunk))
            for name in chosen:
                size = runs[name][0][0]
                seconds = min(run[1] for run in runs[name])
                read = min(run[2] for run in runs[name])
                per_array = {}
                for array in ("value", "jacobian", "hessian"):
                    per_array[array] = (
                        sum(
                            f.stat().st_size
                            for f in (folder / name.replace(" ", "_") / array / "c").rglob("*")
                            if f.is_file()
                        )
                        / args.n
                    )
                today = today or size
                print(
                    f"| {option} | {name} | {size / args.n:,.0f} | {size / today:.2f} | "
                    f"{per_array['value']:,.0f} | {per_array['jacobian']:,.0f} | {per_array['hessian']:,.0f} | "
                    f"{stored_mb / seconds:,.0f} | {stored_mb / read:,.0f} |",
                    flush=True,
                )
                shutil.rmtree(folder / name.replace(" ", "_"))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
