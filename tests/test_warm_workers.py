"""Warm workers: a Ray worker process builds (imports, loads, traces) a job's function once, not once per shard."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import xarray as xr

from pipeline.driver import submit
from pipeline.runner import InlineExecutor, RayExecutor
from pipeline.spec import validate_spec

TESTS = Path(__file__).resolve().parent


def counted_job(store: Path, log: Path):
    return validate_spec(
        {
            "schema_version": 1,
            "name": "warm",
            "function": {
                "kind": "import",
                "target": "user_fns:counted_quadratic",
                "factory": True,
                "kwargs": {"log": str(log)},
                "python_path": [str(TESTS)],
            },
            "inputs": {"kind": "normal", "n": 512, "shape": [3], "seed": 4},
            "quantities": ["value", "jacobian", "hessian"],
            "store": {"path": str(store), "chunk_size": 16, "encoding": {"hessian": {"packed": True}}},
            "execution": {"shard_size": 32},  # 16 shards
        }
    )


def loads(log: Path) -> Counter:
    return Counter(log.read_text().split())


def test_each_ray_worker_builds_the_function_once(tmp_path, ray_cluster):
    import os

    log = tmp_path / "loads.txt"
    spec = counted_job(tmp_path / "ray.zarr", log)
    summary = submit(spec, RayExecutor())
    assert summary.complete
    counts = loads(log)
    workers = {pid: n for pid, n in counts.items() if pid != str(os.getpid())}
    assert counts[str(os.getpid())] == 1  # the driver's check on 2 samples
    assert workers and all(n == 1 for n in workers.values()), counts  # 16 shards, one build per worker process
    assert len(workers) <= 16

    inline = counted_job(tmp_path / "inline.zarr", tmp_path / "inline.txt")
    submit(inline, InlineExecutor())
    a, b = xr.open_zarr(str(tmp_path / "ray.zarr")), xr.open_zarr(str(tmp_path / "inline.zarr"))
    for name in ("inputs", "value", "jacobian", "hessian"):
        np.testing.assert_array_equal(a[name].values, b[name].values)  # bit-identical to the inline executor


def test_a_worker_reads_the_stores_encodings_once_per_job(tmp_path, monkeypatch):
    """The encodings (here a packed Hessian) are read once per process and job, and every shard uses them."""
    import pipeline.tasks as tasks
    from pipeline.encoding import encodings

    reads = []
    monkeypatch.setattr(tasks, "_ENCODINGS", {})
    monkeypatch.setattr(tasks, "encodings", lambda group: reads.append(group) or encodings(group))
    first = counted_job(tmp_path / "a.zarr", tmp_path / "a.txt")
    assert submit(first, InlineExecutor()).complete
    assert len(reads) == 1  # 16 shards
    assert submit(first, InlineExecutor(), overwrite=True).complete
    assert len(reads) == 2  # the store made anew: read again
    other = counted_job(tmp_path / "b.zarr", tmp_path / "b.txt")
    assert submit(other, InlineExecutor()).complete
    assert len(reads) == 3  # another store
    import zarr

    older = zarr.open_group(str(tmp_path / "b.zarr"), mode="r+")
    del older.attrs["store_id"]  # a store made before stores had one: read every time, never mistaken for another
    assert tasks.stored_encodings(older) == tasks.stored_encodings(older) == encodings(older)
    assert len(reads) == 5
    reference = counted_job(tmp_path / "c.zarr", tmp_path / "c.txt")
    monkeypatch.setattr(tasks, "stored_encodings", encodings)  # read every shard
    assert submit(reference, InlineExecutor()).complete
    for name in ("value", "jacobian", "hessian"):  # the packed Hessian stored as when read per shard
        np.testing.assert_array_equal(
            xr.open_zarr(str(tmp_path / "a.zarr"))[name].values, xr.open_zarr(str(tmp_path / "c.zarr"))[name].values
        )
