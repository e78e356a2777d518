"""What one attempt of a shard may use: ``execution.memory_limit`` and smaller sizes after a memory failure.

A task's memory limit (``execution.memory_limit``, bytes) is asked of Ray as
the task's ``memory`` resource (Ray places the task on a node with that much
unclaimed memory) and split inside the task: a block's output is at most a
quarter of it (``BLOCK_SHARE``: the block being written and the next being
computed are both held), the derivative engine's cap for one chunk is half
(``ENGINE_SHARE``). When an attempt dies of memory anyway (an allocation
error, or Ray's memory monitor killing the worker) the next attempt runs with
every size halved once more per memory failure (``Budget.shrink``): blocks
(down to one store object), the engine's or solver's chunks and the engine's
cap. Results do not depend on these sizes, only the memory does.

Example:
    >>> parse_size("4GiB"), parse_size("500MB"), parse_size(1 << 30)
    (4294967296, 500000000, 1073741824)
    >>> Budget(shrink=2).chunk_cap(100)
    25
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MIN_LIMIT = 64 << 20  # below this no worker (Python + torch) can run a task
BLOCK_SHARE = 4  # a block's output is at most limit / BLOCK_SHARE
ENGINE_SHARE = 2  # the engine's per-chunk cap is limit / ENGINE_SHARE

# messages of allocation failures that are not torch.OutOfMemoryError (the CPU allocator's)
OOM_MESSAGES = (
    "out of memory",
    "can't allocate memory",
    "cannot allocate memory",
    "could not allocate",
    "not enough memory",
    "failed to allocate",
)

_UNITS = {
    "": 1, "b": 1,
    "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40,
    "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40,
}  # fmt: skip
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def parse_size(value: int | float | str) -> int:
    """Bytes from ``4294967296``, ``"4GiB"``, ``"4G"`` (binary), ``"500MB"`` (decimal); ValueError otherwise."""
    if isinstance(value, bool):
        raise ValueError(f"expected a size such as 4GiB or 500MB, got {value!r}")
    if isinstance(value, int | float):
        return int(value)
    match = _SIZE.match(value)
    if not match or match.group(2).lower() not in _UNITS:
        raise ValueError(f"expected a size such as 4GiB, 512MiB or 500MB (or a number of bytes), got {value!r}")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def format_size(n: float) -> str:
    """``4.0 GiB``: a byte count for messages."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


@dataclass(frozen=True)
class Budget:
    """The sizes one attempt of a shard runs with.

    Attributes:
        memory_bytes: the engine's cap for one chunk (``None``: no cap).
        shrink: memory failures of this shard so far; chunks are halved this many times.
    """

    memory_bytes: int | None = None
    shrink: int = 0

    def chunk_cap(self, size: int) -> int | None:
        """At most this many samples (or cases) per chunk for a chunk or block of ``size``; None = no cap."""
        return None if self.shrink == 0 else max(1, size >> self.shrink)


def attempt_budget(memory_limit: int | None, shrink: int) -> Budget:
    """The budget of an attempt after ``shrink`` memory failures, under the task's ``memory_limit``."""
    engine = None if memory_limit is None else max(1, (memory_limit // ENGINE_SHARE) >> shrink)
    return Budget(memory_bytes=engine, shrink=shrink)


def block_sizing(blocks: int, max_bytes: int, memory_limit: int | None, shrink: int) -> tuple[int, int]:
    """(blocks per shard, a block's output cap) for ``plan.shard_blocks``, from its defaults.

    The cap is at most a quarter of the memory limit; after ``shrink`` memory
    failures there are ``2**shrink`` times as many blocks and the cap is
    halved as often (``shard_blocks`` never goes below one store object).

        >>> block_sizing(4, 256 << 20, 512 << 20, 1)
        (8, 67108864)
    """
    cap = max_bytes if memory_limit is None else min(max_bytes, memory_limit // BLOCK_SHARE)
    return blocks << shrink, max(1, cap >> shrink)


def is_memory_failure(error: BaseException | None) -> bool:
    """Whether ``error`` (or what caused it) is running out of memory: a smaller attempt may succeed.

    An allocation failure (``MemoryError``, ``torch.OutOfMemoryError``, an
    "out of memory" RuntimeError, the engine's cap) or Ray's memory monitor
    killing the worker (``ray.exceptions.OutOfMemoryError``). Follows
    ``__cause__`` / ``__context__`` and Ray's ``cause``.

        >>> is_memory_failure(RuntimeError("wrapped")), is_memory_failure(MemoryError())
        (False, True)
    """
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, MemoryError):
            return True
        name, module = type(error).__name__, type(error).__module__
        if name == "OutOfMemoryError" and module.split(".")[0] in ("torch", "ray"):
            return True
        if isinstance(error, RuntimeError) and any(m in str(error).lower() for m in OOM_MESSAGES):
            return True
        error = getattr(error, "cause", None) or error.__cause__ or error.__context__
    return False
