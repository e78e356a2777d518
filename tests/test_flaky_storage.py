"""A bucket that answers some requests with 503 SlowDown, 500 InternalError, resets or stalls (tests/fault_proxy.py).

Every command of the user path runs through the fault proxy in front of the
real moto server; the store it makes must equal, bit for bit, the same job
run with no faults (itself equal to local disk: test_object_storage.py).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from fault_proxy import FaultProxy

from pipeline import storage
from pipeline.cli import main
from pipeline.store import open_results

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "jobs/quickstart.yaml"
SMALL = ["--set", "inputs.n=1000", "--set", "store.chunk_size=250", "--set", "execution.shard_size=250"]  # 4 shards
RUN_HISTORY = {
    "attempts",
    "started",
    "finished",
    "seconds",
    "samples_per_second",
    "worker",
    "node",
    "host",
    "pid",
    "gpu",
    "device",  # names the Ray node when this process has joined a Ray (another test file's, under xdist)
}


def run_cli(endpoint: str, *args, retries: int | None = None, timeout: float = 120) -> tuple[int, str, float]:
    """``pipeline ARGS`` in a subprocess whose S3 endpoint is ``endpoint``: (exit code, output, seconds)."""
    env = {**os.environ, "AWS_ENDPOINT_URL": endpoint}
    if retries is not None:
        env["PIPELINE_STORAGE_RETRIES"] = str(retries)
    began = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", *map(str, args)],
        cwd=str(ROOT),
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return done.returncode, done.stdout + done.stderr, time.monotonic() - began


def submit_args(url: str, *extra: str) -> list[str]:
    return ["submit", str(QUICKSTART), "--executor", "inline", "-q", "--set", f"store.path={url}", *SMALL, *extra]


def assert_same_store(s3_server, url: str, reference: str) -> None:
    """Arrays bit for bit, plan and manifest but for timings, read straight from the server."""
    direct = s3_server.storage_options()
    ds = open_results(url, require_complete=True, storage_options=direct)
    ref = open_results(reference, require_complete=True, storage_options=direct)
    assert sorted(ds.variables) == sorted(ref.variables)
    for name in ref.variables:
        np.testing.assert_array_equal(ds[name].values, ref[name].values, err_msg=name)
    for table in ("plan.parquet", "manifest.parquet"):
        got = pq.read_table(storage.open_file(storage.join(url, table))).to_pylist()
        want = pq.read_table(storage.open_file(storage.join(reference, table))).to_pylist()
        strip = lambda rows: [{k: v for k, v in r.items() if k not in RUN_HISTORY} for r in rows]  # noqa: E731
        assert strip(got) == strip(want), table


@pytest.fixture(scope="module")
def clean_store(s3_server):
    """The job run with no faults (straight to the server)."""
    url = s3_server.url("flaky-reference.zarr")
    code, output, _ = run_cli(s3_server.endpoint, *submit_args(url))
    assert code == 0, output
    return url


def test_a_few_percent_of_faults_change_nothing(s3_server, clean_store):
    url = s3_server.url("flaky.zarr")
    with FaultProxy(s3_server.port, rate=0.05, seed=1, delay_s=0.5) as proxy:
        code, output, seconds = run_cli(proxy.endpoint, *submit_args(url))
        print(seconds, proxy.faults, proxy.requests)
        assert code == 0, output
        assert sum(proxy.faults.values()) >= 5, proxy.faults
    assert_same_store(s3_server, url, clean_store)


def once(predicate, action: str, times: int = 1):
    """A proxy rule: ``action`` for the first ``times`` requests that ``predicate(method, path, query, headers)`` picks."""
    left = [times]

    def rule(method, path, query, headers):
        if left[0] > 0 and predicate(method, path, query, headers):
            left[0] -= 1
            return action
        return None

    return rule


def in_process_submit(s3_server, proxy: FaultProxy, url: str, *extra: str):
    options = s3_server.storage_options(endpoint=proxy.endpoint)
    args = [*submit_args(url, *extra), "--set", f"store.storage_options={json.dumps(options)}"]
    return CliRunner().invoke(main, args, catch_exceptions=False)


def test_a_lease_created_before_its_connection_reset_is_taken_as_ours(s3_server, clean_store):
    """The conditional PUT of the lease took effect, then its answer was lost; the retry's 412 is our own lease."""
    url = s3_server.url("flaky-lease.zarr")
    created = lambda m, p, q, h: m == "PUT" and p.endswith(".lease") and "if-none-match" in h  # noqa: E731
    with FaultProxy(s3_server.port, rule=once(created, "reset-after")) as proxy:
        result = in_process_submit(s3_server, proxy, url)
        assert proxy.faults["reset-after"] == 1
    assert result.exit_code == 0, result.output
    assert not storage.exists(url + ".lease")
    assert_same_store(s3_server, url, clean_store)


