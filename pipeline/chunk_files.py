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

Chunks of ``DIRECT_MIN_BYTES`` or more are written with ``O_DIRECT`` (Linux),
past the page cache, unless the store says ``direct_writes: false``. Through
the page cache every written page is a new page of memory the kernel must
allocate, write back and reclaim. Over 12 GB of uncompressed chunks on the
CI VM that cost 3.6-3.8 s of the machine's CPU per GB (261-272 MB/s from one
thread), against 0.6-0.8 s per GB (609-711 MB/s) written directly; a long
job ran 1.18x faster (BENCHMARKS.md, "Store writes" and "End to end",
session 14). A short burst into pages just freed is faster through the page
cache, which is why ``store.direct_writes: false`` exists.
The bytes go through a page-aligned buffer, reused between chunks; the last
partial 4 KiB of a file is written after clearing ``O_DIRECT``. A file system
that refuses ``O_DIRECT`` (``EINVAL``) gets ordinary writes from then on.
"""

from __future__ import annotations

import errno
import fcntl
import itertools
import math
import mmap
import os
import threading
import uuid
from pathlib import Path
from typing import Any

import numpy as np

_SHUFFLE = {"noshuffle": 0, "shuffle": 1, "bitshuffle": 2}

DIRECT_MIN_BYTES = 1 << 20  # smaller files cost more CPU per byte written directly than through the page cache
_ALIGN = 4096  # O_DIRECT's alignment of offsets, lengths and memory: 4 KiB covers 512-byte and 4 KiB sectors
_O_DIRECT = getattr(os, "O_DIRECT", 0)  # 0: not Linux (macOS has no O_DIRECT), every write through the page cache


def chunk_writer(array, direct: bool = True) -> ChunkFiles | None:
    """A :class:`ChunkFiles` for a ``zarr.Array`` whose chunks this module can write, else ``None``.

    ``direct``: chunk files of ``DIRECT_MIN_BYTES`` or more written past the
    page cache (``O_DIRECT``) where the file system allows it.

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
        from zarr.storage import LocalStore
    except ImportError:  # a zarr without this name: it writes everything itself
        return None
    regular = _regular_chunk_grid()
    metadata = array.metadata
    if getattr(metadata, "zarr_format", None) != 3 or not isinstance(array.store, LocalStore) or regular is None:
        return None
    if not isinstance(metadata.chunk_grid, regular) or not hasattr(metadata, "encode_chunk_key"):
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
        direct_min_bytes=DIRECT_MIN_BYTES if direct and _O_DIRECT else None,
    )


def _regular_chunk_grid() -> type[Any] | None:
    """Zarr's class of a regular chunk grid, or None (a zarr without one: it writes everything itself).

    ``RegularChunkGrid`` in zarr 3.1 (the newest on Python 3.11), ``RegularChunkGridMetadata`` in zarr 3.4
    (Python 3.12+), whose ``RegularChunkGrid`` is gone: without it, every chunk went through Zarr.
    """
    from zarr.core import chunk_grids
    from zarr.core.metadata import v3

    return getattr(v3, "RegularChunkGridMetadata", None) or getattr(chunk_grids, "RegularChunkGrid", None)


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

    def __init__(
        self,
        *,
        folder: Path,
        shape,
        chunks,
        byte_order,
        fill_value,
        compressor,
        crc32c: bool,
        chunk_key,
        direct_min_bytes: int | None = None,
    ):
        self.folder = folder
        self.shape = shape
        self.chunks = chunks
        self.byte_order = byte_order  # "<", ">" or "=" (the bytes codec's endian; "=" for 1-byte types)
        self.fill_value = fill_value
        self.compressor = compressor
        self.crc32c = crc32c
        self.chunk_key = chunk_key
        self.direct_min_bytes = direct_min_bytes  # None: every file through the page cache
        self.direct_bytes = 0  # bytes written past the page cache (a count, for tests and benchmarks)
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
        self.store_chunk(*self.encode_chunk(coords, part))

    def encode_chunk(self, coords: tuple[int, ...], part: np.ndarray) -> tuple[tuple[int, ...], np.ndarray, bytes]:
        """(coordinates, encoded bytes, crc32c bytes or b"") of one chunk, for :meth:`store_chunk`."""
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
        return coords, data, tail

    def store_chunk(self, coords: tuple[int, ...], data: np.ndarray, tail: bytes) -> None:
        """Write an encoded chunk's file (``data`` then ``tail``): a temporary name, then renamed."""
        key = self.chunk_key(coords)
        path = self.folder / key
        parent = os.path.dirname(key)
        if parent not in self._folders:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._folders.add(parent)
        partial = path.with_name(f"{path.name}.{uuid.uuid4().hex}.partial")
        size = data.nbytes + len(tail)
        try:
            minimum = self.direct_min_bytes
            if minimum is None or size < minimum or not self._write_direct(partial, data, tail):
                with open(partial, "wb") as handle:
                    handle.write(data.data)
                    handle.write(tail)
            os.replace(partial, path)  # readers see the old chunk or the new one, never half of one
        except BaseException:
            partial.unlink(missing_ok=True)
            raise

    def _write_direct(self, path: Path, data: np.ndarray, tail: bytes) -> bool:
        """Write ``data`` then ``tail`` to a new file with ``O_DIRECT``; False (nothing made) if the file system refuses.

        The whole 4 KiB blocks go directly from an aligned buffer; the rest
        (under 4 KiB) is written after ``O_DIRECT`` is cleared, so the file
        has exactly the chunk's size.
        """
        size = data.nbytes + len(tail)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | _O_DIRECT, 0o666)
        except OSError as error:
            if error.errno != errno.EINVAL:
                raise
            self.direct_min_bytes = None  # this file system has no O_DIRECT (e.g. an older tmpfs): never again
            return False
        buffer = _BUFFERS.take(size)
        try:
            buffer[: data.nbytes] = data.data
            buffer[data.nbytes : size] = tail
            whole = size // _ALIGN * _ALIGN
            with memoryview(buffer) as view:
                done = _write_all(fd, view, 0, whole, direct=True)
                if done < whole:  # refused mid-file (EINVAL: a stricter alignment): the rest through the page cache
                    self.direct_min_bytes = None
                self.direct_bytes += done
                if done < size:
                    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~_O_DIRECT)
                    _write_all(fd, view, done, size, direct=False)
        except BaseException:
            os.close(fd)
            path.unlink(missing_ok=True)
            raise
        finally:
            _BUFFERS.give(buffer)
        os.close(fd)
        return True


