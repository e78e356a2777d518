"""A local store.path on a cluster of several hosts: checked before any store is written.

A real `ray start` cluster on one machine, made of several hosts by Ray's own
measure: a head, a node at 127.0.0.2 (all of 127.0.0.0/8 is loopback) that sees
every folder, and a node at 127.0.0.3 whose `ray start` runs in a mount
namespace of its own with an empty tmpfs over ``<base>/hidden``: its workers do
not see that folder, as a machine without the driver's disk.
"""

from __future__ import annotations

import pytest
from rayheads import start_cluster
from test_cluster import QUICK, SMALL, pipeline


@pytest.fixture(scope="module")
def cluster():
    cluster = start_cluster(num_cpus=1)
    try:
        (cluster.base / "hidden").mkdir()
        cluster.add_worker(1, node_ip="127.0.0.2")
        cluster.add_worker(1, node_ip="127.0.0.3", hide=cluster.base / "hidden")
    except BaseException:
        cluster.stop()
        raise
    yield cluster
    cluster.stop()


def test_a_store_every_node_sees_is_probed_on_the_other_hosts_and_runs(cluster, tmp_path):
    store = tmp_path / "seen.zarr"
    result = pipeline(cluster, "submit", QUICK, "--address", cluster.address, "--set", f"store.path={store}", *SMALL)
    assert result.returncode == 0, result.stderr[-3000:]
    note = next(line for line in result.stderr.splitlines() if "seen by the nodes on other hosts" in line)
    assert "127.0.0.2 (" in note and "127.0.0.3 (" in note, note
    assert f"complete: {store}" in result.stdout
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".pipeline-probe-")] == []


@pytest.mark.parametrize("join", ["gcs", "client"])
def test_a_store_a_node_does_not_see_is_refused_before_anything_is_written(cluster, join):
    """Joined by HOST:PORT (the driver is on the head's node) or by the Ray client (this machine's addresses)."""
    hidden = cluster.base / "hidden"
    store = hidden / f"{join}.zarr"
    address = cluster.address if join == "gcs" else f"ray://127.0.0.1:{cluster.client_port}"
    result = pipeline(cluster, "submit", QUICK, "--address", address, "--set", f"store.path={store}", *SMALL)
    assert result.returncode == 2, result.stderr[-3000:]
    line = result.stderr.strip().splitlines()[-1]
    for words in (f"store.path {store}", "1 of the 2 nodes", "127.0.0.3 (", "mounts at the same path", "s3://"):
        assert words in line, (words, line)
    assert "127.0.0.2" not in line
    assert list(hidden.iterdir()) == []  # no store, lock, driver record or probe file


def test_a_node_that_does_not_answer_in_time_is_a_warning_not_a_refusal(cluster, tmp_path):
    store = tmp_path / "late.zarr"
    result = pipeline(
        cluster,
        "submit",
        QUICK,
        "--address",
        cluster.address,
        "--set",
        f"store.path={store}",
        *SMALL,
        env={"PIPELINE_STORE_PROBE_S": "0"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "within 0 s whether it sees store.path" in result.stderr, result.stderr[-3000:]
    assert f"complete: {store}" in result.stdout
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".pipeline-probe-")] == []