TWELVE = ["--set", "inputs.n=3000"]  # with SMALL's chunk and shard size: 12 shards of 250
ATTEMPT_PUT = re.compile(r"/_shards/(\d+)\.attempts\.")  # the first request of every shard attempt (record_attempt)


@pytest.fixture(scope="module")
def clean_twelve(s3_server):
    """The 12-shard job run with no faults (straight to the server)."""
    url = s3_server.url("flaky-reference-12.zarr")
    code, output, _ = run_cli(s3_server.endpoint, *submit_args(url, *TWELVE))
    assert code == 0, output
    return url


class Outage:
    """503 from the first commit on (``start`` in a thread), counting the shard attempts begun.

    ``refuse``: which requests (method) get the 503: every one, or only the writes (``PUT``: the driver still
    lists and reads the store, as when the workers' network or credentials fail but the driver's do not).
    """

    def __init__(self, url: str, refuse=lambda method: True) -> None:
        self.url, self.refuse, self.began, self.attempts = url, refuse, None, set()

    def rule(self, method, path, query, headers):
        match = ATTEMPT_PUT.search(path) if method == "PUT" else None
        if match:
            self.attempts.add(path)  # the storage's own retries repeat the path: one attempt each
        return "503" if self.refuse(method) else None

    def start(self, proxy: FaultProxy) -> None:
        while not any(n.endswith(".json") for n in storage.listdir(storage.join(self.url, "_shards"))):
            time.sleep(0.02)
        self.began = time.monotonic()
        proxy.rule = self.rule


def run_outage(s3_server, url: str, outage: Outage, executor: str, retries: int = 1) -> tuple[int, str, int, list]:
    """The 12-shard job through the proxy while ``outage`` strikes: (exit code, last line, shards committed, args)."""
    # two tries per storage call and two per shard: the defaults give up the same way, in longer steps
    args = submit_args(url, *TWELVE, "--set", f"execution.retries={retries}")
    if executor == "ray":  # its own local Ray, in the subprocess, with the storage's tries from its environment
        args = [a if a != "inline" else "ray" for a in args] + ["--local", "--set", "execution.max_in_flight=2"]
    with FaultProxy(s3_server.port) as proxy:
        threading.Thread(target=outage.start, args=(proxy,), daemon=True).start()
        code, output, _ = run_cli(proxy.endpoint, *args, retries=2, timeout=240)
    print(
        f"{executor}: {len(outage.attempts)} attempts begun in the outage, ended {time.monotonic() - outage.began:.1f} s in"
    )
    done = len([n for n in storage.listdir(storage.join(url, "_shards")) if n.endswith(".json")])
    return code, output.strip().splitlines()[-1], done, args


def assert_outage_line(line: str, url: str, retries: int, done: int) -> None:
    assert line.startswith(
        f"error: the storage of {url} did not answer: {retries + 1} shard attempts in a row failed on it ("
    ), line
    assert "503" in line or "SlowDown" in line, line
    assert f"no further shard was started; {done} of 12 shards are committed and kept" in line, line
    assert line.endswith("run the same command again when the storage answers (it resumes)"), line


@pytest.mark.parametrize("executor", ["inline", "ray"])
def test_a_bucket_refusing_every_write_starts_no_further_shard_and_a_rerun_completes(s3_server, clean_twelve, executor):
    """Every write answered 503 once a shard has committed: retries + 1 attempts in a row fail, then no shard starts.

    The driver still lists and reads the store (the workers' network or credentials failed, not its own).
    Before, each of the 11 pending shards started and spent its 2 attempts: 21-22 attempts begun in the
    outage (inline 28 s, Ray 18 s on the 2-core test machine), now 1-2 (7 s, 8 s).
    """
    url = s3_server.url(f"flaky-outage-{executor}.zarr")
    retries = 1
    outage = Outage(url, refuse=lambda method: method == "PUT")
    code, line, done, args = run_outage(s3_server, url, outage, executor, retries)
    # what ran when the bucket went down may fail once more (inline: 1 shard, ray: max_in_flight)
    running = 1 if executor == "inline" else 2
    assert 1 <= len(outage.attempts) <= retries + 1 + running, sorted(outage.attempts)
    assert code == 1, line
    assert 0 < done < 12
    assert_outage_line(line, url, retries, done)
    if executor == "ray":
        return  # the resume is the inline case's (a second local Ray would double this test's time)
    code, output, _ = run_cli(s3_server.endpoint, *args)  # the bucket answers again: the same command resumes
    assert code == 0, output
    assert f"resumed: {done} shard" in output, output
    assert_same_store(s3_server, url, clean_twelve)


