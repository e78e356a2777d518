"""Chunk files written in the worker's thread (``pipeline.chunk_files``) are the bytes Zarr writes.

For every codec chain a store can have (none, Blosc lz4 / zstd with each
shuffle, the 16-bit arrays' whole-chunk Blosc zstd, Zstd; crc32c last or
not), for float32/float64/float16 and the uint16 of bfloat16, and for chunk
grids with edge chunks along the sample axis and along others, the files of
an array written block by block with ``ChunkFiles`` equal, byte for byte,
those of the same array written by Zarr, and read back the written values.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr
from zarr.codecs import BloscCodec, Crc32cCodec, ZstdCodec

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
    monkeypatch.setattr(zarr.Array, "__setitem__", lambda self, key, value: calls.append(key) or original(self, key, value))
    targets: dict = {}
    write_region(tmp_path / "g.zarr", {"h": values[0:8]}, 0, 8, group=group, targets=targets)
    write_region(tmp_path / "g.zarr", {"h": values[8:12]}, 8, 12, group=group, targets=targets)
    assert calls == []
    write_region(tmp_path / "g.zarr", {"h": values[2:6]}, 2, 6, group=group, targets=targets)  # off the grid
    assert calls == [slice(2, 6)]
    np.testing.assert_array_equal(zarr.open_group(str(tmp_path / "g.zarr"), mode="r")["h"][:], values)
