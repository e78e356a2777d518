"""Policies: what a shard holding NaN or Inf does (execution.on_nonfinite), and what `inspect` says about it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from click.testing import CliRunner

from pipeline.cli import main
from pipeline.driver import submit
from pipeline.runner import InlineExecutor
from pipeline.spec import validate_spec
from pipeline.store import open_results, read_manifest

TESTS = str(Path(__file__).resolve().parent)


def sqrt_job(tmp_path, name, policy):
    # sqrt of a grid from -0.5 to 1: NaN (value and derivatives) for the 11 negative points, all in shards 0 and 1
    return validate_spec(
        {
            "schema_version": 1,
            "name": "sqrt",
            "function": {"kind": "import", "target": "user_fns:sqrt_first", "python_path": [TESTS]},
            "inputs": {"kind": "grid", "axes": [{"low": -0.5, "high": 1.0, "num": 32}]},
            "quantities": ["value", "jacobian", "hessian"],
            "derivatives": {"dtype": "float64"},
            "store": {"path": str(tmp_path / name), "chunk_size": 4},
            "execution": {"shard_size": 8, "retries": 0, "on_nonfinite": policy},
        }
    )


def independent_counts():
    x = np.linspace(-0.5, 1.0, 32)
    negative = x < 0
    return {shard: int(negative[shard * 8 : (shard + 1) * 8].sum()) for shard in range(4)}


def test_warn_commits_and_inspect_counts_per_array_and_shard(tmp_path):
    spec = sqrt_job(tmp_path, "warn.zarr", "warn")
    assert submit(spec, InlineExecutor()).complete
    expected = independent_counts()
    assert expected[0] == 8 and expected[1] == 3 and expected[2] == expected[3] == 0
    ds = open_results(spec.store.path)
    for name, per_sample in (("value", 1), ("jacobian", 1), ("hessian", 1)):
        assert int(np.isnan(ds[name].values).sum()) == 11 * per_sample, name
    output = CliRunner().invoke(main, ["inspect", spec.store.path]).output
    assert "non-finite values (NaN or Inf) by array: hessian 11, jacobian 11, value 11, in 2 shards" in output
    rows = [
        [cell for cell in line.split() if cell != "│"] for line in output.splitlines() if line.strip()[:1].isdigit()
    ]
    assert ["0", "8", "8", "8"] in rows and ["1", "3", "3", "3"] in rows


def test_fail_marks_the_shards_failed_with_the_array_and_count(tmp_path):
    spec = sqrt_job(tmp_path, "fail.zarr", "fail")
    summary = submit(spec, InlineExecutor())
    assert not summary.complete and sorted(summary.failed) == [0, 1]
    assert (
        "shard 1 (samples 8-16) holds 9 non-finite values (3 in hessian, 3 in jacobian, 3 in value)"
        in summary.failed[1].error
    )
    manifest = read_manifest(spec.store.path).to_pydict()
    assert manifest["status"] == ["failed", "failed", "done", "done"]
    ds = open_results(spec.store.path)
    assert not ds.committed.values[:16].any() and ds.committed.values[16:].all()
    assert np.isfinite(ds.value.values[16:]).all()
    np.testing.assert_allclose(ds.value.values[16:, 0], np.sqrt(np.linspace(-0.5, 1.0, 32)[16:]), rtol=1e-14)


def test_inspect_reads_the_non_finite_counts_from_the_manifest_and_only_the_commits_it_lacks(tmp_path, monkeypatch):
    # inspect read every shard's commit marker (one GET per shard in a bucket) for counts the manifest holds
    import json

    import pipeline.store as store
    from pipeline.report import nonfinite_counts

    spec = sqrt_job(tmp_path, "warn.zarr", "warn")
    assert submit(spec, InlineExecutor()).complete
    path = spec.store.path
    from_markers = {
        shard: json.loads(record.nonfinite_by_array)
        for shard, record in store.read_markers(path).items()
        if record.nonfinite
    }
    assert from_markers == {0: {"value": 8, "jacobian": 8, "hessian": 8}, 1: {"value": 3, "jacobian": 3, "hessian": 3}}
    read: list[int] = []
    real = store.read_marker
    monkeypatch.setattr(store, "read_marker", lambda p, shard: read.append(shard) or real(p, shard))
    manifest = read_manifest(path).to_pydict()
    assert nonfinite_counts(path, manifest) == from_markers and read == []
    # a manifest that lags (an interrupted run's late commits): those shards' markers are read
    lagging = {key: values[1:] for key, values in manifest.items()}
    assert nonfinite_counts(path, lagging) == from_markers and read == [0]
    assert nonfinite_counts(path) == from_markers and read == [0, 0, 1, 2, 3]
