"""End to end, under every executor: spec -> plan -> shards -> engine -> store -> xarray.

Every number is checked against the seed-000 autograd loop (tests/references.py).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from references import quantities_from_loop

from pipeline.driver import submit
from pipeline.models import build_function
from pipeline.runner import InlineExecutor, RayExecutor
from pipeline.spec import validate_spec
from pipeline.store import open_results, read_attributes, read_manifest, read_markers, summarize

TESTS = str(Path(__file__).resolve().parent)


def make_spec(tmp_path, name="s.zarr", **changes):
    data = {
        "schema_version": 1,
        "name": "t",
        "function": {"kind": "mlp", "in_features": 2, "hidden": [16, 16], "out_features": 3, "activation": "tanh"},
        "inputs": {"kind": "uniform", "n": 37, "shape": [2], "seed": 1},
        "quantities": ["value", "jacobian", "hessian", "laplacian", "d3"],
        "derivatives": {"dtype": "float64"},
        "store": {"path": str(tmp_path / name), "chunk_size": 4},
        "execution": {"shard_size": 8, "retries": 0},
    }
    for key, value in changes.items():
        node = data
        *parents, last = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return validate_spec(data)


def reference(spec, x):
    fn = build_function(spec.function, torch.float64)
    return quantities_from_loop(fn, torch.as_tensor(x, dtype=torch.float64), spec.quantities)


def test_results_match_the_autograd_loop(tmp_path, executor):
    spec = make_spec(tmp_path)
    summary = submit(spec, executor)
    assert summary.complete and not summary.failed and summary.ran == 5
    ds = open_results(spec.store.path, require_complete=True)
    expected = reference(spec, ds.inputs.values)
    for name in spec.quantities:
        np.testing.assert_allclose(ds[name].values, expected[name].numpy(), rtol=1e-9, atol=1e-10, err_msg=name)
    assert ds.d3.dims == ("sample", "output", "input", "input_d2", "input_d3")
    manifest = read_manifest(spec.store.path).to_pydict()
    assert manifest["status"] == ["done"] * 5
    assert [b - a for a, b in zip(manifest["start"], manifest["stop"])] == [8, 8, 8, 8, 5]
    assert all(s > 0 for s in manifest["samples_per_second"]) and manifest["nonfinite"] == [0] * 5


def test_float32_default_is_close_to_float64(tmp_path):
    spec = make_spec(tmp_path, **{"derivatives.dtype": "float32", "quantities": ["value", "jacobian", "hessian"]})
    submit(spec, InlineExecutor())
    ds = open_results(spec.store.path)
    assert ds.hessian.dtype == np.float32
    expected = reference(spec, ds.inputs.values.astype(np.float64))
    for name in spec.quantities:
        scale = np.abs(expected[name].numpy()).max()
        assert np.abs(ds[name].values - expected[name].numpy()).max() / scale < 1e-5, name


@pytest.mark.parametrize("store_chunk, shard, engine_chunk", [(4, 4, 1), (4, 12, 3), (8, 16, "auto"), (40, 40, 5)])
def test_results_do_not_depend_on_sharding(tmp_path, store_chunk, shard, engine_chunk):
    base = make_spec(tmp_path, "base.zarr", **{"store.chunk_size": 37, "execution.shard_size": 37})
    submit(base, InlineExecutor())
    other = make_spec(
        tmp_path,
        "other.zarr",
        **{"store.chunk_size": store_chunk, "execution.shard_size": shard, "derivatives.chunk_size": engine_chunk},
    )
    submit(other, InlineExecutor())
    a, b = open_results(base.store.path), open_results(other.store.path)
    np.testing.assert_array_equal(a.inputs.values, b.inputs.values)
    for name in base.quantities:
        np.testing.assert_allclose(a[name].values, b[name].values, rtol=1e-12, atol=1e-13, err_msg=name)


def test_a_task_of_several_cpus_writes_with_as_many_threads_and_the_same_results(tmp_path, monkeypatch):
    """``execution.cpus_per_task: 3``: each shard's chunks written by 3 threads; ``store.direct_writes``: past the
    page cache (here every chunk file, the threshold set to 0) or not; the stores are bit-identical."""
    import pipeline.chunk_files as chunk_files
    import pipeline.tasks as tasks

    made = []
    real = tasks.BlockWriter
    monkeypatch.setattr(tasks, "BlockWriter", lambda *a, **k: made.append((k["threads"], k["direct"])) or real(*a, **k))
    monkeypatch.setattr(chunk_files, "DIRECT_MIN_BYTES", 0)
    one = make_spec(tmp_path, "one.zarr", **{"execution.shard_size": 16})
    three = make_spec(tmp_path, "three.zarr", **{"execution.shard_size": 16, "execution.cpus_per_task": 3})
    cached = make_spec(tmp_path, "cached.zarr", **{"execution.shard_size": 16, "store.direct_writes": False})
    assert all(submit(spec, InlineExecutor()).complete for spec in (one, three, cached))
    assert made == [(1, True)] * 3 + [(3, True)] * 3 + [(1, False)] * 3  # 37 samples in shards of 16
    a = open_results(one.store.path)
    expected = reference(one, a.inputs.values)
    for other in (three, cached):
        b = open_results(other.store.path)
        for name in ["inputs", *one.quantities]:
            np.testing.assert_array_equal(a[name].values, b[name].values, err_msg=name)
    for name in one.quantities:
        np.testing.assert_allclose(a[name].values, expected[name].numpy(), rtol=1e-9, atol=1e-10, err_msg=name)


def test_user_function_with_matrix_inputs(tmp_path, executor):
    spec = make_spec(
        tmp_path,
        function={"kind": "import", "target": "user_fns:matrix_map", "kwargs": {"scale": 0.5}, "python_path": [TESTS]},
        inputs={"kind": "normal", "n": 9, "shape": [2, 2], "seed": 3},
        quantities=["value", "jacobian", "hessian"],
    )
    submit(spec, executor)
    ds = open_results(spec.store.path)
    assert ds.jacobian.shape == (9, 2, 2, 2, 2)
    assert ds.jacobian.dims == ("sample", "output_0", "output_1", "input_0", "input_1")
    expected = reference(spec, ds.inputs.values)
    for name in spec.quantities:
        np.testing.assert_allclose(ds[name].values, expected[name].numpy(), rtol=1e-9, atol=1e-10, err_msg=name)


def test_seed002_third_derivative_end_to_end(tmp_path):
    np.save(tmp_path / "x.npy", np.arange(4.0).reshape(1, 2, 2))
    spec = make_spec(
        tmp_path,
        function={"kind": "import", "target": "user_fns:quartic_sum", "python_path": [TESTS]},
        inputs={"kind": "npy", "path": str(tmp_path / "x.npy")},
        quantities=["d3"],
    )
    submit(spec, InlineExecutor())
    d3 = open_results(spec.store.path).d3.values[0]  # [2,2, 2,2, 2,2]
    np.testing.assert_allclose(d3.sum(axis=(2, 3, 4, 5)), [[0, 24], [48, 72]])
    diagonal = np.array([[d3[i, j, i, j, i, j] for j in range(2)] for i in range(2)])
    np.testing.assert_allclose(diagonal, [[0, 24], [48, 72]])


def test_checkpoint_is_loaded_with_weights_only(tmp_path):
    import sys

    sys.path.insert(0, TESTS)
    from user_fns import Quadratic

    model = Quadratic()
    with torch.no_grad():
        model.a.copy_(torch.tensor([[1.0, 2.0], [0.0, 3.0]]))
        model.b.copy_(torch.tensor([1.0, -1.0]))
    torch.save(model.state_dict(), tmp_path / "q.pt")
    spec = make_spec(
        tmp_path,
        function={
            "kind": "import",
            "target": "user_fns:Quadratic",
            "checkpoint": str(tmp_path / "q.pt"),
            "python_path": [TESTS],
        },
        quantities=["value", "hessian"],
    )
    submit(spec, InlineExecutor())
    ds = open_results(spec.store.path)
    a = np.array([[1.0, 2.0], [0.0, 3.0]])
    np.testing.assert_allclose(ds.hessian.values, np.broadcast_to(a + a.T, (37, 2, 2)), atol=1e-12)


def test_resume_runs_only_missing_shards(tmp_path):
    spec = make_spec(tmp_path)
    submit(spec, InlineExecutor())
    before = open_results(spec.store.path).hessian.values.copy()
    # Lose shard 2: its marker and its data.
    os.remove(Path(spec.store.path) / "_shards" / "2.json")
    import zarr

    zarr.open_group(spec.store.path, mode="r+", use_consolidated=False)["hessian"][16:24] = np.nan
    assert summarize(spec.store.path)["pending"] == 1
    summary = submit(spec, InlineExecutor())
    assert summary.skipped == 4 and summary.ran == 1 and summary.complete
    np.testing.assert_array_equal(open_results(spec.store.path).hessian.values, before)
    assert read_markers(spec.store.path)[2].attempts == 2


def test_failed_shards_are_recorded_then_retried(tmp_path, ray_cluster):
    spec = make_spec(
        tmp_path,
        function={
            "kind": "import",
            "target": "user_fns:fails_off_driver",
            "kwargs": {"driver_pid": os.getpid()},
            "python_path": [TESTS],
        },
        quantities=["value", "jacobian"],
        **{"inputs.n": 16, "execution.retries": 1},
    )
    summary = submit(spec, RayExecutor())
    assert not summary.complete and len(summary.failed) == 2
    first = summary.failed[0]
    assert "this worker always fails" in first.error and first.attempts == 2
    manifest = read_manifest(spec.store.path).to_pydict()
    assert manifest["status"] == ["failed", "failed"] and manifest["attempts"] == [2, 2]
    assert read_attributes(spec.store.path)["complete"] is False
    # The same job in this process (where the function works) completes the store.
    summary = submit(spec, InlineExecutor())
    assert summary.complete and summary.ran == 2
    assert summarize(spec.store.path)["failed"] == 0


def test_different_spec_does_not_reuse_a_store(tmp_path):
    from pipeline.store import StoreError

    submit(make_spec(tmp_path), InlineExecutor())
    with pytest.raises(StoreError, match="another spec"):
        submit(make_spec(tmp_path, **{"function.seed": 5}), InlineExecutor())
    assert submit(make_spec(tmp_path, **{"function.seed": 5}), InlineExecutor(), overwrite=True).complete


def test_a_shard_is_computed_in_blocks_that_keep_the_first_blocks_method(tmp_path, monkeypatch):
    import pipeline.kinds.derivative as kind
    from pipeline.store import checksum

    calls = []
    real = kind.compute

    def spy(spec, shard, device, previous=None, *, budget):
        arrays, info = real(spec, shard, device, previous, budget=budget)
        calls.append((shard.start, shard.stop, previous.method if previous else None, info.method))
        return arrays, info

    monkeypatch.setattr(kind, "compute", spy)
    spec = make_spec(tmp_path, **{"execution.shard_size": 16, "inputs.n": 30})
    submit(spec, InlineExecutor())
    # shards of 16 samples, 4 chunks each: blocks of one chunk, the last shard's short
    assert [c[:2] for c in calls] == [(s, min(s + 4, 30)) for s in range(0, 30, 4)]
    assert [c[2] for c in calls] == [None, "taylor", "taylor", "taylor"] * 2
    ds = open_results(spec.store.path)
    manifest = read_manifest(spec.store.path).to_pydict()
    assert manifest["method"] == ["taylor", "taylor"]
    # the checksum a shard reports is the checksum of what is in the store
    for shard_id, (start, stop) in enumerate([(0, 16), (16, 30)]):
        stored = {name: ds[name].values[start:stop] for name in ("inputs", *spec.quantities)}
        assert manifest["checksum"][shard_id] == checksum(stored)


class StopAfter(InlineExecutor):
    """Runs ``n`` shards, then stops as Ctrl-C would."""

    def __init__(self, n):
        super().__init__()
        self.n = n

    def run(self, unit, spec, shards, on_done, on_failed):
        super().run(unit, spec, shards[: self.n], on_done, on_failed)
        raise KeyboardInterrupt


def save_quadratic(file, a):
    import sys

    sys.path.insert(0, TESTS)
    from user_fns import Quadratic

    model = Quadratic()
    with torch.no_grad():
        model.a.copy_(torch.tensor(a))
    torch.save(model.state_dict(), file)


def test_a_replaced_checkpoint_stops_the_resume(tmp_path):
    from pipeline.store import StoreError

    checkpoint = tmp_path / "q.pt"
    save_quadratic(checkpoint, [[1.0, 0.0], [0.0, 1.0]])
    spec = make_spec(
        tmp_path,
        function={
            "kind": "import",
            "target": "user_fns:Quadratic",
            "checkpoint": str(checkpoint),
            "python_path": [TESTS],
        },
        quantities=["value", "hessian"],
    )
    with pytest.raises(KeyboardInterrupt):
        submit(spec, StopAfter(2))
    assert summarize(spec.store.path)["done"] == 2
    save_quadratic(checkpoint, [[5.0, 0.0], [0.0, 5.0]])  # other weights, same path
    with pytest.raises(StoreError) as err:
        submit(spec, InlineExecutor())
    message = str(err.value)
    assert f"function.checkpoint: {checkpoint} changed" in message and "sha256" in message
    assert "pass --overwrite" in message and "store.path" in message
    assert summarize(spec.store.path)["done"] == 2  # nothing was computed with the new weights
    assert submit(spec, InlineExecutor(), overwrite=True).complete
    np.testing.assert_allclose(
        open_results(spec.store.path).hessian.values, np.broadcast_to(10 * np.eye(2), (37, 2, 2))
    )


def test_an_edited_function_module_stops_the_resume(tmp_path):
    from pipeline.store import StoreError

    folder = tmp_path / "mods"
    folder.mkdir()
    module = folder / "edited_fns_for_resume.py"
    module.write_text("def f(x):\n    return (x**2).sum()\n")
    spec = make_spec(
        tmp_path,
        function={"kind": "import", "target": "edited_fns_for_resume:f", "python_path": [str(folder)]},
        quantities=["value"],
    )
    with pytest.raises(KeyboardInterrupt):
        submit(spec, StopAfter(1))
    module.write_text("def f(x):\n    return (x**3).sum()\n")
    with pytest.raises(StoreError, match=f"function.target: {module} changed"):
        submit(spec, InlineExecutor())


def test_changed_input_files_stop_the_resume_but_a_touch_does_not(tmp_path, monkeypatch):
    from pipeline import fingerprints
    from pipeline.store import StoreError

    data = np.random.default_rng(0).uniform(size=(37, 2))
    np.save(tmp_path / "x.npy", data)
    spec = make_spec(tmp_path, inputs={"kind": "npy", "path": str(tmp_path / "x.npy")}, quantities=["value"])
    with pytest.raises(KeyboardInterrupt):
        submit(spec, StopAfter(1))
    stat = os.stat(tmp_path / "x.npy")
    os.utime(tmp_path / "x.npy", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # same bytes, newer time
    with pytest.raises(KeyboardInterrupt):
        submit(spec, StopAfter(1))  # a small file is compared by its content: the resume goes on
    assert summarize(spec.store.path)["done"] == 2
    np.save(tmp_path / "x.npy", data[::-1].copy())
    with pytest.raises(StoreError, match=r"inputs\.path: .*x\.npy changed since the store was created"):
        submit(spec, InlineExecutor())
    # a big file is never read whole: its size and modification time stand for it
    monkeypatch.setattr(fingerprints, "HASH_LIMIT", 16)
    big = fingerprints.fingerprint(tmp_path / "x.npy")
    assert "sha256" not in big and big["size"] == os.path.getsize(tmp_path / "x.npy")
    os.utime(tmp_path / "x.npy", ns=(stat.st_atime_ns, big["mtime_ns"] + 10**9))
    assert not fingerprints.same(big, fingerprints.fingerprint(tmp_path / "x.npy"))


def test_inputs_from_a_store_are_fingerprinted_by_their_array(tmp_path):
    import zarr

    from pipeline.plan import plan_derivative_job
    from pipeline.store import StoreError, finalize_store, read_plan

    source = make_spec(tmp_path, "source.zarr", quantities=["value"])
    assert submit(source, InlineExecutor()).complete
    spec = make_spec(
        tmp_path, inputs={"kind": "zarr", "path": source.store.path, "array": "inputs"}, quantities=["value"]
    )
    with pytest.raises(KeyboardInterrupt):
        submit(spec, StopAfter(1))
    # the source job's metadata and manifest are rewritten (a resume of it): not what this job reads
    plan = plan_derivative_job(37, (2,), (3,), ("value",), 4, 8, "float64")
    from dataclasses import replace

    finalize_store(source.store.path, replace(plan, shards=tuple(read_plan(source.store.path))))
    with pytest.raises(KeyboardInterrupt):
        submit(spec, StopAfter(1))
    zarr.open_group(source.store.path, mode="r+", use_consolidated=False)["inputs"][0:4] = 0.5
    with pytest.raises(StoreError, match=r"inputs.path: .*source.zarr/inputs changed .*files"):
        submit(spec, InlineExecutor())


def test_settings_that_do_not_change_results_do_not_block_a_resume(tmp_path):
    from pipeline.store import StoreError

    with pytest.raises(KeyboardInterrupt):
        submit(make_spec(tmp_path), StopAfter(2))
    changed = make_spec(
        tmp_path, **{"derivatives.chunk_size": 3, "store.compression": "zstd", "execution.shard_size": 16}
    )
    summary = submit(changed.model_copy(update={"name": "renamed"}), InlineExecutor())
    assert summary.complete and summary.skipped == 2
    assert any("keeps its codec auto" in note for note in summary.notes)
    assert any("keeps its job name 't'" in note for note in summary.notes)
    assert any("execution.shard_size: the store keeps its shards of" in note for note in summary.notes)
    with pytest.raises(StoreError) as err:
        submit(make_spec(tmp_path, **{"derivatives.dtype": "float32", "inputs.n": 40}), InlineExecutor())
    assert "derivatives.dtype: float64 -> float32" in str(err.value) and "inputs.n: 37 -> 40" in str(err.value)


def test_a_store_made_before_a_run_that_could_not_start_is_removed(tmp_path):
    class Broken(InlineExecutor):
        def run(self, unit, spec, shards, on_done, on_failed):
            raise RuntimeError("the cluster went away")

    spec = make_spec(tmp_path)
    with pytest.raises(RuntimeError, match="went away"):
        submit(spec, Broken())
    assert not Path(spec.store.path).exists()
    # a store that already holds committed shards is kept
    with pytest.raises(KeyboardInterrupt):
        submit(spec, StopAfter(1))
    with pytest.raises(RuntimeError, match="went away"):
        submit(spec, Broken())
    assert summarize(spec.store.path)["done"] == 1


def test_one_driver_per_store(tmp_path, lock_holder):
    from pipeline.lock import lock_path
    from pipeline.store import StoreError

    spec = make_spec(tmp_path)
    lock = lock_path(spec.store.path)
    # another live driver holds the lock: a second submit stops, names it, and writes nothing
    holder = lock_holder(spec.store.path)
    with pytest.raises(StoreError, match=rf"another `pipeline submit` is running this store \(pid {holder.pid} on"):
        submit(spec, InlineExecutor())
    assert not Path(spec.store.path).exists()
    holder.kill()  # SIGKILL: no clean-up of its own
    holder.wait()
    assert lock.exists()  # the dead driver's file is left, unlocked
    assert submit(spec, InlineExecutor()).complete and not lock.exists()
    # an empty or garbled lock file (a driver killed while writing it) is no obstacle either
    lock.write_text("")
    assert submit(spec, InlineExecutor()).complete and not lock.exists()

    # a run whose executor breaks down releases the lock too
    class Broken(InlineExecutor):
        def run(self, *args, **kwargs):
            raise RuntimeError("the cluster went away")

    failing = make_spec(tmp_path, "f.zarr")
    with pytest.raises(RuntimeError, match="went away"):
        submit(failing, Broken())
    assert not lock_path(failing.store.path).exists()


def test_a_lock_that_cannot_be_written_is_one_message(tmp_path):
    """`pipeline verify --repair` of a store on a read-only file system: a StoreError (exit 2), not an OSError."""
    import pytest

    from pipeline.lock import lock_path, store_lock
    from pipeline.store import StoreError

    store = tmp_path / "s.zarr"
    lock_path(store).mkdir()  # os.open of the lock fails, as it does on a read-only file system
    with pytest.raises(StoreError, match="cannot write the store's lock"):
        with store_lock(store):
            pass
