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
from pipeline.runner import ClusterError, check_reachable

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
        [sys.executable, "-m", "pipeline.cli", "submit", str(ROOT / "jobs/quickstart.yaml"),
         "--address", f"127.0.0.1:{port}", "--set", f"store.path={store}"],
        capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path,
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


def test_reachable_and_ray_resolved_addresses_pass():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        check_reachable(f"127.0.0.1:{port}")
        check_reachable(f"ray://127.0.0.1:{port}")
    for address in ("auto", "local"):
        check_reachable(address)  # Ray finds these on this machine itself


@pytest.mark.parametrize("address", ["head-node", "10.0.0.1:port", ":6379"])
def test_address_without_host_and_port_is_explained(address):
    with pytest.raises(ClusterError, match=r"not HOST:PORT.*10\.0\.0\.1:6379"):
        check_reachable(address)


def test_local_and_address_together_is_a_usage_error(tmp_path):
    result = run("submit", ROOT / "jobs/quickstart.yaml", "--local", "--address", "10.0.0.1:6379",
                 "--set", f"store.path={tmp_path / 's.zarr'}")
    assert result.exit_code == 2
    assert "--local" in result.output and "--address" in result.output and "only one" in result.output
    assert not (tmp_path / "s.zarr").exists()
