"""A shard that runs out of memory is retried with smaller blocks and chunks (issue 11, point 3).

The user solver ``tests/memory_fns.py:SOLVER`` fails with a memory error when
it gets more than ``max_cases`` cases at once. A job whose blocks are bigger
than that must still finish: each retry of a failed shard halves its blocks
(down to one store chunk) and then its solver chunks, the manifest records
``memory_retries`` and ``block_size``, no case is lost, and every array is
bit-identical to a clean run of the same job (the solver is elementwise).
Other failures keep their sizes; ``execution.memory_limit`` is checked and
asked of Ray.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline.driver import submit
from pipeline.memory import Budget, attempt_budget, block_sizing, is_memory_failure, parse_size
from pipeline.runner import InlineExecutor, RayExecutor
from pipeline.spec import SpecError, validate_spec
from pipeline.store import open_results, read_manifest

TESTS = str(Path(__file__).parent)


def job(tmp_path, name, n=64, **options):
    return validate_spec({
        "schema_version": 1,
        "name": name,
        "kind": "sweep",
        "solver": {"name": "memory_fns:SOLVER", "options": options, "python_path": [TESTS], "dtype": "float64"},
        "sweep": {"kind": "grid", "axes": {"a": {"low": 0.0, "high": 3.0, "num": n}}},
        "store": {"path": str(tmp_path / f"{name}.zarr"), "chunk_size": 8},
        "execution": {"shard_size": 32, "retries": 3},
    })  # fmt: skip


def arrays(path):
    ds = open_results(path, require_complete=True)
    return {name: ds[name].values for name in ("y", "s", "a")}


def manifest(path):
    return read_manifest(path).to_pydict()


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    spec = job(tmp_path_factory.mktemp("clean"), "clean")
    assert submit(spec, InlineExecutor()).complete
    return arrays(spec.store.path)


@pytest.mark.parametrize(("error", "max_cases", "shrinks"), [("torch", 4, 1), ("python", 2, 2), ("message", 1, 3)])
def test_memory_failures_retry_smaller_inline(tmp_path, clean, error, max_cases, shrinks):
    # shards of 32 cases, chunks of 8: 4 blocks of one chunk, which cannot shrink; each memory retry
    # halves the solver's chunks: 8 -> 4 -> 2 -> 1 cases per call
    spec = job(tmp_path, "hungry", max_cases=max_cases, error=error)
    summary = submit(spec, InlineExecutor())
    assert summary.complete and not summary.failed
    rows = manifest(spec.store.path)
    assert rows["memory_retries"] == [shrinks] * 2
    assert rows["attempts"] == [shrinks + 1] * 2
    assert all(c <= max_cases for c in rows["chunk_size"])
    got = arrays(spec.store.path)
    assert not any(np.isnan(v).any() for v in got.values())  # no case lost
    for name, value in clean.items():
        np.testing.assert_array_equal(got[name], value)


def test_memory_failure_on_ray_retries_smaller(tmp_path, clean, ray_cluster):
    spec = job(tmp_path, "hungry_ray", max_cases=4, error="torch")
    summary = submit(spec, RayExecutor())
    assert summary.complete and not summary.failed
    rows = manifest(spec.store.path)
    assert rows["memory_retries"] == [1, 1] and rows["chunk_size"] == [4, 4] and rows["block_size"] == [8, 8]
    got = arrays(spec.store.path)
    for name, value in clean.items():
        np.testing.assert_array_equal(got[name], value)


def test_blocks_and_chunks_shrink_together(tmp_path, clean):
    # shards of 64 cases: 4 blocks of 16 cases, solved at once; the memory retry makes 8 blocks of 8 cases,
    # solved 4 at a time
    data = job(tmp_path, "blocks", max_cases=4).model_dump()
    data["execution"]["shard_size"] = 64
    spec = validate_spec(data)
    assert submit(spec, InlineExecutor()).complete
    rows = manifest(spec.store.path)
    assert rows["memory_retries"] == [1] and rows["block_size"] == [8] and rows["chunk_size"] == [4]
    for name, value in clean.items():
        np.testing.assert_array_equal(arrays(spec.store.path)[name], value)


def test_other_failures_keep_their_sizes(tmp_path):
    spec = job(tmp_path, "not_memory", max_cases=4, error="value")
    summary = submit(spec, InlineExecutor())
    assert not summary.complete and len(summary.failed) == 2
    rows = manifest(spec.store.path)
    assert rows["memory_retries"] == [0, 0] and rows["status"] == ["failed", "failed"]
    assert all("not a memory problem" in e for e in rows["error"])


def test_blocks_shrink_before_chunks():
    assert block_sizing(4, 256 << 20, None, 0) == (4, 256 << 20)
    assert block_sizing(4, 256 << 20, 1 << 30, 0) == (4, 256 << 20)  # a quarter of 1 GiB
    assert block_sizing(4, 256 << 20, 512 << 20, 2) == (16, 32 << 20)
    assert attempt_budget(None, 0) == Budget(None, 0) and attempt_budget(1 << 30, 1).memory_bytes == 1 << 28
    assert Budget(shrink=0).chunk_cap(100) is None and Budget(shrink=3).chunk_cap(100) == 12
    assert Budget(shrink=20).chunk_cap(100) == 1


def test_memory_failures_are_recognized_through_causes():
    import ray
    import torch

    try:
        try:
            raise torch.OutOfMemoryError("CUDA out of memory")
        except torch.OutOfMemoryError as inner:
            raise RuntimeError("block 3 failed") from inner
    except RuntimeError as outer:
        assert is_memory_failure(outer)
    assert is_memory_failure(ray.exceptions.OutOfMemoryError("the memory monitor killed the worker"))
    assert is_memory_failure(
        RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory")
    )
    assert not is_memory_failure(ValueError("bad input")) and not is_memory_failure(None)


@pytest.mark.parametrize(("value", "expected"), [("4GiB", 4 << 30), ("500MB", 500 * 10**6), ("2G", 2 << 30),
                                                 (1 << 30, 1 << 30), ("1.5 GiB", 3 << 29)])  # fmt: skip
def test_memory_limit_sizes(tmp_path, value, expected):
    data = job(tmp_path, "sizes").model_dump()
    data["execution"]["memory_limit"] = value
    assert validate_spec(data).execution.memory_limit == expected == parse_size(value)


@pytest.mark.parametrize("value", ["10MB", "lots", True, "-4GiB", [1]])
def test_bad_memory_limits_name_the_key(tmp_path, value):
    data = job(tmp_path, "bad").model_dump()
    data["execution"]["memory_limit"] = value
    with pytest.raises(SpecError, match=r"execution\.memory_limit") as err:
        validate_spec(data)
    assert "GiB" in str(err.value)


def test_a_limit_no_node_offers_is_refused_before_any_store(tmp_path, ray_cluster):
    data = job(tmp_path, "too_big").model_dump()
    data["execution"]["memory_limit"] = "64TiB"
    spec = validate_spec(data)
    with pytest.raises(Exception, match=r"execution\.memory_limit is 64\.0 TiB but no node") as err:
        submit(spec, RayExecutor())
    assert "lower execution.memory_limit" in str(err.value)
    assert not Path(spec.store.path).exists() and not list(tmp_path.iterdir())


def test_a_memory_limit_is_asked_of_ray(tmp_path, clean, ray_cluster):
    data = job(tmp_path, "limited").model_dump()
    data["execution"]["memory_limit"] = "256MiB"
    spec = validate_spec(data)
    assert submit(spec, RayExecutor()).complete
    got = arrays(spec.store.path)
    for name, value in clean.items():
        np.testing.assert_array_equal(got[name], value)


def test_derivative_blocks_follow_the_budget(tmp_path):
    """The derivative engine gets the budget's chunk cap and memory cap; the numbers stay the same."""
    import torch

    from pipeline.plan import Shard
    from pipeline.spec import load_spec
    from pipeline.tasks import compute_block

    root = Path(__file__).parents[1]
    spec = load_spec(root / "jobs" / "quickstart.yaml", ["inputs.n=64", f"store.path={tmp_path / 'q.zarr'}"])
    block = Shard(0, 0, 64)
    full, info = compute_block(spec, block, torch.device("cpu"))
    small, small_info = compute_block(spec, block, torch.device("cpu"), None, attempt_budget(256 << 20, 2))
    assert small_info.chunk_size == 16 and info.chunk_size == 64
    for name in full:
        np.testing.assert_allclose(small[name], full[name], rtol=1e-5, atol=1e-6)


