"""Benchmark: the driver's steps before a sweep's first shard: checking every case, making the store.

Checking every case (``pipeline.driver.prepare``: rte1d builds each case's
profiles to check its stability limit) ran in blocks of 65,536 cases before
session 15, and now in blocks of ``kinds.sweep.check_block`` cases (2**21
numbers of the widest parameter: 5,242 cases at 400 cells), the profiles
built in place.

The store holds one ``[case]`` array per case parameter, written by the
driver with the store (no shard writes them). Before session 15 they were
chunked like the results (``store.chunk_size`` cases, 64 in jobs/sweep.yaml)
and written through Zarr's ``__setitem__``: one small file per 64 cases and
parameter, each through Zarr's event loop. Now they are chunked by
``plan.PARAMETER_CHUNK_CASES`` (131,072) cases and written by
``chunk_files``. Both are timed side by side for jobs/sweep.yaml at several
case counts (``pipeline.driver.open_store``: template, case table, plan), and
the parameters read back are checked equal.

Usage:
    python bench/sweep_store.py                 # 4,096, 65,536 and 262,144 cases
    python bench/sweep_store.py --cases 4096 --repeats 1
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

import pipeline.plan
import pipeline.store
from pipeline.driver import open_store, prepare
from pipeline.spec import load_spec

ROOT = Path(__file__).resolve().parents[1]
PARAMETERS = ("T0_mean", "sigma_mean", "T0_phase", "T0_amplitude", "sigma_amplitude")


@contextlib.contextmanager
def check_as_before():
    """The driver's check of every case in blocks of 65,536 cases, rte1d's profiles not in place: as before
    session 15."""
    import pipeline.kinds.sweep as sweep
    import pipeline.solvers.rte1d as rte1d

    block, profile = sweep.check_block, rte1d.profile
    sweep.check_block = lambda parameters: 65536
    rte1d.profile = lambda *args, in_place=False: profile(*args)
    try:
        yield
    finally:
        sweep.check_block, rte1d.profile = block, profile


def sweep_spec(cases: int, path: Path):
    return load_spec(
        ROOT / "jobs/sweep.yaml",
        [
            f"sweep.axes.T0_mean.num={cases // 64}",
            "sweep.axes.sigma_mean.num=32",
            f"store.path={path}",
            "store.check_free_space=false",  # only the driver's steps run: no results are written
        ],
    )


def check_seconds(cases: int, folder: Path) -> float:
    """Seconds of ``prepare`` (the driver's checks, every case's stability among them) for a ``cases``-case sweep."""
    spec = sweep_spec(cases, folder / "sweep.zarr")
    began = time.perf_counter()
    prepare(spec)
    return time.perf_counter() - began


@contextlib.contextmanager
def as_before():
    """Case parameters chunked by chunk_size and written through Zarr, as before session 15."""
    chunk, whole = pipeline.plan.PARAMETER_CHUNK_CASES, pipeline.store._write_whole

    def through_zarr(array, values, direct=True):
        pipeline.store._for_writing(array)[...] = values

    pipeline.plan.PARAMETER_CHUNK_CASES, pipeline.store._write_whole = 1, through_zarr
    try:
        yield
    finally:
        pipeline.plan.PARAMETER_CHUNK_CASES, pipeline.store._write_whole = chunk, whole


def make(cases: int, folder: Path) -> tuple[float, int, dict]:
    """Seconds to make the store of a ``cases``-case sweep, its parameter files, and the parameters read back."""
    import zarr

    path = folder / "sweep.zarr"
    shutil.rmtree(path, ignore_errors=True)
    prepared = prepare(sweep_spec(cases, path))  # the driver's checks (every case's stability): not timed
    began = time.perf_counter()
    open_store(prepared)
    seconds = time.perf_counter() - began
    files = sum(1 for name in PARAMETERS for _ in (path / name / "c").iterdir())
    group = zarr.open_group(str(path), mode="r")
    return seconds, files, {name: group[name][:] for name in PARAMETERS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default="4096,65536,262144", help="case counts, multiples of 64")
    parser.add_argument("--repeats", type=int, default=2, help="best of this many")
    args = parser.parse_args()
    counts = [int(c) for c in args.cases.split(",")]
    print(f"# {platform.machine()}, {platform.processor() or 'cpu'}, jobs/sweep.yaml, chunk_size 64\n")
    folder = Path(tempfile.mkdtemp(prefix="sweep-store-"))
    try:
        check_seconds(counts[0], folder)  # warm-up: imports, the solver's first build
        print("Checking every case (`prepare`):\n")
        print("| cases | before: 65,536-case blocks s | ours s | before / ours |")
        print("|---:|---:|---:|---:|")
        for cases in counts:
            with check_as_before():
                b = min(check_seconds(cases, folder) for _ in range(args.repeats))
            o = min(check_seconds(cases, folder) for _ in range(args.repeats))
            print(f"| {cases:,} | {b:.3f} | {o:.3f} | {b / o:.1f}x |", flush=True)
        print("\nMaking the store (`open_store`):\n")
        print("| cases | before: s | before: parameter files | ours: s | ours: parameter files | before / ours |")
        print("|---:|---:|---:|---:|---:|---:|")
        for cases in counts:
            with as_before():
                before = [make(cases, folder) for _ in range(args.repeats)]
            ours = [make(cases, folder) for _ in range(args.repeats)]
            for name in PARAMETERS:
                np.testing.assert_array_equal(before[0][2][name], ours[0][2][name])
            b, o = min(r[0] for r in before), min(r[0] for r in ours)
            print(f"| {cases:,} | {b:.3f} | {before[0][1]:,} | {o:.3f} | {ours[0][1]:,} | {b / o:.1f}x |", flush=True)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
