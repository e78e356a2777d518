"""Whole chunks of a local Zarr v3 array, encoded and written as files in the calling thread.

A worker's writer thread writes each block of a shard (whole chunks along the
sample axis). Through Zarr, each chunk goes through its asynchronous codec
pipeline: the call is handed to Zarr's event-loop thread, each codec runs in
a thread of its own, the crc32c codec copies the chunk once more to append
its checksum, and the file is written from yet another thread. For the
chunks a task writes (a few MB each) that machinery cost about half the
CPU time of a write and held Python's lock (GIL) for most of it, taking it
from the thread that computes the next block (BENCHMARKS.md, "Store writes").

``chunk_writer(array)`` returns a :class:`ChunkFiles` that writes the same
bytes Zarr would (the array's own codecs: ``bytes``, then Blosc or Zstd or
nothing, then ``crc32c``; edge chunks padded with the fill value; each file
written to a temporary name and renamed, as Zarr's ``LocalStore`` does) with
numcodecs and ``google_crc32c``, which Zarr itself uses, in the calling
thread. Any other array (a bucket, Zarr shards, another codec, a chunk grid
that is not regular) gets ``None``, and Zarr writes it as before.
``tests/test_chunk_files.py`` compares the files byte for byte with Zarr's.
"""

from __future__ import annotations

import itertools
import math
import os
import uuid
from pathlib import Path
from typing import Any

import numpy as np

_SHUFFLE = {"noshuffle": 0, "shuffle": 1, "bitshuffle": 2}


def chunk_writer(array) -> ChunkFiles | None:
    """A :class:`ChunkFiles` for a ``zarr.Array`` whose chunks this module can write, else ``None``.

    >>> import tempfile, zarr, numpy as np
    >>> folder = tempfile.mkdtemp()
    >>> array = zarr.create_array(folder, shape=(10, 3), chunks=(4, 3), dtype="float32")
    >>> writer = chunk_writer(array)
    >>> writer.write(4, np.ones((6, 3), "float32"))   # rows 4-9: a whole chunk, then the edge chunk
    True
    >>> float(array[:].sum())
    18.0
    """
    try:
        from zarr.core.chunk_grids import RegularChunkGrid
        from zarr.storage import LocalStore
    except ImportError:  # a zarr without these names: it writes everything itself
        return None
    metadata = array.metadata
    if getattr(metadata, "zarr_format", None) != 3 or not isinstance(array.store, LocalStore):
        return None
    if not isinstance(metadata.chunk_grid, RegularChunkGrid) or not hasattr(metadata, "encode_chunk_key"):
        return None
    steps = _encoders(metadata.codecs)
    if steps is None:
        return None
    folder = Path(array.store.root) / array.path if array.path else Path(array.store.root)
    return ChunkFiles(
        folder=folder,
        shape=tuple(metadata.shape),
        chunks=tuple(metadata.chunk_grid.chunk_shape),
        byte_order=steps[0],
        fill_value=metadata.fill_value,
        compressor=steps[1],
        crc32c=steps[2],
        chunk_key=metadata.encode_chunk_key,
    )


def _encoders(codecs) -> tuple[str, Any, bool] | None:
    """(byte order of the ``bytes`` codec, the numcodecs compressor or None, crc32c last), or None when unsupported."""
    from zarr.codecs import BytesCodec, Crc32cCodec

    codecs = list(codecs)
    if not codecs or not isinstance(codecs[0], BytesCodec):
        return None  # an array-to-array codec (transpose, ...) or Zarr shards first
    endian = getattr(codecs[0].endian, "value", codecs[0].endian)  # "little", "big" or None (1-byte types)
    crc32c = isinstance(codecs[-1], Crc32cCodec)
    middle = codecs[1 : len(codecs) - crc32c]
    if len(middle) > 1:
        return None
    compressor = None
    if middle:
        compressor = _numcodecs_compressor(middle[0])
        if compressor is None:
            return None
    order = {"little": "<", "big": ">"}.get(str(endian), "=")
    return order, compressor, crc32c


