"""README's "On a cluster" section, run command by command against a multi-process Ray on this machine.

The commands run as written, in the repository, with these substitutions
(the only ones), so that they stay on this host's free ports and temp dir and
never touch another Ray on it:

- ``HEAD`` -> ``127.0.0.1``, except in the ``ray job`` commands, which reach the
  dashboard at this machine's own network address where it has one (as
  another machine would: a dashboard on the loopback interface only fails
  there); the ports 6379, 8265, 10001 -> free ports;
  ``/shared`` -> a temporary directory (the "shared filesystem", the alternative
  to a bucket); the bucket ``s3://my-bucket`` is a real S3 server on localhost
  (moto, started by the ``s3_server`` fixture), whose endpoint and keys every
  process gets from the environment, as a cloud machine gets its credentials;
- every ``ray start`` gets ``--num-cpus 1`` and free ports for its node manager,
  object manager, agents and workers (two nodes on one machine would clash);
- ``ray stop`` (which stops every Ray on a host) -> killing the process groups
  of the ``ray start`` commands this test ran;
- HOME and TMPDIR point into the temporary directory (the token file and
  Ray's temp dir are this test's own), and ``export`` lines set the variable
  for the following commands.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest
from rayheads import RayCluster, cluster_env, free_port, new_base, worker_port_range

ROOT = Path(__file__).resolve().parents[1]


def cluster_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## On a cluster", 1)[1].split("\n## ", 1)[0]
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", section, flags=re.S):
        for line in block.splitlines():
            command = re.sub(r"\s+#.*$", "", line).strip()
            if command and not command.startswith("#"):
                lines.append(command)
    return lines


def test_the_section_shows_the_whole_path():
    commands = " ; ".join(cluster_commands())
    for step in (
        "ray start --head",
        "ray start --address",
        "pipeline submit",
        "ray job submit",
        "ray job logs",
        "ray status",
        "pipeline status",
        "ray stop",
        "ray://",
        "--working-dir .",
    ):
        assert step in commands, step


def network_address() -> str:
    """This machine's address on its network (not the loopback), or 127.0.0.1 when it has none."""
    import socket

    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(("10.255.255.255", 1))  # no packet is sent: the kernel only picks the route
            return probe.getsockname()[0]
    except OSError:
        return "127.0.0.1"


def isolate(command: str) -> str:
    """The extra `ray start` flags that let several nodes share this machine."""
    if not command.startswith("ray start"):
        return command
    low, high = worker_port_range()
    flags = [
        "--num-cpus=1",
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
    ]
    return command + " " + " ".join(flags)


def test_readme_cluster_commands_run_as_written(s3_server):
    import boto3

    boto3.client(
        "s3",
        endpoint_url=s3_server.endpoint,
        aws_access_key_id=s3_server.key,
        aws_secret_access_key=s3_server.secret,
        region_name="us-east-1",
    ).create_bucket(Bucket="my-bucket")
    base = new_base()
    shared = base / "shared"
    (base / "home").mkdir()
    shared.mkdir()
    env = cluster_env(base, token=None, HOME=str(base / "home"))
    env.pop("RAY_AUTH_MODE")  # as on a fresh machine: Ray decides from the token file
    cluster = RayCluster(base, env)
    ports = {"6379": str(free_port()), "8265": str(free_port()), "10001": str(free_port())}
    outputs = []
    remote = network_address()
    try:
        for written in cluster_commands():
            head = remote if written.startswith("ray job") else "127.0.0.1"
            command = written.replace("HEAD", head).replace("/shared", str(shared))
            for port, free in ports.items():
                command = re.sub(rf"(?<=[:\s]){port}\b", free, command)
            if command == "ray stop":
                cluster.stop(remove=False)
                continue
            if command.startswith("export "):
                key, _, value = command[len("export ") :].partition("=")
                env[key] = shlex.split(value)[0]
                continue
            for _attempt in range(2):
                process = subprocess.Popen(
                    ["bash", "-c", isolate(command)],
                    cwd=ROOT,
                    env=env,
                    text=True,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
                if command.startswith("ray start"):
                    cluster.groups.append(process.pid)
                try:
                    out, _ = process.communicate(timeout=300)
                except subprocess.TimeoutExpired:
                    process.kill()
                    pytest.fail(f"{written!r} ran over 300 s")
                # the Ray client server's per-client process can die starting on a loaded host
                # ("Initialization failure from server"): that one command is tried once more
                if process.returncode == 0 or "Initialization failure from server" not in out:
                    break
            assert process.returncode == 0, f"{written!r} failed ({process.returncode}):\n{out[-4000:]}"
            outputs.append((written, out))
        # the token was used: the cluster's head asked for it and every driver sent it
        assert (base / "home/.ray/auth_token").exists()
        status = next(out for cmd, out in outputs if cmd.startswith("ray status"))
        assert "2.0 CPU" in status or "2.0/2.0 CPU" in status or "0.0/2.0 CPU" in status, status
        job_logs = next(out for cmd, out in outputs if cmd.startswith("ray job logs"))
        assert "complete: s3://my-bucket/results/sweep.zarr" in job_logs, job_logs[-3000:]
        import pipeline

        for name in ("quickstart", "from_laptop", "sweep"):  # in the bucket, read back from it
            assert pipeline.open_results(f"s3://my-bucket/results/{name}.zarr").attrs["complete"], name
    finally:
        cluster.stop()
        assert not any(
            str(base).encode() in _cmdline(p)
            for p in Path("/proc").iterdir()
            if p.name.isdigit() and p.name != str(os.getpid())
        )


def _cmdline(proc: Path) -> bytes:
    """A process's command line, read once: b"" for one that has just exited (or is not ours to read)."""
    try:
        return (proc / "cmdline").read_bytes()
    except OSError:
        return b""
