"""A real S3 server on localhost for the tests: moto in server mode, started by the test session itself.

``s3_server`` (session fixture, via ``pytest_plugins`` in conftest.py) starts
``moto_server`` on a free port as a subprocess, with signature checking on:
the first requests (no auth) create an IAM user with full access and its
access key, every later request must be signed with it. It sets the AWS
variables (``AWS_ENDPOINT_URL``, the key, a region) in this process's
environment, so subprocesses and in-process CLI runs find the server as a
user's would find AWS, makes a bucket, and kills the server by its pid at the
end.

``Outage`` is a TCP proxy in front of the server that can be switched off
and on: to a client, the server stops answering (connections refused) and
comes back with its objects intact.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

BUCKET = "pipeline-tests"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class S3Server:
    endpoint: str
    port: int
    key: str
    secret: str
    bucket: str
    process: subprocess.Popen

    def url(self, name: str) -> str:
        return f"s3://{self.bucket}/{name}"

    def storage_options(self, endpoint: str | None = None) -> dict:
        """Options as xarray/fsspec take them (what ``store.storage_options`` holds)."""
        return {
            "key": self.key,
            "secret": self.secret,
            "client_kwargs": {"endpoint_url": endpoint or self.endpoint, "region_name": "us-east-1"},
        }


def _moto_server() -> str:
    found = Path(sys.executable).with_name("moto_server")
    return str(found) if found.exists() else (shutil.which("moto_server") or "moto_server")


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    import boto3

    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "4", "MOTO_PORT": str(port)}
    with open(log, "w") as out:
        process = subprocess.Popen(
            [_moto_server(), "-H", "127.0.0.1", "-p", str(port)], stdout=out, stderr=subprocess.STDOUT, env=env
        )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            try:
                urllib.request.urlopen(endpoint + "/moto-api/", timeout=1)
                break
            except OSError:
                if process.poll() is not None:
                    raise RuntimeError(f"moto_server exited: {log.read_text()[-2000:]}") from None
                time.sleep(0.05)
        else:
            raise RuntimeError(f"moto_server did not answer on {endpoint}")
        iam = boto3.client(
            "iam",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id="bootstrap",
            aws_secret_access_key="bootstrap",
        )
        iam.create_user(UserName="pipeline")
        iam.put_user_policy(
            UserName="pipeline",
            PolicyName="all",
            PolicyDocument=json.dumps(
                {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
            ),
        )
        key = iam.create_access_key(UserName="pipeline")["AccessKey"]
        variables = {
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_ACCESS_KEY_ID": key["AccessKeyId"],
            "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"],
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
        }
        saved = {name: os.environ.get(name) for name in (*variables, "AWS_PROFILE", "AWS_SESSION_TOKEN")}
        os.environ.update(variables)
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
            os.environ.pop(name, None)
        s3 = boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id=key["AccessKeyId"],
            aws_secret_access_key=key["SecretAccessKey"],
        )
        s3.create_bucket(Bucket=BUCKET)
        try:
            yield S3Server(endpoint, port, key["AccessKeyId"], key["SecretAccessKey"], BUCKET, process)
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
    finally:
        process.kill()  # by its pid: the server this session started
        process.wait()


class Outage:
    """A TCP proxy to ``port``: ``stop()`` refuses and drops connections, ``start()`` serves again (same port)."""

    def __init__(self, target_port: int) -> None:
        self.target = target_port
        self.port = free_port()
        self._listener: socket.socket | None = None
        self._connections: list[socket.socket] = []
        self._lock = threading.Lock()
        self.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def stop(self) -> None:
        with self._lock:
            listener, self._listener = self._listener, None
            connections, self._connections = self._connections, []
        if listener is not None:
            try:
                listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() and refuses new connections at once
            except OSError:
                pass
            listener.close()
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            conn.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target))
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._listener is not listener:
                    client.close()
                    upstream.close()
                    return
                self._connections += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for conn in (source, sink):
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
