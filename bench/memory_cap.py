"""What a memory cap costs on the CPU: no cap vs a cap measured every chunk vs a cap measured once per size.

Under ``memory_limit_bytes`` (a job's ``execution.memory_limit``) every chunk
used to run measured - under ``chunking.MemoryTracker``, a Python dispatch mode
that adds up each op's new storages (Taylor, collapsed, the operators), or
under the profiler (torch.func strategies, ~10x slower ops). Now only the first
chunk of each size written into the results runs measured; equal or smaller
chunks run unmeasured (``chunking.must_measure``). Three columns side by side
in one run (interleaved, best of --repeats after a warm-up round), the middle one with ``chunking.MEASURE_EVERY_CHUNK`` (the old way):

  no cap | cap, every chunk measured | cap, once per size

Workloads: tanh MLP 20 -> 128 -> 128 -> 1 (``jobs/operators.yaml``'s
function), float32, one torch thread, fixed chunks; the cap is far above
need, so no chunk is halved and all three columns do the same arithmetic.

Usage:
  .venv/bin/python bench/memory_cap.py            # N = 2048, chunks 64 and 128, best of 3
  .venv/bin/python bench/memory_cap.py --quick    # N = 512, chunk 64, one run
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import platform
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from timing import best_time  # bench/timing.py

from pipeline.engine import chunking, compute_derivatives

CAP = 256 << 20
ROWS = (  # label, quantities, method, options
    ("value, bilaplacian", ("value", "bilaplacian"), "auto", None),
    ("value, laplacian", ("value", "laplacian"), "auto", None),
    # the torch.func row (measured with the profiler, slower) only with `--forward`: before its chunks ran under
    # no_grad it grew the process past 24 GB over the rounds (BENCHMARKS.md, session 21)
    ("laplacian_estimate (16)", ("laplacian_estimate",), "auto", {"samples": 16, "seed": 0}),
)


def network() -> torch.nn.Module:
    torch.manual_seed(0)
    layers = [torch.nn.Linear(20, 128), torch.nn.Tanh(), torch.nn.Linear(128, 128), torch.nn.Tanh()]
    return torch.nn.Sequential(*layers, torch.nn.Linear(128, 1))


def run(fn, x, quantities, method, options, chunk, cap, every_chunk):
    """``compute_derivatives`` with no cap, or a cap measured the old way (``every_chunk``) or the new."""
    chunking.MEASURE_EVERY_CHUNK = every_chunk
    try:
        return compute_derivatives(
            fn, x, quantities, method=method, chunk_size=chunk, memory_limit_bytes=cap, options=options
        )
    finally:
        chunking.MEASURE_EVERY_CHUNK = False


def side_by_side(fn, x, quantities, method, options, chunk, repeats):
    """Best seconds and last result of each column; columns interleaved per round (a shared host drifts)."""
    columns = {"none": (None, False), "every": (CAP, True), "once": (CAP, False)}
    best = {name: math.inf for name in columns}
    results = {}
    for round_ in range(repeats + 1):  # round 0 warms up (traces, first-call allocations, footprints)
        for name, (cap, every_chunk) in columns.items():
            seconds, results[name] = best_time(
                functools.partial(run, fn, x, quantities, method, options, chunk, cap, every_chunk), x.device
            )
            if round_:
                best[name] = min(best[name], seconds)
    return best, results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=2048)
    parser.add_argument("--chunks", default="64,128", help="comma-separated fixed chunk sizes")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="N = 512, chunk 64, one run")
    parser.add_argument(
        "--forward", action="store_true", help="also a forced forward Hessian (torch.func; run it under prlimit)"
    )
    args = parser.parse_args()
    if args.quick:
        args.n, args.chunks, args.repeats = 512, "64", 1
    torch.set_num_threads(1)
    fn = network()
    x = torch.randn(args.n, 20, generator=torch.Generator().manual_seed(1))
    print(
        f"\n### memory cap {CAP >> 20} MiB, N = {args.n}, float32, {platform.machine()}, "
        f"torch {torch.__version__}, {torch.get_num_threads()} thread, best of {args.repeats}\n"
    )
    print(
        "| workload | method | chunk | no cap s | cap, every chunk s | cap, once per size s | every / none | once / none |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    rows = ROWS + ((("hessian (forced)", ("hessian",), "forward", None),) if args.forward else ())
    for label, quantities, method, options in rows:
        for chunk in (int(c) for c in args.chunks.split(",")):
            seconds, results = side_by_side(fn, x, quantities, method, options, chunk, args.repeats)
            free, every, once = seconds["none"], seconds["every"], seconds["once"]
            reference, old, new = results["none"], results["every"], results["once"]
            for result in (old, new):  # the same numbers, and the cap's peak reported either way
                assert result.chunk_size == chunk and result.peak_memory_bytes is not None
                for name, value in reference.outputs.items():
                    torch.testing.assert_close(result.outputs[name], value)
            print(
                f"| {label} | {new.method} | {chunk} | {free:.2f} | {every:.2f} | {once:.2f} | {every / free:.2f} | {once / free:.2f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
