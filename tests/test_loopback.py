"""`--local` binds Ray to the loopback interface (issue 11, point 7).

A subprocess starts Ray exactly as ``pipeline submit --local`` does
(``RayExecutor(local=True).start()``) and lists the TCP sockets that it and
every process below it listen on, read from ``/proc`` (no ``ss`` needed).
Every one must be bound to 127.0.0.1 / ::1 (or the IPv4-mapped ``::ffff:127.0.0.1``);
a bare ``ray.init(address="local")`` in the same way listens on all interfaces,
which the second test shows, so the first can fail.
"""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc/net"), reason="reads sockets from /proc (Linux)")

LISTENERS = r"""
import json, os, socket, sys
from pipeline.watchdog import descendants

def inodes(pid):
    found = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                found.add(target[8:-1])
    except OSError:
        pass
    return found

def listening():
    table = {}
    for name, family in (("tcp", 4), ("tcp6", 6)):
        with open(f"/proc/net/{name}") as handle:
            for line in handle.readlines()[1:]:
                fields = line.split()
                if fields[3] == "0A":  # LISTEN
                    table[fields[9]] = (family, fields[1])
    return table

def start():
    if sys.argv[1] == "pipeline":
        from pipeline.runner import RayExecutor
        RayExecutor(local=True).start()
    else:
        import ray
        ray.init(address="local", num_cpus=1, include_dashboard=False, logging_level="ERROR")

start()
import ray
pids = [os.getpid(), *descendants(os.getpid())]
table = listening()
out = [table[i] for pid in pids for i in inodes(pid) if i in table]
ray.shutdown()
print("LISTENERS " + json.dumps(out))
"""


def _address(family: int, hex_address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """The local address of a /proc/net/tcp{,6} line (host byte order, 32-bit words)."""
    raw = bytes.fromhex(hex_address.split(":")[0])
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    return ipaddress.ip_address(socket.inet_ntop(socket.AF_INET if family == 4 else socket.AF_INET6, words))


def _listeners(how: str) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    run = subprocess.run([sys.executable, "-c", LISTENERS, how], capture_output=True, text=True, timeout=120, env=env)
    line = [x for x in run.stdout.splitlines() if x.startswith("LISTENERS ")]
    assert run.returncode == 0 and line, run.stderr[-2000:]
    return [_address(family, hexed) for family, hexed in json.loads(line[0][10:])]


def _is_loopback(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def test_local_ray_listens_on_loopback_only():
    addresses = _listeners("pipeline")
    assert len(addresses) >= 3  # GCS, raylet, workers, agents: Ray did start servers
    assert all(_is_loopback(a) for a in addresses), [str(a) for a in addresses]


def test_plain_local_ray_listens_on_all_interfaces():
    """The default that `start_local_ray` changes (so the test above can fail)."""
    addresses = _listeners("plain")
    assert any(not _is_loopback(a) for a in addresses), [str(a) for a in addresses]
