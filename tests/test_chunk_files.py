"""Chunk files written in the worker's thread (``pipeline.chunk_files``) are the bytes Zarr writes.

For every codec chain a store can have (none, Blosc lz4 / zstd with each
shuffle, the 16-bit arrays' whole-chunk Blosc zstd, Zstd; crc32c last or
not), for float32/float64/float16 and the uint16 of bfloat16, and for chunk
grids with edge chunks along the sample axis and along others, the files of
an array written block by block with ``ChunkFiles`` equal, byte for byte,
those of the same array written by Zarr, and read back the written values.
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

import numpy as np
import pytest
import zarr
from zarr.codecs import BloscCodec, Crc32cCodec, ZstdCodec

from pipeline import chunk_files
from pipeline.chunk_files import chunk_writer
from pipeline.store import write_region

CODECS = {
    "none": [],
    "lz4 shuffle": [BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")],
    "lz4 noshuffle level 1": [BloscCodec(cname="lz4", clevel=1, shuffle="noshuffle")],
    "zstd bitshuffle": [BloscCodec(cname="zstd", clevel=3, shuffle="bitshuffle")],
    "blosc zstd over the whole chunk": [BloscCodec(cname="zstd", clevel=2, shuffle="shuffle", blocksize=1 << 16)],
    "zstd": [ZstdCodec(level=3)],
}


def smooth(shape, dtype, seed=0):
    """Values that compress (a smooth field plus a little noise), as results do."""
    rng = np.random.default_rng(seed)
    grid = np.linspace(0, 3, int(np.prod(shape))).reshape(shape)
    values = np.sin(grid) + 1e-3 * rng.standard_normal(shape)
    if dtype == "uint16":  # bfloat16's storage: the high half of float32
        return (values.astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)
    return values.astype(dtype)


def make(folder: Path, shape, chunks, dtype, codecs, crc32c=True):
    fill = np.nan if np.dtype(dtype).kind == "f" else 0
    return zarr.create_array(
        str(folder), shape=shape, chunks=chunks, dtype=dtype, fill_value=fill,
        compressors=[*codecs, *([Crc32cCodec()] if crc32c else [])],
    ).with_config({"write_empty_chunks": True})  # fmt: skip


def chunk_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
            and p.name != "zarr.json"}  # fmt: skip


@pytest.mark.parametrize("codec", list(CODECS))
@pytest.mark.parametrize(
    ("shape", "chunks", "dtype", "blocks"),
    [
        ((10, 3), (4, 3), "float32", [(0, 4), (4, 8), (8, 10)]),  # the last chunk is an edge chunk
        ((12, 5, 3), (4, 2, 3), "float64", [(0, 8), (8, 12)]),  # edges along axis 1, two chunks a block
        ((8, 150, 2), (4, 150, 2), "float16", [(0, 4), (4, 8)]),
        ((9, 7), (3, 7), "uint16", [(0, 6), (6, 9)]),
    ],
)
def test_chunk_files_are_zarrs_bytes(tmp_path, codec, shape, chunks, dtype, blocks):
    values = smooth(shape, dtype)
    for crc32c in (True, False):
        by_zarr = make(tmp_path / f"zarr{crc32c}", shape, chunks, dtype, CODECS[codec], crc32c)
        by_us = make(tmp_path / f"ours{crc32c}", shape, chunks, dtype, CODECS[codec], crc32c)
        files = chunk_writer(by_us)
        assert files is not None, codec
        for start, stop in blocks:
            by_zarr[start:stop] = values[start:stop]
            assert files.write(start, values[start:stop])
        ours, theirs = chunk_bytes(tmp_path / f"ours{crc32c}"), chunk_bytes(tmp_path / f"zarr{crc32c}")
        assert ours.keys() == theirs.keys() and len(ours) == np.prod([-(-n // c) for n, c in zip(shape, chunks)])
        for key in theirs:
            assert ours[key] == theirs[key], (codec, crc32c, key)
        np.testing.assert_array_equal(zarr.open_array(str(tmp_path / f"ours{crc32c}"), mode="r")[:], values)


def test_regions_off_the_chunk_grid_are_left_to_zarr(tmp_path):
    array = make(tmp_path / "a", (10, 2), (4, 2), "float32", CODECS["lz4 shuffle"])
    files = chunk_writer(array)
    assert not files.write(2, np.ones((4, 2), np.float32))  # starts inside a chunk
    assert not files.write(0, np.ones((6, 2), np.float32))  # ends inside a chunk that is not the last
    assert not files.write(0, np.ones((4, 3), np.float32))  # another shape
    assert chunk_bytes(tmp_path / "a") == {}  # nothing written


def test_sharded_and_bucket_arrays_are_left_to_zarr(tmp_path):
    sharded = zarr.create_array(str(tmp_path / "s"), shape=(16, 2), chunks=(4, 2), shards=(8, 2), dtype="float32")
    in_memory = zarr.create_array(zarr.storage.MemoryStore(), shape=(16, 2), chunks=(4, 2), dtype="float32")
    assert chunk_writer(sharded) is None
    assert chunk_writer(in_memory) is None


def test_write_region_writes_local_chunks_without_zarrs_setitem(tmp_path, monkeypatch):
    """A shard's blocks on local disk go through ``ChunkFiles``; a region off the grid still through Zarr."""
    group = zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    group.create_array("h", shape=(12, 3, 2), chunks=(4, 3, 2), dtype="float32", fill_value=np.nan,
                       compressors=[*CODECS["lz4 shuffle"], Crc32cCodec()])  # fmt: skip
    values = smooth((12, 3, 2), "float32")
    calls = []
    original = zarr.Array.__setitem__
    monkeypatch.setattr(
        zarr.Array, "__setitem__", lambda self, key, value: calls.append(key) or original(self, key, value)
    )
    targets: dict = {}
    write_region(tmp_path / "g.zarr", {"h": values[0:8]}, 0, 8, group=group, targets=targets)
    write_region(tmp_path / "g.zarr", {"h": values[8:12]}, 8, 12, group=group, targets=targets)
    assert calls == []
    write_region(tmp_path / "g.zarr", {"h": values[2:6]}, 2, 6, group=group, targets=targets)  # off the grid
    assert calls == [slice(2, 6)]
    np.testing.assert_array_equal(zarr.open_group(str(tmp_path / "g.zarr"), mode="r")["h"][:], values)


