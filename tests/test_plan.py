"""The plan: shards cover every sample once, aligned to store chunks (property-tested)."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.plan import derivative_arrays, plan_derivative_job, plan_shards, shard_blocks


@given(
    n=st.integers(1, 5000),
    chunk=st.integers(1, 300),
    chunks_per_shard=st.integers(1, 8),
)
def test_shards_partition_samples_on_chunk_boundaries(n, chunk, chunks_per_shard):
    shards = plan_shards(n, chunk * chunks_per_shard, chunk)
    assert shards[0].start == 0 and shards[-1].stop == n
    for a, b in itertools.pairwise(shards):
        assert a.stop == b.start
    for s in shards:
        assert s.start % chunk == 0
        assert s.stop % chunk == 0 or s.stop == n
        assert 0 < s.size <= chunk * chunks_per_shard
    assert [s.id for s in shards] == list(range(len(shards)))


def test_uneven_last_shard():
    shards = plan_shards(10, 4, 2)
    assert [(s.start, s.stop) for s in shards] == [(0, 4), (4, 8), (8, 10)]


@pytest.mark.parametrize("n, shard, chunk", [(0, 4, 2), (10, 5, 2), (10, 0, 2)])
def test_bad_plans_raise(n, shard, chunk):
    with pytest.raises(ValueError):
        plan_shards(n, shard, chunk)


def test_array_layouts_follow_the_store_contract():
    arrays = derivative_arrays(100, (2, 2), (3,), ("value", "jacobian", "hessian", "laplacian", "d3"), 16, "float32")
    layout = {a.name: a for a in arrays}
    assert layout["inputs"].shape == (100, 2, 2)
    assert layout["inputs"].dims == ("sample", "input_0", "input_1")
    assert layout["jacobian"].shape == (100, 3, 2, 2)
    assert layout["hessian"].dims == ("sample", "output", "input_0", "input_1", "input_0_d2", "input_1_d2")
    assert layout["laplacian"].shape == (100, 3)
    assert layout["d3"].shape == (100, 3) + (2, 2) * 3
    for a in arrays:
        assert a.chunks[0] == 16 and a.chunks[1:] == a.shape[1:]
        assert len(set(a.dims)) == len(a.dims) == len(a.shape)


def test_scalar_output_and_small_n():
    plan = plan_derivative_job(5, (3,), (), ("value", "hessian"), 16, 32, "float64")
    assert plan.array("value").shape == (5,) and plan.array("value").chunks == (5,)
    assert plan.array("hessian").dims == ("sample", "input", "input_d2")
    assert len(plan.shards) == 1


@given(
    n=st.integers(1, 5000),
    chunk=st.integers(1, 300),
    chunks_per_shard=st.integers(1, 40),
    shard_index=st.integers(0, 50),
    bytes_per_sample=st.integers(1, 10_000),
    max_block_bytes=st.integers(1, 10**7),
    blocks=st.integers(1, 8),
)
def test_blocks_tile_a_shard_on_chunk_boundaries(
    n, chunk, chunks_per_shard, shard_index, bytes_per_sample, max_block_bytes, blocks
):
    shards = plan_shards(n, chunk * chunks_per_shard, chunk)
    shard = shards[shard_index % len(shards)]
    parts = shard_blocks(shard, chunk, bytes_per_sample, blocks=blocks, max_block_bytes=max_block_bytes)
    assert parts[0].start == shard.start and parts[-1].stop == shard.stop
    for a, b in itertools.pairwise(parts):
        assert a.stop == b.start
    for part in parts:
        assert part.id == shard.id and part.size > 0
        assert part.start % chunk == 0 and (part.stop % chunk == 0 or part.stop == n)
    # as many blocks as asked for when the byte cap allows, more only to respect the cap (never below a chunk)
    shard_chunks = -(-shard.size // chunk)
    if chunk * bytes_per_sample * -(-shard_chunks // blocks) <= max_block_bytes:
        assert len(parts) <= blocks
    else:
        assert all(p.size * bytes_per_sample <= max_block_bytes or p.size <= chunk for p in parts)


def test_blocks_of_a_default_derivative_shard():
    # seed000: 4.2 KB per sample, 4 chunks of 4096 per shard -> one chunk per block
    (shard,) = plan_shards(16384, 16384, 4096)
    assert [b.size for b in shard_blocks(shard, 4096, 4208)] == [4096] * 4
    # a big GPU shard of 1e6 samples: blocks capped at 256 MiB of output
    (big,) = plan_shards(1_000_000, 1_003_520, 4096)
    sizes = [b.size for b in shard_blocks(big, 4096, 4208)]
    assert max(sizes) * 4208 <= 256 * 2**20 and sum(sizes) == 1_000_000


@given(n=st.integers(1, 3000), size=st.integers(1, 400), index=st.integers(-3000, 3000))
def test_lazy_shards_are_the_explicit_split(n, size, index):
    from pipeline.plan import Shard, Shards

    explicit = [Shard(i, start, min(start + size, n)) for i, start in enumerate(range(0, n, size))]
    lazy = Shards(n, size)
    assert len(lazy) == len(explicit) and list(lazy) == explicit and lazy == explicit
    assert lazy[1:3] == tuple(explicit[1:3]) and lazy[::-2] == tuple(explicit[::-2])
    if -len(explicit) <= index < len(explicit):
        assert lazy[index] == explicit[index]
    else:
        with pytest.raises(IndexError):
            lazy[index]


def test_a_huge_plan_is_three_numbers():
    import sys

    plan = plan_derivative_job(10**12, (2,), (3,), ("value",), 4096, 16384, "float32")
    assert len(plan.shards) == 61035157 and plan.shards[-1].stop == 10**12
    assert sys.getsizeof(plan.shards) < 100
