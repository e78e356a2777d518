"""The plan: shards of samples aligned to store chunks, and the store layout.

Pure data and pure functions (stdlib only): the driver builds a ``Plan`` once,
the store creates its arrays from ``Plan.arrays``, every executor runs the same
``run_shard`` over ``Plan.shards``.

Example:
    >>> [(s.start, s.stop) for s in plan_shards(10, shard_size=4, chunk_size=2)]
    [(0, 4), (4, 8), (8, 10)]
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from math import prod

from .quantities import input_dims, quantity_dims, quantity_shape


@dataclass(frozen=True)
class Shard:
    """One unit of work: samples ``[start, stop)``."""

    id: int
    start: int
    stop: int

    @property
    def size(self) -> int:
        return self.stop - self.start


class Shards(Sequence):
    """The shards of ``n`` samples in shards of ``shard_size``, computed from their index (never all held).

    A job of 1e12 samples has 2.4e8 shards; this sequence is three integers.

        >>> shards = Shards(10, 4)
        >>> len(shards), shards[-1], list(shards) == [Shard(0, 0, 4), Shard(1, 4, 8), Shard(2, 8, 10)]
        (3, Shard(id=2, start=8, stop=10), True)
    """

    __slots__ = ("n", "shard_size")

    def __init__(self, n: int, shard_size: int) -> None:
        self.n = n
        self.shard_size = shard_size

    def __len__(self) -> int:
        return -(-self.n // self.shard_size)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return tuple(self[i] for i in range(*index.indices(len(self))))
        count = len(self)
        if index < 0:
            index += count
        if not 0 <= index < count:
            raise IndexError(f"shard {index} of {count}")
        start = index * self.shard_size
        return Shard(index, start, min(start + self.shard_size, self.n))

    def __iter__(self) -> Iterator[Shard]:
        for index in range(len(self)):
            yield self[index]

    def __eq__(self, other) -> bool:
        if isinstance(other, Shards):
            return (self.n, self.shard_size) == (other.n, other.shard_size) or (len(self) == len(other) == 0)
        if isinstance(other, Sequence):
            return len(other) == len(self) and all(a == b for a, b in zip(self, other))
        return NotImplemented

    def __hash__(self) -> int:
        return hash((self.n, self.shard_size))

    def __repr__(self) -> str:
        return f"Shards(n={self.n}, shard_size={self.shard_size}: {len(self)} shards)"


class ShardFlags:
    """A set of shard ids ``0 .. count-1`` held as one byte per shard (2.5e6 shards: 2.5 MB, not 150 MB of ints).

    What the driver knows per shard of a huge plan (committed, seen): ``add``,
    ``in``, ``len`` (how many are set) and iteration over the set ids. Ids
    outside the plan are ignored.

        >>> flags = ShardFlags(5, [0, 3, 3, 9])
        >>> len(flags), 3 in flags, 1 in flags, list(flags)
        (2, True, False, [0, 3])
    """

    __slots__ = ("_bits", "_count")

    def __init__(self, count: int, ids=()) -> None:
        self._bits = bytearray(count)
        self._count = 0
        for shard_id in ids:
            self.add(shard_id)

    def add(self, shard_id: int) -> bool:
        """Set ``shard_id``; True when it was not set before."""
        if 0 <= shard_id < len(self._bits) and not self._bits[shard_id]:
            self._bits[shard_id] = 1
            self._count += 1
            return True
        return False

    def __contains__(self, shard_id: object) -> bool:
        return isinstance(shard_id, int) and 0 <= shard_id < len(self._bits) and bool(self._bits[shard_id])

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[int]:
        start = 0
        while (index := self._bits.find(1, start)) >= 0:
            yield index
            start = index + 1


@dataclass(frozen=True)
class ArrayLayout:
    """One array of the store: name, full shape, dims, chunks, dtype."""

    name: str
    shape: tuple[int, ...]
    dims: tuple[str, ...]
    chunks: tuple[int, ...]
    dtype: str


@dataclass(frozen=True)
class Plan:
    """Everything the driver needs to create the store and run the shards."""

    n: int
    chunk_size: int
    shard_size: int
    shards: Sequence[Shard]  # a lazy ``Shards`` when planned; a tuple when read from an irregular plan
    arrays: tuple[ArrayLayout, ...]

    def result_bytes(self) -> int:
        """Uncompressed bytes of every array of the store.

        >>> plan = plan_derivative_job(10, (2,), (3,), ("value",), 4, 8, "float32")
        >>> plan.result_bytes()   # inputs 10 x 2 and value 10 x 3, 4 bytes each
        200
        """
        return sum(prod(a.shape) * _itemsize(a.dtype) for a in self.arrays)

    def bytes_per_sample(self) -> int:
        """Bytes of one sample (or case) across the arrays with a sample axis (at least 1): sizes a worker's blocks.

        >>> plan_derivative_job(10, (2,), (3,), ("value", "jacobian"), 4, 8, "float32").bytes_per_sample()
        44
        """
        return max(
            1, sum(prod(a.shape[1:]) * _itemsize(a.dtype) for a in self.arrays if a.shape and a.shape[0] == self.n)
        )

    def array(self, name: str) -> ArrayLayout:
        for layout in self.arrays:
            if layout.name == name:
                return layout
        raise KeyError(name)


def _itemsize(dtype: str) -> int:
    """Bytes of one value: "float32" -> 4, "bfloat16" -> 2, "bool" -> 1 (stdlib only: no numpy here)."""
    bits = "".join(c for c in dtype if c.isdigit())
    return int(bits) // 8 if bits else 1


def plan_shards(n: int, shard_size: int, chunk_size: int) -> Shards:
    """Split ``n`` samples into shards of ``shard_size``, each a whole number of chunks.

    Only the last shard may be shorter, and it still covers whole chunks of the
    array (the array's last chunk is short too), so no two shards ever write the
    same chunk.
    """
    if n <= 0:
        raise ValueError(f"the number of samples must be positive, got {n}")
    if chunk_size <= 0 or shard_size <= 0:
        raise ValueError(f"shard_size and chunk_size must be positive, got {shard_size}, {chunk_size}")
    if shard_size % chunk_size:
        raise ValueError(f"shard_size ({shard_size}) must be a multiple of chunk_size ({chunk_size})")
    return Shards(n, shard_size)


BLOCKS_PER_SHARD = 4
MAX_BLOCK_BYTES = 256 * 2**20


def shard_blocks(
    shard: Shard,
    chunk_size: int,
    bytes_per_sample: int,
    *,
    blocks: int = BLOCKS_PER_SHARD,
    max_block_bytes: int = MAX_BLOCK_BYTES,
) -> tuple[Shard, ...]:
    """Split a shard into blocks of whole chunks, computed one by one while the last one is written.

    About ``blocks`` blocks per shard (so that writing overlaps all but one
    block's compute), each at most ``max_block_bytes`` of output (bounding the
    host memory held by a worker), and never less than one chunk. Blocks keep
    the shard's id; they tile it exactly.

        >>> [(b.start, b.stop) for b in shard_blocks(Shard(0, 0, 10), 2, 8)]
        [(0, 4), (4, 8), (8, 10)]
        >>> [(b.start, b.stop) for b in shard_blocks(Shard(3, 96, 100), 4, 8)]
        [(96, 100)]
    """
    if chunk_size <= 0 or bytes_per_sample <= 0 or blocks <= 0:
        raise ValueError(
            f"chunk_size, bytes_per_sample and blocks must be positive, got {chunk_size}, {bytes_per_sample}, {blocks}"
        )
    chunks = -(-shard.size // chunk_size)
    per_block = -(-chunks // blocks)
    per_block = max(1, min(per_block, max_block_bytes // (chunk_size * bytes_per_sample)))
    size = per_block * chunk_size
    return tuple(
        Shard(id=shard.id, start=start, stop=min(start + size, shard.stop))
        for start in range(shard.start, shard.stop, size)
    )


def derivative_arrays(
    n: int,
    in_shape: tuple[int, ...],
    out_shape: tuple[int, ...],
    quantities: tuple[str, ...],
    chunk_size: int,
    dtype: str,
    input_dtype: str | None = None,
) -> tuple[ArrayLayout, ...]:
    """Layouts of ``inputs`` and of every quantity, sample axis first, chunked on samples only."""
    chunk = min(chunk_size, n)
    layouts = [
        ArrayLayout(
            name="inputs",
            shape=(n, *in_shape),
            dims=("sample", *input_dims(len(in_shape))),
            chunks=(chunk, *in_shape),
            dtype=input_dtype or dtype,
        )
    ]
    for name in quantities:
        shape = quantity_shape(name, in_shape, out_shape)
        layouts.append(
            ArrayLayout(
                name=name,
                shape=(n, *shape),
                dims=("sample", *quantity_dims(name, len(in_shape), len(out_shape))),
                chunks=(chunk, *shape),
                dtype=dtype,
            )
        )
    return tuple(layouts)


def plan_derivative_job(
    n: int,
    in_shape: tuple[int, ...],
    out_shape: tuple[int, ...],
    quantities: tuple[str, ...],
    chunk_size: int,
    shard_size: int,
    dtype: str,
) -> Plan:
    """The plan of a derivative job from its resolved sizes.

    Example:
        >>> p = plan_derivative_job(10, (2,), (3,), ("value", "hessian"), 4, 8, "float32")
        >>> [a.shape for a in p.arrays], len(p.shards)
        ([(10, 2), (10, 3), (10, 3, 2, 2)], 2)
    """
    return Plan(
        n=n,
        chunk_size=chunk_size,
        shard_size=shard_size,
        shards=plan_shards(n, shard_size, chunk_size),
        arrays=derivative_arrays(n, in_shape, out_shape, quantities, chunk_size, dtype),
    )


PARAMETER_CHUNK_CASES = 1 << 17  # a sweep's case parameters: 1 MiB of float64 per chunk


def sweep_arrays(
    n_cases: int,
    outputs: dict[str, tuple[tuple[str, ...], tuple[int, ...]]],
    coords: dict[str, int],
    case_parameters: tuple[str, ...],
    scalars: tuple[str, ...],
    chunk_size: int,
    dtype: str,
) -> tuple[ArrayLayout, ...]:
    """Layouts of a sweep: outputs ``[case, ...]``, case parameters and scalars ``[case]``, coordinates ``[dim]``.

    Outputs and scalars, which shards write, are chunked by ``chunk_size``
    cases. The case parameters are written once, with the store, so they
    need no shard's alignment: their chunks hold ``PARAMETER_CHUNK_CASES``
    cases (a whole number of ``chunk_size``), not one small file per
    ``chunk_size`` cases (a file costs 0.3-0.8 ms to create on the CI VM).

        >>> [a.chunks for a in sweep_arrays(300000, {}, {}, ("a",), ("s",), 64, "float32")]
        [(131072,), (64,)]
    """
    chunk = min(chunk_size, n_cases)
    parameter_chunk = min(n_cases, max(chunk, PARAMETER_CHUNK_CASES // chunk * chunk))
    layouts = []
    for name, (dims, shape) in outputs.items():
        layouts.append(ArrayLayout(name, (n_cases, *shape), ("case", *dims), (chunk, *shape), dtype))
    for name in case_parameters:
        layouts.append(ArrayLayout(name, (n_cases,), ("case",), (parameter_chunk,), "float64"))
    for name in scalars:
        layouts.append(ArrayLayout(name, (n_cases,), ("case",), (chunk,), dtype))
    for dim, size in coords.items():
        layouts.append(ArrayLayout(dim, (size,), (dim,), (size,), "float64"))
    names = [layout.name for layout in layouts]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"names used twice in the store: {duplicates}; rename the parameter or sensitivity output")
    return tuple(layouts)


def plan_sweep_job(
    n_cases: int,
    outputs: dict[str, tuple[tuple[str, ...], tuple[int, ...]]],
    coords: dict[str, int],
    case_parameters: tuple[str, ...],
    scalars: tuple[str, ...],
    chunk_size: int,
    shard_size: int,
    dtype: str,
) -> Plan:
    """The plan of a sweep: shards are ranges of cases.

    Example:
        >>> p = plan_sweep_job(10, {"T": (("time", "x"), (5, 8))}, {"time": 5, "x": 8}, ("a",), (), 4, 4, "float32")
        >>> p.array("T").shape, p.array("T").dims, len(p.shards)
        ((10, 5, 8), ('case', 'time', 'x'), 3)
    """
    return Plan(
        n=n_cases,
        chunk_size=chunk_size,
        shard_size=shard_size,
        shards=plan_shards(n_cases, shard_size, chunk_size),
        arrays=sweep_arrays(n_cases, outputs, coords, case_parameters, scalars, chunk_size, dtype),
    )


SAMPLE_AXES = ("sample", "case")  # the axis shards split: always chunk_size long


def with_axis_chunks(plan: Plan, chunks: dict[str, int]) -> Plan:
    """The plan with chunks of length ``chunks[dim]`` along the named non-sample axes (``store.chunks``).

    The sample (or case) axis keeps ``chunk_size``, so shards still write
    whole chunks; an axis shorter than its chunk length is one chunk.

        >>> p = plan_derivative_job(10, (2,), (40,), ("value", "jacobian"), 4, 8, "float32")
        >>> [a.chunks for a in with_axis_chunks(p, {"output": 16}).arrays]
        [(4, 2), (4, 16), (4, 16, 2)]
        >>> with_axis_chunks(p, {"outputs": 16})
        Traceback (most recent call last):
        ...
        ValueError: store.chunks.outputs: no array of this job has an axis 'outputs'; its axes are input, output
    """
    from dataclasses import replace

    if not chunks:
        return plan
    axes = sorted({dim for layout in plan.arrays for dim in layout.dims if dim not in SAMPLE_AXES})
    for dim in chunks:
        if dim not in axes:
            raise ValueError(
                f"store.chunks.{dim}: no array of this job has an axis {dim!r}; its axes are {', '.join(axes)}"
            )
    layouts = []
    for layout in plan.arrays:
        new = list(layout.chunks)
        for axis, dim in enumerate(layout.dims):
            if dim in chunks and dim not in SAMPLE_AXES:
                new[axis] = max(1, min(chunks[layout.dims[axis]], layout.shape[axis]))
        layouts.append(replace(layout, chunks=tuple(new)))
    return replace(plan, arrays=tuple(layouts))