def available_bytes() -> tuple[int, int]:
    fields = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
    return int(fields["MemAvailable"].split()[0]) * 1024, int(fields["MemTotal"].split()[0]) * 1024


def test_a_shard_killed_by_rays_memory_monitor_succeeds_on_its_smaller_retry(tmp_path):
    """A real kill: a local Ray whose memory monitor kills above (what is used now + 4 GiB).

    The solver really holds 600 MB per case for 0.5 s: the first attempt's calls of 8 cases (4.8 GB
    with Ray's own processes on top) cross the line and Ray's monitor kills the worker (Ray's
    OutOfMemoryError); the retry's calls of 4 cases (2.4 GB) stay under it (or the next, of 2). The
    store is complete and bit-identical to a clean run; the manifest records the memory retries.
    """
    import json
    import os
    import subprocess
    import sys

    available, total = available_bytes()
    if available < 10 << 30:
        pytest.skip(f"needs 10 GiB of available memory, {available >> 20} MiB here")
    line = (total - available) + (4 << 30)  # Ray itself (~1-1.5 GB) plus between a retry's 2.4 and a first 4.8 GB
    spec = job(tmp_path, "killed", n=16, error="allocate", bytes_per_case=600_000_000, hold_s=0.5)
    path = tmp_path / "killed.json"
    path.write_text(json.dumps(spec.model_dump(mode="json")))
    env = {**os.environ, "RAY_memory_usage_threshold": f"{line / total:.4f}", "RAY_memory_monitor_refresh_ms": "100"}
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", "submit", str(path), "--local"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert "shard 0: attempt 1/4 failed, retrying: OutOfMemoryError: " in result.stderr, result.stderr[-4000:]
    rows = manifest(spec.store.path)
    assert rows["status"] == ["done"] and rows["memory_retries"][0] >= 1, rows
    assert rows["chunk_size"][0] <= 4, rows
    reference = job(tmp_path, "reference", n=16)  # the same cases, nothing held, inline
    assert submit(reference, InlineExecutor()).complete
    for name, value in arrays(reference.store.path).items():
        np.testing.assert_array_equal(arrays(spec.store.path)[name], value)


def test_sensitivity_shards_retry_with_smaller_solver_chunks(tmp_path):
    """A sweep with sensitivities halves the solver's chunks too, not only its blocks (README: fault table)."""
    data = job(tmp_path, "hungry_sens", max_cases=4, error="torch").model_dump()
    data["sensitivities"] = {"outputs": {"S": {"output": "s"}}, "wrt": ["a"]}
    spec = validate_spec(data)
    summary = submit(spec, InlineExecutor())
    assert summary.complete and not summary.failed
    assert all(c <= 4 for c in manifest(spec.store.path)["chunk_size"])
    ds = open_results(spec.store.path, require_complete=True)
    a = ds["a"].values
    np.testing.assert_allclose(ds["S"].values, a * a + 1, rtol=1e-15)  # s = a^2 + 1
    np.testing.assert_allclose(ds["dS_da"].values, 2 * a, rtol=1e-15, atol=1e-15)  # its derivative, analytic