# ------------------------------------------------------------------ O_DIRECT

needs_direct = pytest.mark.skipif(not chunk_files._O_DIRECT, reason="no O_DIRECT on this platform (macOS)")


def skip_without_direct(folder: Path) -> None:
    """Skip where ``folder``'s file system refuses O_DIRECT (an older tmpfs): the fallback test covers it there."""
    try:
        os.close(os.open(folder / "probe", os.O_WRONLY | os.O_CREAT | chunk_files._O_DIRECT, 0o644))
    except OSError as error:
        if error.errno != errno.EINVAL:
            raise
        pytest.skip(f"{folder}'s file system refuses O_DIRECT")
    finally:
        (folder / "probe").unlink(missing_ok=True)


@needs_direct
@pytest.mark.parametrize(
    ("rows", "cols", "codec", "crc32c"),
    [
        (1024, 1, "none", False),  # exactly one 4 KiB block
        (1024, 1, "none", True),  # one block, then the checksum's 4 bytes through the page cache
        (3000, 3, "none", True),  # 8 whole blocks and a 3,236-byte rest
        (100, 2, "none", False),  # under one block: all of it through the page cache
        (3000, 3, "lz4 shuffle", True),
        (3000, 3, "zstd", False),
    ],
)
def test_direct_writes_are_zarrs_bytes(tmp_path, rows, cols, codec, crc32c):
    """Every chunk file written past the page cache (threshold 0) holds Zarr's bytes and reads back."""
    skip_without_direct(tmp_path)
    shape, chunks = (rows * 2 + rows // 3, cols), (rows, cols)  # two whole chunks and an edge chunk
    values = smooth(shape, "float32")
    by_zarr = make(tmp_path / "zarr", shape, chunks, "float32", CODECS[codec], crc32c)
    by_us = make(tmp_path / "ours", shape, chunks, "float32", CODECS[codec], crc32c)
    by_zarr[:] = values
    files = chunk_writer(by_us)
    files.direct_min_bytes = 0
    assert files.write(0, values[: 2 * rows]) and files.write(2 * rows, values[2 * rows :])
    ours, theirs = chunk_bytes(tmp_path / "ours"), chunk_bytes(tmp_path / "zarr")
    assert ours == theirs
    whole_blocks = sum(len(b) // 4096 * 4096 for b in theirs.values())
    assert files.direct_bytes == whole_blocks and files.direct_min_bytes == 0
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "ours"), mode="r")[:], values)


