"""A bucket user whose credentials reach only ``s3://bucket/team-a/*``, against the real S3 server of the tests.

``prefix_proxy.PrefixProxy`` stands between the client and moto and refuses,
with S3's 403 AccessDenied, every request outside ``team-a/`` (a listing of
the bucket's top level included), as AWS would under the policy written in
docs/object-storage.md. The whole user path runs through it, as commands in
a shell whose ``AWS_ENDPOINT_URL`` is the proxy, and must give the same
results, bit for bit, as the job on local disk, without a single refusal.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from prefix_proxy import PrefixProxy
from s3server import free_port

from pipeline import storage
from pipeline.store import open_results

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "jobs/quickstart.yaml"
SMALL = ["--set", "inputs.n=6000", "--set", "store.chunk_size=250", "--set", "execution.shard_size=500"]  # 12 shards
PREFIX = "team-a/"


def start(*args, endpoint: str) -> subprocess.Popen:
    """``pipeline ARGS`` in a shell whose AWS_ENDPOINT_URL is ``endpoint`` (the prefix-limited user's)."""
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", *map(str, args)],
        cwd=str(ROOT),
        env={**os.environ, "AWS_ENDPOINT_URL": endpoint},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def run(*args, endpoint: str) -> tuple[int, str]:
    process = start(*args, endpoint=endpoint)
    output = process.communicate(timeout=300)[0]
    return process.returncode, output


def assert_same_dataset(ds: xr.Dataset, reference: xr.Dataset) -> None:
    assert sorted(ds.variables) == sorted(reference.variables)
    for name in reference.variables:
        np.testing.assert_array_equal(ds[name].values, reference[name].values, err_msg=name)


def objects(url: str) -> list[str]:
    fs, path = storage.filesystem(url)
    fs.invalidate_cache()
    return sorted(p[len(path) + 1 :] for p in fs.find(path))


def place(target: str) -> str:
    """Where a request went: the key it names, or ``<prefix> (listing)`` for a listing of the bucket."""
    parsed = urllib.parse.urlsplit(target)
    key = urllib.parse.unquote(parsed.path.lstrip("/").partition("/")[2])
    query = urllib.parse.parse_qs(parsed.query)
    return key or f"{query.get('prefix', [''])[0]} ({'delete' if 'delete' in query else 'listing'})"


@pytest.fixture
def proxy(s3_server):
    proxy = PrefixProxy(s3_server.port, s3_server.bucket, PREFIX)
    yield proxy
    proxy.stop()


def test_a_user_limited_to_a_prefix_runs_the_whole_path_bit_for_bit(s3_server, proxy, tmp_path):
    """submit, a resume after a killed driver, status, inspect, verify, report, verify --repair, open_results:
    every request under team-a/ (before: refused at once, the bucket's top level listed by check_access)."""
    local = tmp_path / "run1.zarr"
    code, output = run("submit", QUICKSTART, "--executor", "inline", "-q", "--set", f"store.path={local}", *SMALL,
                       endpoint=s3_server.endpoint)  # fmt: skip
    assert code == 0, output
    url = s3_server.url(PREFIX + "run1.zarr")
    submit = ("submit", QUICKSTART, "--executor", "inline", "-q", "--set", f"store.path={url}", *SMALL)
    process = start(*submit, endpoint=proxy.endpoint)
    try:
        while not any(n.startswith("_shards/") and n.endswith(".json") for n in objects(url)):
            assert process.poll() is None, process.communicate()[0]
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)  # its lease stays behind, its process gone
    finally:
        process.wait()
    done = sum(n.startswith("_shards/") and n.endswith(".json") for n in objects(url))
    assert 0 < done < 12, done
    code, output = run(*submit, endpoint=proxy.endpoint)
    assert code == 0 and "resumed:" in output, output
    for command in (("status", url), ("inspect", url), ("verify", url), ("report", url)):
        code, output = run(*command, endpoint=proxy.endpoint)
        assert code == 0, (command, output)
    chunk = sorted(name for name in objects(url) if name.startswith("hessian/c/"))[1]
    storage.write_bytes(f"{url}/{chunk}", b"not a chunk")  # damage, made with the full credentials
    assert run("verify", url, endpoint=proxy.endpoint)[0] == 1
    code, output = run("verify", url, "--repair", "--executor", "inline", "-q", endpoint=proxy.endpoint)
    assert code == 0 and "un-committed shards" in output, output
    options = {**s3_server.storage_options(), "client_kwargs": {"endpoint_url": proxy.endpoint}}
    try:
        ds = open_results(url, storage_options=options, require_complete=True)
        assert_same_dataset(ds, open_results(local))
    finally:
        storage.set_options(url, {})
    assert proxy.refused() == [], proxy.refused()
    assert len(proxy.requests) > 100  # everything went through the proxy
    # the store's prefix, its lease and driver record beside it (and their listings), the report beside it, and
    # s3fs's listing of the parent prefix (to tell a missing folder from an object): nothing else in team-a/
    where = {place(request.target) for request in proxy.requests}
    beside = {"team-a/run1.html", "team-a/ (listing)"}
    assert all(w.startswith("team-a/run1.zarr") for w in where - beside), sorted(where)
    assert storage.read_bytes(s3_server.url(PREFIX + "run1.html")).startswith(b"<!DOCTYPE html>")


