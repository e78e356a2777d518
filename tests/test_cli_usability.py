"""The CLI where users get stuck: cluster addresses, status of an incomplete store, --help examples."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from pipeline.cli import main
from pipeline.runner import ClusterError, InlineExecutor, check_reachable

ROOT = Path(__file__).resolve().parents[1]


def run(*args, **kwargs):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False, **kwargs)


def closed_port() -> int:
    """A local port that nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ------------------------------------------------------------------ cluster addresses


def test_unreachable_address_fails_fast_and_says_what_to_do(tmp_path):
    """Before the check, `submit --address` to a closed port retried forever and ignored Ctrl-C."""
    port = closed_port()
    store = tmp_path / "s.zarr"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("RAY_ADDRESS", None)
    begin = time.monotonic()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline.cli",
            "submit",
            str(ROOT / "jobs/quickstart.yaml"),
            "--address",
            f"127.0.0.1:{port}",
            "--set",
            f"store.path={store}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=tmp_path,
    )
    assert result.returncode == 2, result.stderr
    assert time.monotonic() - begin < 60
    for word in ("--address", f"127.0.0.1:{port}", "ray start --head", "--local"):
        assert word in result.stderr, word
    assert not store.exists()


def test_unreachable_address_names_its_source():
    port = closed_port()
    with pytest.raises(ClusterError, match=rf"'127.0.0.1:{port}' \(from RAY_ADDRESS\).*correct RAY_ADDRESS"):
        check_reachable(f"127.0.0.1:{port}", "RAY_ADDRESS", timeout=2)
    with pytest.raises(ClusterError, match=rf"ray://127.0.0.1:{port}.*ray start --head"):
        check_reachable(f"ray://127.0.0.1:{port}", timeout=2)


def test_a_ray_head_passes_and_other_servers_are_refused(ray_cluster):
    import http.server
    import threading

    import ray

    check_reachable(ray.get_runtime_context().gcs_address)  # the session's real Ray head (gRPC)
    for address in ("auto", "local"):
        check_reachable(address)  # Ray finds these on this machine itself
    # a web server on the port answers, but not as Ray: ray.init would wait on it forever
    server = http.server.HTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        port = server.server_address[1]
        with pytest.raises(ClusterError, match=rf"127.0.0.1:{port} .* answers, but it is not a Ray cluster"):
            check_reachable(f"127.0.0.1:{port}", timeout=2)
    finally:
        server.shutdown()
    # a server that accepts and says nothing times out
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        with pytest.raises(ClusterError, match="timed out"):
            check_reachable(f"127.0.0.1:{port}", timeout=1)


def test_the_ray_client_address_gets_the_right_fix():
    port = closed_port()
    with pytest.raises(ClusterError) as caught:
        check_reachable(f"ray://127.0.0.1:{port}", timeout=2)
    assert "`ray start --head`" in str(caught.value) and "--port" not in str(caught.value)


@pytest.mark.parametrize("address", ["head-node", "10.0.0.1:port", ":6379"])
def test_address_without_host_and_port_is_explained(address):
    with pytest.raises(ClusterError, match=r"not HOST:PORT.*10\.0\.0\.1:6379"):
        check_reachable(address)


def test_local_and_address_together_is_a_usage_error(tmp_path):
    result = run(
        "submit",
        ROOT / "jobs/quickstart.yaml",
        "--local",
        "--address",
        "10.0.0.1:6379",
        "--set",
        f"store.path={tmp_path / 's.zarr'}",
    )
    assert result.exit_code == 2
    assert "--local" in result.output and "--address" in result.output and "only one" in result.output
    assert not (tmp_path / "s.zarr").exists()


# ------------------------------------------------------------------ status and inspect

SMALL_SWEEP = [
    "--set",
    "solver.options={nx: 64, n_angles: 4, t_end: 0.25, save_every: 5}",
    "--set",
    "sweep.axes={T0_mean: [1.0, 2.0], sigma_mean: [0.5, 1.0, 2.0], T0_phase: [0.0]}",
    "--set",
    "store.chunk_size=2",
    "--set",
    "execution.shard_size=4",
]


class PartlyFailing(InlineExecutor):
    """An executor that fails the even shards, leaves shards 1, 5, 9, ... pending and runs the rest.

    (``start`` and ``check`` of ``runner.Executor``: the inline executor's, which do nothing.)
    """

    name = "partly-failing"

    def describe(self):
        return self.name

    def run(self, unit, spec, shards, on_done, on_failed):
        for shard in shards:
            if shard.id % 2 == 0:
                on_failed(shard, 1, f"RuntimeError: shard {shard.id} broke")
            elif shard.id % 4 == 3:
                on_done(unit(spec, shard))


@pytest.fixture(scope="module")
def incomplete_store(tmp_path_factory):
    from pipeline.driver import submit
    from pipeline.spec import load_spec

    store = tmp_path_factory.mktemp("status") / "partial.zarr"
    spec = load_spec(
        ROOT / "jobs/quickstart.yaml",
        [
            "inputs.n=2400",
            "store.chunk_size=100",
            "execution.shard_size=100",
            f"store.path={store}",
            "quantities=[value]",
        ],
    )
    summary = submit(spec, PartlyFailing())
    assert not summary.complete and len(summary.failed) == 12
    return store


