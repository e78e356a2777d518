"""Writing a shard's blocks in the background while the next block computes.

A worker computes a shard block by block (``plan.shard_blocks``); each block
goes to a ``BlockWriter``, whose one thread checksums it, counts its
non-finite values and writes its region of the store, in order, while the
worker's main thread computes the next block. At most ``depth`` blocks wait,
which bounds the host memory a worker holds. On a GPU the compute of block
``i + 1`` (a few milliseconds) then hides behind the write of block ``i``
instead of adding to it; on a CPU the two share the cores.

The commit marker is not written here: ``tasks.run_shard`` writes it after
``close()`` has returned, i.e. after every block is in the store.
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np

from .encoding import encode_arrays, encodings, overflow_count
from .store import Checksum, open_for_writing, write_region


class BlockWriter:
    """Writes blocks of one shard, in order, in one background thread.

    Use as a context manager: leaving the block by an exception waits for the
    write in progress and drops the queued ones (the shard is then not
    committed, and a retry rewrites its region). With ``threads`` > 1 each
    block's chunks are encoded and written by that many threads (a task that
    asked Ray for that many CPUs: ``execution.cpus_per_task``).

        with BlockWriter(path) as writer:
            for block in blocks:
                writer.submit(block.start, block.stop, compute(block))
        writer.checksum, writer.nonfinite    # after the block: every write done
    """

    def __init__(
        self,
        path: str | Path,
        *,
        depth: int = 2,
        group=None,
        on_written=None,
        stored_as=None,
        threads: int = 1,
        direct: bool = True,
    ) -> None:
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        self.path = path
        self.group = open_for_writing(path) if group is None else group
        # packed / selected / 16-bit arrays (``pipeline.encoding``); ``stored_as`` is what the caller already read
        self.encodings = encodings(self.group) if stored_as is None else stored_as
        self.depth = depth
        self.direct = direct  # large local chunks written past the page cache (the store's ``direct_writes``)
        self.on_written = on_written  # called with (start, stop) in the writer thread after each block's write
        self.nonfinite = 0
        self.nonfinite_by_array: dict[str, int] = {}
        self.overflow_by_array: dict[str, int] = {}  # finite values a float16/bfloat16 stored dtype made Inf
        self.bytes_written = 0
        self._checksum = Checksum()
        self._targets: dict = {}  # the shard's arrays, opened once (``store.write_region``)
        self._pending: deque[Future] = deque()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="block-writer")
        # ``threads`` > 1: a block's chunks encoded and written by that many threads (``store.write_region``'s pool),
        # the blocks still one after another in the one thread above (the checksum is in sample order)
        self._chunk_pool = ThreadPoolExecutor(threads, thread_name_prefix="chunk-writer") if threads > 1 else None
        self._closed = False

    def submit(self, start: int, stop: int, arrays: dict[str, np.ndarray]) -> None:
        """Queue samples ``[start, stop)`` of each array; blocks while ``depth`` writes are waiting.

        Raises the error of an earlier write, if one failed.
        """
        if self._closed:
            raise RuntimeError("BlockWriter is closed")
        while len(self._pending) >= self.depth:
            self._pending.popleft().result()
        self._pending.append(self._pool.submit(self._write, start, stop, arrays))

    def _write(self, start: int, stop: int, arrays: dict[str, np.ndarray]) -> None:
        # one thread, so blocks are checksummed in submission (sample) order; a block's device-to-host
        # copy (``transfer.HostArrays``) is waited for here, while the main thread computes the next block
        arrays = dict(arrays.wait()) if hasattr(arrays, "wait") else arrays
        for name, values in arrays.items():
            if values.dtype.kind == "f":
                count = int(np.count_nonzero(~np.isfinite(values)))
                if count:
                    self.nonfinite += count
                    self.nonfinite_by_array[name] = self.nonfinite_by_array.get(name, 0) + count
        computed, arrays = arrays, encode_arrays(arrays, self.encodings)  # in this thread: overlaps the compute
        for name, enc in self.encodings.items():
            if name in computed:
                over = overflow_count(computed[name], arrays[name], enc)
                if over:
                    self.overflow_by_array[name] = self.overflow_by_array.get(name, 0) + over
        self._checksum.update(arrays)
        write_region(
            self.path,
            arrays,
            start,
            stop,
            group=self.group,
            targets=self._targets,
            pool=self._chunk_pool,
            direct=self.direct,
        )
        self.bytes_written += sum(a.nbytes for a in arrays.values())
        if self.on_written is not None:
            self.on_written(start, stop)

    def close(self) -> None:
        """Wait for every queued write; raises the first write error."""
        if self._closed:
            return
        try:
            while self._pending:
                self._pending.popleft().result()
        finally:
            self._closed = True
            self._shutdown()

    def _shutdown(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        if self._chunk_pool is not None:
            self._chunk_pool.shutdown(wait=True, cancel_futures=True)

    @property
    def checksum(self) -> str:
        if not self._closed:
            raise RuntimeError("the checksum is known only after close()")
        return self._checksum.hexdigest()

    @property
    def array_checksums(self) -> dict[str, str]:
        """CRC32 of each array's bytes (after ``close()``), recorded in the commit marker."""
        if not self._closed:
            raise RuntimeError("the checksums are known only after close()")
        return self._checksum.per_array()

    def __enter__(self) -> BlockWriter:
        return self

    def __exit__(self, kind, error, traceback) -> None:
        if kind is None:
            self.close()
            return
        # failing: drop what is queued, let the running write finish (no thread left writing behind a retry)
        self._closed = True
        self._shutdown()
        self._pending.clear()
