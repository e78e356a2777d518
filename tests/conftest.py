"""Shared fixtures: one real local Ray for the whole test run, started lazily."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")


@pytest.fixture(scope="session")
def ray_cluster():
    """A local Ray of our own with 2 CPUs, shared by every test that asks for it.

    ``address="local"`` starts a new Ray even when another one runs on the host
    (or ``RAY_ADDRESS`` / a stale ``/tmp/ray/ray_current_cluster`` points at one).
    """
    import ray

    from pipeline.runner import start_local_ray

    if not ray.is_initialized():
        start_local_ray(num_cpus=2, log_to_driver=False)  # address="local", loopback only
    yield ray
    ray.shutdown()


@pytest.fixture(params=["inline", "ray"])
def executor(request):
    """Each executor in turn: the same job must give the same store under both."""
    from pipeline.runner import InlineExecutor, RayExecutor

    if request.param == "ray":
        request.getfixturevalue("ray_cluster")
        return RayExecutor()
    return InlineExecutor()


@pytest.fixture(scope="module")
def one_torch_thread():
    """Run a module's tests with one torch thread (solver timings and results stable on a shared CPU)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def lock_holder():
    """``hold(store, command)`` starts another process that holds the store's driver lock as ``command``; it is killed afterwards."""
    import subprocess
    import sys
    from pathlib import Path

    started = []

    def hold(store, command: str = "pipeline submit") -> subprocess.Popen:
        process = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import time; from pipeline.lock import store_lock\n"
                f"with store_lock({str(store)!r}, {command!r}):\n    print('locked', flush=True); time.sleep(60)",
            ],
            stdout=subprocess.PIPE,
            text=True,
            cwd=str(Path(__file__).resolve().parent.parent),
        )
        started.append(process)
        assert process.stdout.readline().strip() == "locked"
        return process

    yield hold
    for process in started:
        process.kill()  # SIGKILL: no clean-up of its own; the operating system drops its lock
        process.wait()


from s3server import s3_server  # noqa: E402,F401  (a real S3 server, started only by the tests that ask)