def test_status_lists_the_failed_and_pending_shards(incomplete_store):
    result = run("status", incomplete_store)
    assert result.exit_code == 1
    assert "failed shards: 0, 2, 4, 6, 8, 10, 12, 14, 16, 18 and 2 more (--json lists all)" in result.output
    assert "pending shards: 1, 5, 9, 13, 17, 21\n" in result.output
    assert f"pipeline inspect {incomplete_store}" in result.output and "run the job again" in result.output
    counts = __import__("json").loads(run("status", incomplete_store, "--json").output)
    assert counts["failed_shards"] == list(range(0, 24, 2)) and counts["pending_shards"] == [1, 5, 9, 13, 17, 21]
    assert (counts["done"], counts["failed"], counts["pending"]) == (6, 12, 6)


def test_require_complete_points_to_commands_that_list_the_shards(incomplete_store):
    from pipeline.store import StoreError, open_results

    with pytest.raises(StoreError, match=r"status .* lists the failed and pending shards"):
        open_results(incomplete_store, require_complete=True)
    assert "shard 0 failed" in run("inspect", incomplete_store).output  # where their errors are


def test_sweep_stores_count_cases_not_samples(tmp_path):
    store = tmp_path / "sweep.zarr"
    result = run(
        "submit",
        ROOT / "jobs/sweep.yaml",
        "--executor",
        "inline",
        "--quiet",
        "--set",
        f"store.path={store}",
        *SMALL_SWEEP,
    )
    assert result.exit_code == 0, result.output
    inspect = run("inspect", store).output
    assert "(6 of 6 cases)" in inspect and "cases/s per shard" in inspect and "samples" not in inspect
    status = run("status", store)
    assert status.exit_code == 0 and "cases_done" in status.output and "samples" not in status.output


# ------------------------------------------------------------------ --help


@pytest.mark.parametrize("command", ["submit", "validate", "schema", "inspect", "status"])
def test_every_command_help_shows_examples(command):
    helptext = run(command, "--help").output
    assert "Examples:" in helptext
    examples = [line.strip() for line in helptext.splitlines() if line.strip().startswith(f"pipeline {command}")]
    assert examples, helptext


def test_top_level_help_mentions_both_job_kinds():
    helptext = run("--help").output
    assert "derivative job" in helptext and "kind: sweep" in helptext and "jobs/sweep.yaml" in helptext


def test_validate_help_examples_run(monkeypatch):
    monkeypatch.chdir(ROOT)
    lines = [line.split("#")[0].split() for line in run("validate", "--help").output.splitlines()]
    examples = [words[2:] for words in lines if words[:2] == ["pipeline", "validate"] and "jobs/" in words[2]]
    assert len(examples) == 2
    for args in examples:
        result = run("validate", *args)
        assert result.exit_code == 0, (args, result.output)


def test_status_of_a_store_whose_driver_stopped_while_finalizing(tmp_path):
    """Every shard committed, `complete` never set (e.g. `ray job stop` mid-finalize): status says to finalize,
    not that shards are left; the same command finalizes it and computes nothing."""
    import json

    store = tmp_path / "f.zarr"
    small = ["--set", f"store.path={store}", "--set", "inputs.n=400", "--set", "store.chunk_size=100"]
    small += ["--set", "execution.shard_size=200", "--executor", "inline", "-q"]
    job = ROOT / "jobs/quickstart.yaml"
    assert run("submit", job, *small).exit_code == 0
    metadata = json.loads((store / "zarr.json").read_text())
    metadata["attributes"]["complete"] = False  # as a driver stopped before its finalize leaves it
    (store / "zarr.json").write_text(json.dumps(metadata))
    said = run("status", store)
    assert said.exit_code == 1, said.output
    text = " ".join(said.output.split())
    assert "every shard is committed but the store was not finalized" in text and "finish them" not in text
    again = run("submit", job, *small)
    assert again.exit_code == 0 and "0 shards run" in again.output, again.output
    assert run("status", store).exit_code == 0


@pytest.mark.parametrize("failure", ["Starting Ray client server failed", "Initialization failure from server: ..."])
def test_a_ray_client_join_is_tried_again_when_the_heads_client_server_fails_to_start(failure, monkeypatch):
    """The retry policy of RayExecutor._init (a real Ray client join is in test_cluster.py): these two failures of
    a loaded head's client server pass, and are tried again; any other error, or a non-client address, is not."""
    import pipeline.runner as runner

    monkeypatch.setattr(runner.time, "sleep", lambda seconds: None)

    class FlakyRay:
        def __init__(self, errors):
            self.errors, self.calls = list(errors), 0

        def init(self, address, **kwargs):
            self.calls += 1
            if self.errors:
                raise RuntimeError(self.errors.pop(0))

        def shutdown(self):
            pass

    ray = FlakyRay([failure])
    runner.RayExecutor()._init(ray, "ray://head:10001")
    assert ray.calls == 2
    for address, error in (("head:6379", failure), ("ray://head:10001", "token refused")):
        ray = FlakyRay([error])
        with pytest.raises(ClusterError, match="cannot join"):
            runner.RayExecutor()._init(ray, address)
        assert ray.calls == 1
