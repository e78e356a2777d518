"""The store: template up front, region writes, commit markers, manifest, completeness."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import xarray as xr

from pipeline.plan import Shard, plan_derivative_job
from pipeline.store import (
    ShardRecord,
    StoreError,
    checksum,
    create_store,
    finalize_store,
    is_pipeline_store,
    open_results,
    read_attributes,
    read_manifest,
    read_markers,
    summarize,
    write_marker,
    write_region,
)


def make(tmp_path, n=10):
    plan = plan_derivative_job(n, (2,), (3,), ("value", "jacobian"), 2, 4, "float32")
    path = tmp_path / "s.zarr"
    create_store(path, plan, {"spec": {"name": "t"}, "spec_hash": "abc", "name": "t"})
    return path, plan


def record(shard, status="done"):
    return replace(
        ShardRecord.done(shard, attempts=1, host="h", device="cpu", seconds=0.1, samples_per_second=10.0, checksum="0"),
        status=status,
    )


def test_template_has_every_array_with_dims_and_fill(tmp_path):
    path, _ = make(tmp_path)
    attrs = read_attributes(path)
    assert attrs["complete"] is False and attrs["spec_hash"] == "abc" and "torch" in attrs["versions"]
    ds = xr.open_zarr(str(path), consolidated=False)
    assert ds.jacobian.dims == ("sample", "output", "input")
    assert np.isnan(ds.value.values).all()


def test_existing_store_is_not_replaced_silently(tmp_path):
    path, plan = make(tmp_path)
    with pytest.raises(StoreError, match="--overwrite"):
        create_store(path, plan, {})
    create_store(path, plan, {"spec_hash": "new"}, overwrite=True)
    assert read_attributes(path)["spec_hash"] == "new"


def test_regions_markers_manifest_and_complete_flag(tmp_path):
    path, plan = make(tmp_path)
    rng = np.random.default_rng(0)
    expected = {"value": rng.normal(size=(10, 3)), "jacobian": rng.normal(size=(10, 3, 2))}
    for shard in plan.shards[:-1]:
        write_region(path, {k: v[shard.start : shard.stop] for k, v in expected.items()}, shard.start, shard.stop)
        write_marker(path, record(shard))
    assert finalize_store(path, plan) is False
    counts = summarize(path)
    assert (counts["done"], counts["pending"], counts["complete"]) == (2, 1, False)
    assert read_manifest(path).column("status").to_pylist() == ["done", "done", "pending"]
    last = plan.shards[-1]
    write_region(path, {k: v[last.start : last.stop] for k, v in expected.items()}, last.start, last.stop)
    write_marker(path, record(last))
    assert finalize_store(path, plan) is True
    ds = open_results(path, require_complete=True)
    assert ds.attrs["complete"] is True
    np.testing.assert_allclose(ds.value.values, expected["value"].astype(np.float32))
    np.testing.assert_allclose(ds.jacobian.values, expected["jacobian"].astype(np.float32))
    assert sorted(read_markers(path)) == [0, 1, 2]


def test_failed_shards_appear_in_manifest(tmp_path):
    path, plan = make(tmp_path)
    failed = {1: ShardRecord.failed(Shard(1, 4, 8), attempts=3, error="boom")}
    assert finalize_store(path, plan, failed) is False
    manifest = read_manifest(path).to_pydict()
    assert manifest["status"][1] == "failed" and manifest["error"][1] == "boom" and manifest["attempts"][1] == 3
    assert summarize(path)["failed"] == 1
    with pytest.raises(StoreError, match="not complete"):
        open_results(path, require_complete=True)


def test_a_shard_that_never_committed_has_no_start_or_finish_time_in_the_manifest(tmp_path):
    import pyarrow as pa

    path, plan = make(tmp_path)
    first = replace(record(plan.shards[0]), started=1765000000.0, finished=1765000001.5)
    write_marker(path, first)
    failed = {1: ShardRecord.failed(plan.shards[1], attempts=2, error="boom")}
    assert finalize_store(path, plan, failed) is False
    manifest = read_manifest(path)
    assert manifest.column("status").to_pylist() == ["done", "failed", "pending"]
    for key in ("started", "finished"):  # null, not 0.0 (1970-01-01 as a time)
        assert manifest.schema.field(key).type == pa.float64()
        values = manifest.column(key).to_pylist()
        assert values[0] == getattr(first, key) and values[1:] == [None, None]
    # a manifest of shards none of which committed keeps the column's type (a first batch of nulls only)
    empty, empty_plan = make(tmp_path / "empty")
    assert finalize_store(empty, empty_plan) is False
    assert read_manifest(empty).schema.field("started").type == pa.float64()


def test_region_writes_open_each_array_once_and_store_all_nan_chunks(tmp_path):
    from pipeline.store import open_for_writing

    path, plan = make(tmp_path)
    group = open_for_writing(path)
    opened = []

    class Counting:  # the group, counting how often an array is opened (a GET of its zarr.json on a bucket)
        def __getitem__(self, name):
            opened.append(name)
            return group[name]

    targets: dict = {}
    nan = {"value": np.full((4, 3), np.nan), "jacobian": np.full((4, 3, 2), np.nan)}
    for shard in plan.shards[:2]:
        write_region(path, nan, shard.start, shard.stop, group=Counting(), targets=targets)
    assert sorted(opened) == ["jacobian", "value"]
    # the all-NaN chunk is written, not skipped as Zarr's fill check would: a shard's chunks always exist
    assert (path / "value" / "c" / "0" / "0").is_file() and (path / "jacobian" / "c" / "1" / "0" / "0").is_file()
    assert np.isnan(open_results(path).value.values[:8]).all()


def test_region_shape_mismatch_is_refused(tmp_path):
    path, _ = make(tmp_path)
    with pytest.raises(StoreError, match="expects"):
        write_region(path, {"value": np.zeros((3, 3))}, 0, 4)


def test_checksum_changes_with_data():
    a = {"x": np.arange(4.0)}
    assert checksum(a) == checksum({"x": np.arange(4.0)})
    assert checksum(a) != checksum({"x": np.arange(4.0) + 1e-12})


def test_not_a_store(tmp_path):
    with pytest.raises(StoreError, match="not a pipeline store"):
        read_attributes(tmp_path)


@pytest.mark.parametrize("kind", ["directory", "file", "zarr group"])
def test_overwrite_never_deletes_what_pipeline_did_not_write(tmp_path, kind):
    import zarr

    plan = plan_derivative_job(10, (2,), (3,), ("value",), 2, 4, "float32")
    path = tmp_path / "results"
    if kind == "directory":
        path.mkdir()
        (path / "notes.txt").write_text("mine")
    elif kind == "file":
        path.write_text("mine")
    else:
        zarr.open_group(str(path), mode="w", attributes={"owner": "someone else"})
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    for overwrite in (False, True):
        with pytest.raises(StoreError, match="left untouched") as err:
            create_store(path, plan, {"spec_hash": "x"}, overwrite=overwrite)
        assert "--overwrite" not in str(err.value) and "choose another store.path" in str(err.value)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    assert not is_pipeline_store(path)


def test_a_pipeline_store_or_an_empty_directory_may_be_replaced(tmp_path):
    path, plan = make(tmp_path)
    assert is_pipeline_store(path)
    create_store(path, plan, {"spec_hash": "new"}, overwrite=True)
    assert read_attributes(path)["spec_hash"] == "new"
    empty = tmp_path / "empty.zarr"
    empty.mkdir()
    create_store(empty, plan, {"spec_hash": "e"})
    assert is_pipeline_store(empty)


def test_the_plans_bytes_per_sample_are_the_stores(tmp_path):
    """``Plan.bytes_per_sample`` (what sizes a worker's blocks) equals the bytes of one sample of the created arrays."""
    import math

    import zarr

    from pipeline.plan import plan_sweep_job

    plans = [
        plan_derivative_job(10, (2,), (3,), ("value", "jacobian", "hessian"), 2, 4, "float64"),
        plan_sweep_job(12, {"T": (("time", "x"), (5, 8))}, {"time": 5, "x": 8}, ("a", "b"), ("q",), 4, 4, "float32"),
    ]
    for i, plan in enumerate(plans):
        path = tmp_path / f"{i}.zarr"
        create_store(path, plan, {"spec": {"name": "t"}, "spec_hash": "abc", "name": "t"})
        group = zarr.open_group(str(path), mode="r")
        stored = sum(
            a.dtype.itemsize * math.prod(a.shape[1:]) for _, a in group.arrays() if a.shape and a.shape[0] == plan.n
        )
        assert plan.bytes_per_sample() == stored > 0


def test_finalize_removes_the_progress_left_by_a_worker_stopped_after_its_commit(tmp_path):
    """A worker stopped between its marker and its progress removal leaves ``<id>.progress``: finalize clears it."""
    from pipeline.live import write_block_progress

    path, plan = make(tmp_path)
    write_marker(path, record(plan.shards[0]))
    for shard in plan.shards[:2]:
        write_block_progress(path, shard.id, 1, 2, shard.size)
    assert finalize_store(path, plan) is False
    left = sorted(p.name for p in (path / "_shards").iterdir() if p.name.endswith(".progress"))
    assert left == ["1.progress"]  # shard 0 committed: its progress is over; shard 1's attempt may still run


def test_checksum_falls_back_to_zlibs_crc32_without_compiled_crc32c(monkeypatch):
    import zlib

    import google_crc32c

    from pipeline.store import Checksum

    data = {"x": np.arange(5.0)}
    assert checksum(data).startswith("crc32c:")
    monkeypatch.setattr(google_crc32c, "implementation", "python")  # no wheel for this platform: ~5 MB/s
    summer = Checksum()
    summer.update(data)
    assert summer.kind == "crc32" and summer.per_array() == {"x": f"{zlib.crc32(data['x'].tobytes()):08x}"}
    assert Checksum.like(summer.hexdigest()).kind == "crc32"


def test_a_store_missing_a_marker_is_not_called_complete(tmp_path):
    path, plan = make(tmp_path)
    for shard in plan.shards:
        write_region(
            path, {"value": np.ones((shard.size, 3)), "jacobian": np.ones((shard.size, 3, 2))}, shard.start, shard.stop
        )
        write_marker(path, record(shard))
    assert finalize_store(path, plan) is True
    (path / "_shards" / "1.json").unlink()  # removed by hand: the shard is pending again
    counts = summarize(path)
    assert (counts["done"], counts["pending"], counts["complete"]) == (2, 1, False)
    assert open_results(path).attrs["complete"] is False
    with pytest.raises(StoreError, match="not complete"):
        open_results(path, require_complete=True)


def test_a_damaged_zarr_json_is_said_as_such(tmp_path):
    from pipeline.store import refuse_foreign_path

    path, _ = make(tmp_path)
    (path / "zarr.json").write_text('{"zarr_format": 3, "node_ty')  # cut short
    with pytest.raises(StoreError, match=r"damaged zarr\.json"):
        read_attributes(path)  # status, verify, inspect, open_results: not a JSONDecodeError traceback
    with pytest.raises(StoreError, match=r"damaged zarr\.json"):
        refuse_foreign_path(path)  # submit: not "a directory that was not written by pipeline"


def test_a_damaged_array_zarr_json_is_said_as_such_and_open_results_still_reads(tmp_path):
    from pipeline.store import refuse_foreign_path

    path, _ = make(tmp_path)
    (path / "jacobian" / "zarr.json").write_text("{")
    with pytest.raises(StoreError, match=r"array 'jacobian' is damaged"):
        read_attributes(path)  # status, verify, inspect: not a KeyError('plan.parquet') traceback
    with pytest.raises(StoreError, match=r"array 'jacobian' is damaged"):
        refuse_foreign_path(path)  # submit: not a resume that dies at the finalize
    assert open_results(path).jacobian.shape == (10, 3, 2)  # through the consolidated copy of the metadata


def test_a_damaged_manifest_is_said_as_such_and_the_finalize_writes_it_anew(tmp_path):
    path, plan = make(tmp_path)
    assert finalize_store(path, plan) is False
    (path / "manifest.parquet").write_text("garbage")
    with pytest.raises(StoreError, match=r"manifest\.parquet is damaged"):
        summarize(path)  # status, inspect, verify: not an ArrowInvalid traceback
    finalize_store(path, plan)  # what running the job again does
    assert summarize(path)["pending"] == 3


def test_a_local_store_without_its_plan_says_to_restore_it_or_overwrite(tmp_path):
    from pipeline.store import read_plan

    path, plan = make(tmp_path)
    (path / "plan.parquet").unlink()
    with pytest.raises(StoreError, match="--overwrite to replace the store") as err:
        read_plan(path)
    assert "bucket" not in str(err.value)  # running the job again alone would fail the same way
    create_store(path, plan, {"spec_hash": "new"}, overwrite=True)
    assert len(read_plan(path)) == len(plan.shards)


def test_a_full_disk_leaves_no_temporary_marker_or_driver_record(tmp_path, monkeypatch):
    from pathlib import Path

    from pipeline.live import put_record

    path, plan = make(tmp_path)

    def full(self, text):  # the file is made, then the write runs out of space
        self.touch()
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_text", full)
    with pytest.raises(OSError):
        write_marker(path, record(plan.shards[0]))
    with pytest.raises(OSError):
        put_record(path, {"pid": 1})
    assert [p.name for p in (path / "_shards").iterdir()] == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.zarr"]


def test_an_overwrite_stopped_while_deleting_the_old_store_leaves_no_half_deleted_store(tmp_path, monkeypatch):
    """Ctrl-C (or SIGKILL) during --overwrite's delete: a later plain submit must not resume a store without arrays."""
    import shutil
    from pathlib import Path

    path, plan = make(tmp_path)
    real = shutil.rmtree

    def stopped(target, *args, **kwargs):  # deletes the old store's value array, then the user presses Ctrl-C
        if (Path(target) / "value").is_dir():
            real(Path(target) / "value")
            raise KeyboardInterrupt
        real(target, *args, **kwargs)

    monkeypatch.setattr(shutil, "rmtree", stopped)
    with pytest.raises(KeyboardInterrupt):
        create_store(path, plan, {"spec_hash": "new"}, overwrite=True)
    monkeypatch.undo()
    assert all((path / name / "zarr.json").is_file() for name in ("value", "jacobian", "inputs"))
