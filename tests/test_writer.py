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

    def slow_write(p, arrays, start, stop, group=None, **kwargs):
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

    def slow_write(p, arrays, start, stop, group=None, **kwargs):
        started.append(start)
        time.sleep(0.1)
        real(p, arrays, start, stop, group=group)
        finished.append(start)

    monkeypatch.setattr(writer_module, "write_region", slow_write)
    with pytest.raises(ZeroDivisionError):
        with BlockWriter(path, depth=3) as writer:
            for start in (0, 4, 8):
                writer.submit(start, start + 4, block(start, start + 4))
            raise ZeroDivisionError
    # the write in progress finished before the error got out; the queued ones never started
    assert finished == started and len(started) < 3
    with pytest.raises(RuntimeError, match="closed"):
        writer.submit(0, 4, block(0, 4))
    with pytest.raises(ValueError, match="depth"):
        BlockWriter(path, depth=0)


def test_several_threads_write_a_blocks_chunks_in_parallel_to_the_same_bytes(tmp_path, monkeypatch):
    """``threads``: a block's chunks written by that many threads at once; the store and checksum as with one."""
    import pipeline.chunk_files as chunk_files

    paths = {threads: make_store(tmp_path / str(threads), n=24) for threads in (1, 3)}
    at_once, running, lock = [], [0], threading.Lock()
    real = chunk_files.ChunkFiles.store_chunk

    def counted(self, coords, data, tail):  # one chunk's file written (with 1 thread: in the I/O thread)
        with lock:
            running[0] += 1
            at_once.append(running[0])
        time.sleep(0.02)  # long enough for the pool's other threads to start theirs
        real(self, coords, data, tail)
        with lock:
            running[0] -= 1

    monkeypatch.setattr(chunk_files.ChunkFiles, "store_chunk", counted)
    digests = {}
    for threads, path in paths.items():
        at_once.clear()
        with BlockWriter(path, threads=threads) as writer:
            for start in (0, 12):  # blocks of 6 chunks of 2 samples, 3 arrays: 18 chunks each
                writer.submit(start, start + 12, block(start, start + 12))
        digests[threads] = writer.checksum
        assert max(at_once) == threads and len(at_once) == 36
    assert digests[1] == digests[3]
    for name in ("inputs", "value", "jacobian"):
        files = [sorted(p.relative_to(paths[t]) for p in (paths[t] / name).rglob("*") if p.is_file()) for t in (1, 3)]
        assert files[0] == files[1]
        for relative in files[0]:
            assert (paths[1] / relative).read_bytes() == (paths[3] / relative).read_bytes()


@pytest.mark.parametrize("threads", [1, 4])
def test_a_failed_chunk_write_is_raised_and_no_thread_is_left(tmp_path, monkeypatch, threads):
    """A chunk file that fails, in the pool's threads or in the one thread that writes while the next encodes."""
    import pipeline.chunk_files as chunk_files

    path = make_store(tmp_path, n=24)
    real = chunk_files.ChunkFiles.store_chunk

    def failing(self, coords, data, tail):
        if coords[0] == 3:
            raise OSError("disk full")
        real(self, coords, data, tail)

    monkeypatch.setattr(chunk_files.ChunkFiles, "store_chunk", failing)
    before = threading.active_count()
    with pytest.raises(OSError, match="disk full"):
        with BlockWriter(path, threads=threads) as writer:
            for start in (0, 12):
                writer.submit(start, start + 12, block(start, start + 12))
    assert threading.active_count() == before
    with pytest.raises(ValueError, match="threads"):
        BlockWriter(path, threads=0)