def test_check_access_lists_only_the_store_prefix_and_still_tells_the_causes_apart(s3_server, proxy, monkeypatch):
    """A prefix-limited user passes for an empty or a filled prefix (before: refused, the bucket's top level
    listed), is refused outside it naming the prefix; a missing bucket, no credentials and an unreachable
    endpoint are each said as such."""
    monkeypatch.setattr(storage, "RETRY_ATTEMPTS", 1)
    through_proxy = {**s3_server.storage_options(), "client_kwargs": {"endpoint_url": proxy.endpoint}}
    inside, outside = s3_server.url("team-a/empty.zarr"), s3_server.url("team-b/run.zarr")
    storage.write_bytes(s3_server.url("team-b/run.zarr/zarr.json"), b"{}")  # a store the user may not see
    unreachable = {**through_proxy, "client_kwargs": {"endpoint_url": f"http://127.0.0.1:{free_port()}"}}
    no_keys = {"client_kwargs": {"endpoint_url": proxy.endpoint}}
    cases = [
        (inside, through_proxy, None),
        (s3_server.url("team-a"), through_proxy, None),
        (outside, through_proxy, f"store.path: access to {outside}/ was refused (Access Denied)"),
        ("s3://no-such-bucket-here/team-a/x.zarr", s3_server.storage_options(), "does not exist"),
        (inside, no_keys, "store.path: no credentials were found"),
        (inside, unreachable, "store.path: cannot reach the storage"),
    ]
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    for url, options, message in cases:
        storage.set_options(url, options)
        try:
            if message is None:
                storage.check_access(url, "store.path")
            else:
                with pytest.raises(storage.StorageError, match=re.escape(message)):
                    storage.check_access(url, "store.path")
        finally:
            storage.set_options(url, {})
    assert proxy.refused() and all("prefix=team-b" in r.target for r in proxy.refused()), proxy.refused()
    assert all("list-type=2" in r.target and "max-keys=1" in r.target for r in proxy.requests), proxy.requests


def test_a_store_outside_the_users_prefix_is_refused_naming_store_path_before_anything_is_written(s3_server, proxy):
    url = s3_server.url("team-b/run1.zarr")
    code, output = run("submit", QUICKSTART, "--executor", "inline", "--set", f"store.path={url}", *SMALL,
                       endpoint=proxy.endpoint)  # fmt: skip
    assert code == 2, output
    assert f"store.path: access to {url}/ was refused (Access Denied)" in output, output
    assert "Traceback" not in output
    assert [r.method for r in proxy.requests] == ["GET"], proxy.requests  # the one listing, refused
    assert objects(url) == [] and not storage.exists(url + ".lease")  # (the full credentials look)


def test_the_fsspec_zarr_layer_stays_under_the_prefix_too(s3_server, proxy, tmp_path, monkeypatch):
    """zarr's FsspecStore (s3fs), used when obstore is missing or the options are not obstore's: the same job
    through the prefix-limited proxy, its options in store.storage_options, equals local disk bit for bit."""
    from click.testing import CliRunner

    from pipeline.cli import main

    monkeypatch.setattr(storage, "ZARR_LAYER", "fsspec")
    small = ["--set", "inputs.n=2000", "--set", "store.chunk_size=250", "--set", "execution.shard_size=500"]
    local, url = tmp_path / "small.zarr", s3_server.url(PREFIX + "fsspec/small.zarr")
    options = {**s3_server.storage_options(), "client_kwargs": {"endpoint_url": proxy.endpoint}}
    for path, extra in ((local, []), (url, ["--set", f"store.storage_options={json.dumps(options)}"])):
        args = ["submit", str(QUICKSTART), "--executor", "inline", "-q", "--set", f"store.path={path}", *small]
        result = CliRunner().invoke(main, [*args, *extra], catch_exceptions=False)
        assert result.exit_code == 0, result.output
    try:
        assert type(storage.zarr_store(url)).__name__ == "FsspecStore"
        assert_same_dataset(open_results(url, storage_options=options, require_complete=True), open_results(local))
    finally:
        storage.set_options(url, {})
    assert proxy.refused() == [], proxy.refused()
    assert any("/fsspec/small.zarr/hessian/c/" in r.target and r.method == "PUT" for r in proxy.requests)
