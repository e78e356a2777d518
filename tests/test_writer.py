"""Block writes in the background: order, checksum, errors, and nothing left writing after a failure."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import zarr

import pipeline.writer as writer_module
from pipeline.plan import plan_derivative_job
from pipeline.store import Checksum, StoreError, checksum, create_store
from pipeline.writer import BlockWriter


def make_store(tmp_path, n=12):
    plan = plan_derivative_job(n, (2,), (3,), ("value", "jacobian"), 2, 12, "float32")
    path = tmp_path / "s.zarr"
    create_store(path, plan, {"spec": {"name": "t"}, "spec_hash": "abc", "name": "t"})
    return path


def block(start, stop, seed=0):
    rng = np.random.default_rng(seed + start)
    size = stop - start
    return {
        "inputs": rng.standard_normal((size, 2)).astype(np.float32),
        "value": rng.standard_normal((size, 3)).astype(np.float32),
        "jacobian": rng.standard_normal((size, 3, 2)).astype(np.float32),
    }


def test_blocks_land_in_the_store_with_the_whole_shards_checksum(tmp_path):
    path = make_store(tmp_path)
    parts = [block(0, 4), block(4, 8), block(8, 12)]
    with BlockWriter(path) as writer:
        for start, part in zip((0, 4, 8), parts):
            writer.submit(start, start + 4, part)
    whole = {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}
    assert writer.checksum == checksum(whole)
    group = zarr.open_group(str(path), mode="r")
    for name, values in whole.items():
        np.testing.assert_array_equal(group[name][:], values)
    assert writer.nonfinite == 0 and writer.bytes_written == sum(v.nbytes for v in whole.values())


def test_checksum_does_not_depend_on_the_split_but_on_every_byte():
    whole = block(0, 12)
    split = Checksum()
    for start in (0, 5, 11):
        stop = {0: 5, 5: 11, 11: 12}[start]
        split.update({k: v[start:stop] for k, v in whole.items()})
    assert split.hexdigest() == checksum(whole)
    changed = {k: v.copy() for k, v in whole.items()}
    changed["value"][7, 1] = np.nextafter(changed["value"][7, 1], np.inf)
    assert checksum(changed) != checksum(whole)
    # which array holds which bytes is part of what is checked
    a, b = np.arange(6.0), np.arange(6.0)[::-1].copy()
    assert checksum({"a": a, "b": b}) != checksum({"a": b, "b": a})


def test_nonfinite_values_are_counted(tmp_path):
    path = make_store(tmp_path)
    part = block(0, 4)
    part["jacobian"][1, 2, 0] = np.nan
    part["value"][3, 0] = np.inf
    with BlockWriter(path) as writer:
        writer.submit(0, 4, part)
    assert writer.nonfinite == 2


def test_writes_run_in_one_thread_in_submission_order_with_bounded_queue(tmp_path, monkeypatch):
    path = make_store(tmp_path)
    seen, threads, in_queue = [], set(), []
    real = writer_module.write_region

    def slow_write(p, arrays, start, stop, group=None, targets=None):
        time.sleep(0.05)
        seen.append(start)
        threads.add(threading.get_ident())
        real(p, arrays, start, stop, group=group)

    monkeypatch.setattr(writer_module, "write_region", slow_write)
    with BlockWriter(path, depth=2) as writer:
        for start in range(0, 12, 2):
            writer.submit(start, start + 2, block(start, start + 2))
            in_queue.append(len(writer._pending))
    assert seen == list(range(0, 12, 2))
    assert len(threads) == 1 and threading.get_ident() not in threads
    assert max(in_queue) <= 2


def test_a_failed_write_is_raised_by_the_writer(tmp_path):
    path = make_store(tmp_path)
    bad = block(0, 4)
    bad["value"] = bad["value"][:, :2]  # the store holds 3 outputs
    with pytest.raises(StoreError, match="'value' has shape"):
        with BlockWriter(path) as writer:
            writer.submit(0, 4, bad)
            for start in (4, 8):
                writer.submit(start, start + 4, block(start, start + 4))


def test_a_compute_failure_drops_queued_writes_and_leaves_no_thread_writing(tmp_path, monkeypatch):
    path = make_store(tmp_path)
    started, finished = [], []
    real = writer_module.write_region

    def slow_write(p, arrays, start, stop, group=None, targets=None):
        started.append(start)
        time.sleep(0.1)
        real(p, arrays, start, stop, group=group)
        finished.append(start)

    monkeypatch.setattr(writer_module, "write_region", slow_write)
    with pytest.raises(ZeroDivisionError):
        with BlockWriter(path, depth=3) as writer:
            for start in (0, 4, 8):
                writer.submit(start, start + 4, block(start, start + 4))
            1 / 0
    # the write in progress finished before the error got out; the queued ones never started
    assert finished == started and len(started) < 3
    with pytest.raises(RuntimeError, match="closed"):
        writer.submit(0, 4, block(0, 4))
    with pytest.raises(ValueError, match="depth"):
        BlockWriter(path, depth=0)
