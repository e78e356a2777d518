"""Multi-process Ray clusters for tests: `ray start` heads and workers on their own ports and temp dirs.

Each node is started in a new session (its own process group), and stopped by
killing that group (and any process whose command line names the cluster's
temp dir, all ours): never `ray stop`, which would stop every Ray on the host.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

BIN = Path(sys.executable).parent
RAY = str(BIN / "ray")
TOKEN = "pipeline-test-token-0123456789abcdef0123456789"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def worker_port_range(width: int = 60) -> tuple[int, int]:
    """A range of ports for a node's workers, picked at random where none is listening now.

    It lies below the kernel's ephemeral range, where ``free_port`` (and Ray's own
    random ports) pick from: a worker range there could take a port given to
    another component of the same node, which ``ray start`` refuses ("worker_ports
    is trying to use a port number ... used by other components").
    """
    ephemeral_low = _ephemeral_ports()[0]
    for _ in range(50):
        low = random.randrange(20000, max(20100, ephemeral_low - width), 100)
        busy = False
        for port in range(low, low + width, 7):
            with socket.socket() as sock:
                try:
                    sock.bind(("0.0.0.0", port))
                except OSError:
                    busy = True
                    break
        if not busy:
            return low, low + width
    raise RuntimeError("no free port range for Ray workers")


def _ephemeral_ports() -> tuple[int, int]:
    """The kernel's ephemeral port range (Linux's default 32768-60999 where it cannot be read)."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def cluster_env(base: Path, token: str | None = TOKEN, **extra) -> dict:
    """The environment of every process of a test cluster (and of drivers joining it).

    TMPDIR=<base> so that `auto` finds this cluster's head (Ray reads
    <TMPDIR>/ray/ray_current_cluster), the venv first on PATH (jobs find
    `pipeline`), token authentication on with a token of our own.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH") and k != "RAY_ADDRESS"}
    env.update(
        TMPDIR=str(base),
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        RAY_USAGE_STATS_ENABLED="0",
        RAY_DEDUP_LOGS="0",
        RAY_ENABLE_UV_RUN_RUNTIME_ENV="0",
    )
    if token:
        env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token)
    else:
        env["RAY_AUTH_MODE"] = "disabled"
    env.update(extra)
    return env


@dataclass
class RayCluster:
    """A head (and workers) started with `ray start`; ``stop()`` kills exactly their processes."""

    base: Path
    env: dict
    port: int = 0
    dashboard_port: int = 0
    client_port: int = 0
    groups: list = field(default_factory=list)  # process-group ids, one per node
    workers: list = field(default_factory=list)  # process-group ids of worker nodes

    @property
    def temp_dir(self) -> Path:
        return self.base / "ray"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _start(self, args: list[str], env: dict | None = None, tries: int = 2, wrap: list[str] = ()) -> int:
        for _attempt in range(tries):
            process = subprocess.Popen(
                [*wrap, RAY, "start", *args],
                env=env or self.env,
                start_new_session=True,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            out, _ = process.communicate(timeout=180)
            if process.returncode == 0:
                self.groups.append(process.pid)
                return process.pid
            # Ray gives a node 30 s to register, which a loaded 2-core host can miss: once more
            self.kill_group(process.pid)
            time.sleep(1)
        self.stop()
        raise RuntimeError(f"ray start {' '.join(args)} failed:\n{out[-3000:]}")

    def start_head(self, num_cpus: int = 2, extra: list[str] = (), env: dict | None = None) -> RayCluster:
        self.port, self.dashboard_port, self.client_port = free_port(), free_port(), free_port()
        low, high = worker_port_range()
        self._start(
            [
                "--head",
                f"--temp-dir={self.temp_dir}",
                f"--port={self.port}",
                f"--num-cpus={num_cpus}",
                f"--node-manager-port={free_port()}",
                f"--object-manager-port={free_port()}",
                f"--dashboard-port={self.dashboard_port}",
                f"--ray-client-server-port={self.client_port}",
                f"--dashboard-agent-listen-port={free_port()}",
                f"--dashboard-agent-grpc-port={free_port()}",
                f"--metrics-export-port={free_port()}",
                f"--runtime-env-agent-port={free_port()}",
                f"--min-worker-port={low}",
                f"--max-worker-port={high}",
                "--object-store-memory=200000000",
                "--include-dashboard=true",
                "--disable-usage-stats",
                *extra,
            ],
            env,
        )
        return self

    def add_worker(self, num_cpus: int = 1, node_ip: str | None = None, hide: Path | None = None) -> int:
        """Start a worker node; ``node_ip`` (e.g. 127.0.0.2, loopback too) makes it another host to Ray.

        ``hide``: a folder the node's processes do not see (``ray start`` runs in a mount namespace of its
        own, with an empty tmpfs over it), as on a machine without the driver's disk.
        """
        low, high = worker_port_range()
        wrap = []
        if hide is not None:
            mount = f'mount -t tmpfs none "{hide}" && exec "$0" "$@"'
            wrap = ["unshare", "--mount", "--propagation", "private", "sh", "-c", mount]
        group = self._start(
            [
                *([f"--node-ip-address={node_ip}"] if node_ip else []),
                f"--address={self.address}",
                f"--num-cpus={num_cpus}",
                f"--node-manager-port={free_port()}",
                f"--object-manager-port={free_port()}",
                f"--dashboard-agent-listen-port={free_port()}",
                f"--dashboard-agent-grpc-port={free_port()}",
                f"--metrics-export-port={free_port()}",
                f"--runtime-env-agent-port={free_port()}",
                f"--min-worker-port={low}",
                f"--max-worker-port={high}",
                "--object-store-memory=100000000",
                "--disable-usage-stats",
            ],
            wrap=wrap,
        )
        self.workers.append(group)
        return group

    def kill_group(self, group: int) -> None:
        try:
            os.killpg(group, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def stop(self, remove: bool = True) -> None:
        for group in self.groups:
            self.kill_group(group)
        # what left its group (Ray's own daemons may start new sessions), found by our temp dir
        mark = str(self.temp_dir).encode()
        for proc in Path("/proc").iterdir():
            if proc.name.isdigit() and int(proc.name) != os.getpid():
                try:
                    if mark in (proc / "cmdline").read_bytes():
                        os.kill(int(proc.name), signal.SIGKILL)
                except (OSError, ProcessLookupError):
                    pass
        time.sleep(0.5)
        if remove:
            shutil.rmtree(self.base, ignore_errors=True)


def new_base() -> Path:
    """A short temp dir (Ray's socket paths must stay under ~107 characters)."""
    return Path(tempfile.mkdtemp(prefix="plc-", dir="/tmp"))


def start_cluster(num_cpus: int = 2, token: str | None = TOKEN, workers: list[int] = (), extra=(), **env) -> RayCluster:
    base = new_base()
    cluster = RayCluster(base, cluster_env(base, token, **env))
    cluster.start_head(num_cpus, list(extra))
    # one worker at a time: started together on a loaded 2-core host, a worker missed Ray's 30 s
    # registration deadline twice in a row (clean-clone run, session 9) and the whole module errored
    for num_cpus in workers:
        cluster.add_worker(num_cpus)
    return cluster


FAKE_PROVIDER = "ray.autoscaler._private.fake_multi_node.node_provider.FakeMultiNodeProvider"


def start_autoscaling_cluster(
    worker_types: dict, head_cpus: int = 1, idle_timeout_minutes: float = 0.1, token: str | None = TOKEN
) -> RayCluster:
    """A head whose autoscaler starts (and stops) nodes of ``worker_types`` with Ray's fake multi-node provider.

    What ``ray.cluster_utils.AutoscalingCluster`` sets up, on our own ports and
    temp dir (it calls `ray stop --force`, which would stop every Ray on the
    host, and its provider defaults file is not in the wheel: the provider is
    named as an external module, the same class). Worker nodes are started by
    the autoscaler in the head's process group and temp dir, so ``stop()`` ends them.
    """
    base = new_base()
    head_id = "fffffffffffffffffffffffffffffffffffffffffffffffffff00000"  # the fake provider's head node id
    cluster = RayCluster(
        base,
        cluster_env(  # autoscaler v2: it tracks nodes by the GCS (no SSH updaters)
            base,
            token,
            RAY_FAKE_CLUSTER="1",
            AUTOSCALER_UPDATE_INTERVAL_S="1",
            RAY_enable_autoscaler_v2="1",
            RAY_CLOUD_INSTANCE_ID=head_id,
            RAY_OVERRIDE_NODE_ID_FOR_TESTING=head_id,
        ),
    )
    cluster.port = free_port()
    config = {
        "cluster_name": "fake",
        "max_workers": sum(t.get("max_workers", 0) for t in worker_types.values()),
        "idle_timeout_minutes": idle_timeout_minutes,
        "upscaling_speed": 2,
        "provider": {
            "type": "external",
            "module": FAKE_PROVIDER,
            "gcs_address": cluster.address,
            "disable_node_updaters": True,
            "disable_launch_config_check": True,
            "launch_multiple": True,
            "head_node_id": head_id,
        },
        "auth": {"ssh_user": "ubuntu"},
        "head_node_type": "ray.head.default",
        "available_node_types": {
            "ray.head.default": {"resources": {"CPU": head_cpus}, "node_config": {}, "max_workers": 0},
            **{name: {"node_config": {}, **t} for name, t in worker_types.items()},
        },
        "file_mounts": {},
        "cluster_synced_files": [],
        "file_mounts_sync_continuously": False,
        "rsync_exclude": [],
        "rsync_filter": [],
        "initialization_commands": [],
        "setup_commands": [],
        "head_setup_commands": [],
        "worker_setup_commands": [],
        "head_start_ray_commands": [],
        "worker_start_ray_commands": [],
    }
    (base / "autoscaling.json").write_text(json.dumps(config))
    cluster.dashboard_port, cluster.client_port = free_port(), free_port()
    low, high = worker_port_range()
    cluster._start(
        [
            "--head",
            f"--temp-dir={cluster.temp_dir}",
            f"--port={cluster.port}",
            f"--num-cpus={head_cpus}",
            f"--node-manager-port={free_port()}",
            f"--object-manager-port={free_port()}",
            f"--dashboard-port={cluster.dashboard_port}",
            f"--ray-client-server-port={cluster.client_port}",
            f"--dashboard-agent-listen-port={free_port()}",
            f"--dashboard-agent-grpc-port={free_port()}",
            f"--metrics-export-port={free_port()}",
            f"--runtime-env-agent-port={free_port()}",
            f"--min-worker-port={low}",
            f"--max-worker-port={high}",
            "--object-store-memory=200000000",
            f"--autoscaling-config={base / 'autoscaling.json'}",
            "--disable-usage-stats",
        ]
    )
    return cluster


def alive_nodes(cluster: RayCluster) -> list[dict]:
    """The cluster's alive nodes (their resources), asked of the GCS by a short-lived Ray client process."""
    code = (
        f"import json, ray; ray.init(address={cluster.address!r}, logging_level='ERROR', log_to_driver=False); "
        "print('NODES ' + json.dumps([n['Resources'] for n in ray.nodes() if n['Alive']]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=cluster.env, timeout=120)
    # Ray's raylet may print its own notes to stdout too (e.g. about infeasible tasks): read our line only
    lines = [line for line in out.stdout.splitlines() if line.startswith("NODES ")]
    assert lines, f"no node list from the GCS: {out.stdout[-2000:]} {out.stderr[-2000:]}"
    return json.loads(lines[-1][len("NODES ") :])