def test_a_bucket_answering_only_errors_stops_with_one_line_and_a_rerun_completes(s3_server, clean_twelve):
    """Every request answered 503 once a shard has committed, the driver's own too: the outage's line, not a crash.

    Before, the driver's progress line for the first shard out of attempts listed the store, and that error
    ended the run (exit 2, "could not finalize"), hiding what happened.
    """
    url = s3_server.url("flaky-outage-all.zarr")
    retries = 1
    outage = Outage(url)
    code, line, done, args = run_outage(s3_server, url, outage, "inline", retries)
    assert len(outage.attempts) <= retries + 1 + 1, sorted(outage.attempts)
    assert code == 1, line
    assert 0 < done < 12
    assert_outage_line(line, url, retries, done)
    assert " (the manifest could not be written either: " in line, line
    code, output, _ = run_cli(s3_server.endpoint, *args)  # the bucket answers again: the same command resumes
    assert code == 0, output
    assert f"resumed: {done} shard" in output, output
    assert_same_store(s3_server, url, clean_twelve)


def test_a_worker_opening_the_store_tries_each_request_a_bounded_number_of_times(s3_server, clean_store):
    """obstore retries each request itself: ``storage.retry`` around it multiplied the tries (5 x 5)."""
    from pipeline.store import open_for_writing

    with FaultProxy(s3_server.port, rule=lambda *request: "503") as proxy:
        storage.set_options(clean_store, s3_server.storage_options(endpoint=proxy.endpoint))
        try:
            began = time.monotonic()
            with pytest.raises(Exception, match="503"):
                open_for_writing(clean_store)
            seconds = time.monotonic() - began
        finally:
            storage.set_options(clean_store, s3_server.storage_options())
    tries = sum(proxy.faults.values())
    assert tries <= 4 * storage.RETRY_ATTEMPTS and seconds < 12, (tries, seconds)  # zarr reads up to 4 keys


def test_a_500_to_a_head_request_is_retried(s3_server, clean_store):
    """S3 answers a HEAD with no body: botocore's error says only "(500) ... Internal Server Error" (was not retried)."""
    url = s3_server.url("flaky-head.zarr")
    marker_head = lambda m, p, q, h: m == "HEAD" and "/_shards/" in p and p.endswith(".json")  # noqa: E731
    with FaultProxy(s3_server.port, rule=once(marker_head, "500")) as proxy:
        result = in_process_submit(s3_server, proxy, url)
        assert proxy.faults["500"] == 1
    assert result.exit_code == 0, result.output
    assert_same_store(s3_server, url, clean_store)


def test_connection_errors_on_a_local_store_are_the_functions_not_an_outage(tmp_path):
    """A function that fetches over the network fails its shards with ConnectionResetError: on a local store
    that is no storage outage (it stopped the run, saying 'the storage of /local/path did not answer')."""
    from types import SimpleNamespace

    from pipeline.plan import Shard
    from pipeline.runner import InlineExecutor

    shards = [Shard(i, 10 * i, 10 * i + 10) for i in range(4)]
    done, failed = [], []

    def unit(spec, shard, memory_retries):
        if shard.id < 3:
            raise ConnectionResetError(104, "connection reset by peer (the function's own download)")
        return shard.id

    for path, remote in ((str(tmp_path / "local.zarr"), False), ("s3://bucket/run.zarr", True)):
        done.clear()
        failed.clear()
        spec = SimpleNamespace(execution=SimpleNamespace(retries=1), store=SimpleNamespace(path=path))
        run = lambda spec=spec: InlineExecutor().run(  # noqa: E731
            unit, spec, shards, done.append, lambda shard, attempts, error: failed.append(shard.id)
        )
        if remote:  # a bucket: the same errors, attempts in a row, are an outage (after one shard's attempts)
            with pytest.raises(Exception, match="did not answer"):
                run()
            assert failed == [0] and done == []
        else:  # every shard ran: three failed on their own error, one committed
            run()
            assert failed == [0, 1, 2] and done == [3]