@needs_direct
def test_only_chunks_of_a_mebibyte_or_more_are_written_directly_and_direct_false_writes_none(tmp_path):
    skip_without_direct(tmp_path)
    values = smooth((140_000, 4), "float32")  # 16-byte rows
    big = make(tmp_path / "big", values.shape, (70_000, 4), "float32", CODECS["none"], crc32c=True)  # 1.12 MB chunks
    small = make(tmp_path / "small", values.shape, (10_000, 4), "float32", CODECS["none"], crc32c=True)  # 160 kB
    files = chunk_writer(big)
    assert files.direct_min_bytes == chunk_files.DIRECT_MIN_BYTES == 1 << 20
    assert files.write(0, values) and files.direct_bytes == 2 * ((70_000 * 16 + 4) // 4096 * 4096)
    files = chunk_writer(small)
    assert files.write(0, values) and files.direct_bytes == 0
    again = chunk_writer(big, direct=False)
    assert again.direct_min_bytes is None and again.write(0, values) and again.direct_bytes == 0
    for name in ("big", "small"):
        np.testing.assert_array_equal(zarr.open_array(str(tmp_path / name), mode="r")[:], values)


@needs_direct
def test_a_file_system_that_refuses_o_direct_gets_ordinary_writes(tmp_path, monkeypatch):
    """EINVAL at open (no O_DIRECT, e.g. an older tmpfs) or at the first write (a stricter alignment): same bytes."""
    real_open, real_write = os.open, os.write
    refuse = {"open": True}

    def fake_open(path, flags, *args):
        if flags & chunk_files._O_DIRECT and refuse["open"]:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, *args)

    def fake_write(fd, data):
        if fcntl.fcntl(fd, fcntl.F_GETFL) & chunk_files._O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_write(fd, data)

    monkeypatch.setattr(chunk_files.os, "open", fake_open)
    monkeypatch.setattr(chunk_files.os, "write", fake_write)
    values = smooth((9000, 3), "float32")
    for case in ("open", "write"):
        refuse["open"] = case == "open"
        by_zarr = make(tmp_path / f"zarr-{case}", values.shape, (3000, 3), "float32", [], crc32c=True)
        by_us = make(tmp_path / f"ours-{case}", values.shape, (3000, 3), "float32", [], crc32c=True)
        by_zarr[:] = values
        files = chunk_writer(by_us)
        files.direct_min_bytes = 0
        assert files.write(0, values)
        assert files.direct_min_bytes is None and files.direct_bytes == 0, case  # not tried again
        assert chunk_bytes(tmp_path / f"ours-{case}") == chunk_bytes(tmp_path / f"zarr-{case}"), case


@needs_direct
def test_a_failed_direct_write_leaves_no_file(tmp_path, monkeypatch):
    array = make(tmp_path / "a", (6000, 3), (3000, 3), "float32", [], crc32c=True)
    files = chunk_writer(array)
    files.direct_min_bytes = 0

    def full_disk(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(chunk_files.os, "write", full_disk)
    with pytest.raises(OSError, match="No space left"):
        files.write(0, smooth((6000, 3), "float32"))
    assert [p.name for p in (tmp_path / "a").rglob("*") if p.is_file()] == ["zarr.json"]


def test_aligned_buffers_are_reused_within_their_limits():
    buffers = chunk_files._Buffers(keep=2, keep_bytes=3 * 4096)
    first = buffers.take(5000)
    assert len(first) == 8192 and len(first) % 4096 == 0
    buffers.give(first)
    assert buffers.take(100) is first  # the smallest free one that fits
    small = buffers.take(100)  # none free: a new one
    assert small is not first and len(small) == 4096
    buffers.give(first)
    buffers.give(small)
    assert buffers._free == [small, first]  # 3 pages: within both limits
    big = buffers.take(3 * 4096)  # none fits: new
    buffers.give(big)  # 6 pages kept would pass keep_bytes; 3 buffers pass keep: the smallest go first
    assert buffers._free == [big] and small.closed and first.closed