def _numcodecs_compressor(codec):
    """The numcodecs object that encodes as Zarr's ``codec`` does (Zarr builds the same one), or None."""
    import numcodecs
    from zarr.codecs import BloscCodec, ZstdCodec

    if isinstance(codec, BloscCodec):
        if codec.typesize is None:
            return None
        try:
            return numcodecs.Blosc(
                cname=getattr(codec.cname, "value", codec.cname),
                clevel=codec.clevel,
                shuffle=_SHUFFLE[getattr(codec.shuffle, "value", codec.shuffle)],
                blocksize=codec.blocksize,
                typesize=codec.typesize,
            )
        except TypeError:  # numcodecs < 0.16 takes no typesize: Zarr's Blosc then differs, let Zarr write
            return None
    if isinstance(codec, ZstdCodec):
        return numcodecs.Zstd(level=codec.level, checksum=codec.checksum)
    return None


class ChunkFiles:
    """Writes rows of one local Zarr v3 array as whole chunk files, in the calling thread.

    ``write(start, values)`` takes rows ``[start, start + len(values))``
    beginning on a chunk boundary and ending on one or at the array's end
    (what a shard's block is); it returns False, writing nothing, for any
    other region, which the caller then writes through Zarr.
    """

    def __init__(self, *, folder: Path, shape, chunks, byte_order, fill_value, compressor, crc32c: bool, chunk_key):
        self.folder = folder
        self.shape = shape
        self.chunks = chunks
        self.byte_order = byte_order  # "<", ">" or "=" (the bytes codec's endian; "=" for 1-byte types)
        self.fill_value = fill_value
        self.compressor = compressor
        self.crc32c = crc32c
        self.chunk_key = chunk_key
        self._folders: set[str] = set()

    def write(self, start: int, values: np.ndarray) -> bool:
        """Write rows ``[start, start + len(values))``; False (nothing written) when they are off the chunk grid."""
        parts = self.parts(start, values)
        if parts is None:
            return False
        for coords, part in parts:
            self.write_chunk(coords, part)
        return True

    def parts(self, start: int, values: np.ndarray) -> list[tuple[tuple[int, ...], np.ndarray]] | None:
        """The chunks of rows ``[start, start + len(values))``: (chunk coordinates, values), or None off the grid.

        Each can be written by :meth:`write_chunk` in any order and any thread.
        """
        stop = start + values.shape[0]
        rows = self.chunks[0]
        if values.shape[1:] != self.shape[1:] or start % rows or (stop % rows and stop != self.shape[0]):
            return None
        if stop > self.shape[0] or start < 0:
            return None
        dtype = values.dtype.newbyteorder(self.byte_order) if self.byte_order != "=" else values.dtype
        values = np.ascontiguousarray(values, dtype=dtype)
        grids = [range(start // rows, math.ceil(stop / rows))]
        grids += [range(math.ceil(n / c)) for n, c in zip(self.shape[1:], self.chunks[1:])]
        parts = []
        for coords in itertools.product(*grids):
            region = tuple(
                slice(i * c - (start if axis == 0 else 0), min((i + 1) * c, n) - (start if axis == 0 else 0))
                for axis, (i, c, n) in enumerate(zip(coords, self.chunks, self.shape))
            )
            parts.append((coords, values[region]))
        return parts

    def write_chunk(self, coords: tuple[int, ...], part: np.ndarray) -> None:
        """Encode and write one chunk (``part``: its values, smaller than a chunk only at the array's edges)."""
        if part.shape != tuple(self.chunks):  # an edge chunk: Zarr stores it whole, padded with the fill value
            whole = np.full(self.chunks, self.fill_value, dtype=part.dtype)
            whole[tuple(slice(0, n) for n in part.shape)] = part
            part = whole
        data = np.ascontiguousarray(part).reshape(-1).view(np.uint8)
        if self.compressor is not None:
            data = np.frombuffer(self.compressor.encode(data), dtype=np.uint8)
        tail = b""
        if self.crc32c:
            import google_crc32c

            tail = np.array([google_crc32c.value(data)], dtype="<u4").tobytes()
        key = self.chunk_key(coords)
        path = self.folder / key
        parent = os.path.dirname(key)
        if parent not in self._folders:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._folders.add(parent)
        partial = path.with_name(f"{path.name}.{uuid.uuid4().hex}.partial")
        try:
            with open(partial, "wb") as handle:
                handle.write(data.data)
                handle.write(tail)
            os.replace(partial, path)  # readers see the old chunk or the new one, never half of one
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