def _write_all(fd: int, view: memoryview, start: int, stop: int, *, direct: bool) -> int:
    """Write ``view[start:stop]`` at the file's offset; returns where it stopped (before ``stop`` only if a direct
    write was refused with EINVAL or came back short, which the caller finishes through the page cache)."""
    while start < stop:
        try:
            written = os.write(fd, view[start:stop])
        except OSError as error:
            if direct and error.errno == errno.EINVAL:
                return start
            raise
        start += written
        if direct and written % _ALIGN:
            return start
    return start


def write_chunks(chunks) -> None:
    """Write ``(ChunkFiles, coordinates, values)`` chunks: each encoded in this thread, its file written by another.

    The file of chunk i is written (``O_DIRECT`` waits for the disk) while
    chunk i + 1 is encoded; at most one write waits, so at most two encoded
    chunks are held. Returns when every file is written; raises the first error.
    """
    if len(chunks) < 2:
        for files, coords, part in chunks:
            files.write_chunk(coords, part)
        return
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1, thread_name_prefix="chunk-io") as io:  # leaving it waits for the write in flight
        pending: list = []  # the one write in flight
        for files, coords, part in chunks:
            encoded = files.encode_chunk(coords, part)
            for done in pending:
                done.result()
            pending = [io.submit(files.store_chunk, *encoded)]
        pending[0].result()


class _Buffers:
    """Page-aligned buffers (anonymous ``mmap``), reused between chunk files and threads.

    A new buffer per chunk would cost its pages' faults on every chunk; the
    block writer's threads come and go with each shard, so the buffers are
    kept here rather than per thread: at most ``keep`` of them and
    ``keep_bytes`` in all (a worker holds a few chunks' worth: seed 000's
    2.5, 4.9 and 9.8 MB chunks keep 17 MB).
    """

    def __init__(self, keep: int = 8, keep_bytes: int = 256 << 20):
        self.keep, self.keep_bytes = keep, keep_bytes
        self._free: list[mmap.mmap] = []
        self._lock = threading.Lock()

    def take(self, size: int) -> mmap.mmap:
        """The smallest free buffer of at least ``size`` bytes, or a new one."""
        with self._lock:
            fits = [i for i, buffer in enumerate(self._free) if len(buffer) >= size]
            if fits:
                return self._free.pop(min(fits, key=lambda i: len(self._free[i])))
        return mmap.mmap(-1, -(-size // _ALIGN) * _ALIGN)

    def give(self, buffer: mmap.mmap) -> None:
        """Keep ``buffer`` for the next chunk, dropping the smallest kept ones to stay within the limits."""
        with self._lock:
            self._free.append(buffer)
            self._free.sort(key=len)
            dropped = []
            while self._free and (len(self._free) > self.keep or sum(map(len, self._free)) > self.keep_bytes):
                dropped.append(self._free.pop(0))
        for old in dropped:
            old.close()


_BUFFERS = _Buffers()
