"""Where a run came from: host, user, command line, and the git state of the job file's repository.

``collect(job_file)`` is recorded in a new store's root attributes
(``provenance``); every submit appends a run (``runs``: started, finished,
host, command, shards run) before the store is finalized. Git is asked only
when it is installed and the job file sits in a work tree; otherwise ``git``
is None (so in a Ray job, whose copy of the working dir has no ``.git``:
``ray_job`` names the job and its working-dir package there, and ``job_file``
is the path within it). Manifest rows carry the job name, spec hash and each shard's start
and end, so that many stores can be grouped and ordered (docs/provenance.md).

Example:
    >>> sorted(collect("jobs/quickstart.yaml"))
    ['command', 'cwd', 'git', 'host', 'job_file', 'python', 'ray_job', 'user']
"""

from __future__ import annotations

import getpass
import os
import platform
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .storage import redact_command


def git_state(path: str | Path) -> dict[str, Any] | None:
    """``{"commit", "dirty", "root"}`` of the git work tree holding ``path``, or None (no git, no repository)."""
    folder = Path(path).resolve()
    folder = folder if folder.is_dir() else folder.parent

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if not commit:
        return None
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(status), "root": git("rev-parse", "--show-toplevel")}


def command_line() -> str:
    """This process's command as a user would type it again (``pipeline submit ...``), secrets redacted.

    ``--set store.storage_options=...`` values are replaced by ``<redacted>``
    (``storage.redact_command``): the command is recorded in the store and its
    lease, and printed by ``status``, where the options' keys must not appear.
    """
    argv = list(sys.argv) or ["python"]
    if os.path.basename(argv[0]) == "pipeline":
        argv[0] = "pipeline"
    elif argv[0].endswith(os.path.join("pipeline", "cli.py")):  # python -m pipeline.cli
        argv[:1] = ["python", "-m", "pipeline.cli"]
    elif argv[0].endswith(os.path.join("pipeline", "__main__.py")):  # python -m pipeline
        argv[:1] = ["python", "-m", "pipeline"]
    return shlex.join(redact_command(argv))


def collect(job_file: str | Path | None = None) -> dict[str, Any]:
    """Host, user, command line, working directory, Python and (for a job file in a git work tree) its commit."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = ""
    from .cluster import ray_job, ray_job_working_dir

    job_path = str(Path(job_file).resolve()) if job_file else None
    working_dir = ray_job_working_dir()
    if job_path and working_dir and Path(job_path).is_relative_to(working_dir):
        # Ray's temporary copy of --working-dir, deleted after the job: the path within it says more
        job_path = str(Path(job_path).relative_to(working_dir))
    return {
        "host": socket.gethostname(),
        "user": user,
        "command": command_line(),
        "cwd": os.getcwd(),
        "python": platform.python_version(),
        "job_file": job_path,
        "git": git_state(job_file) if job_file else None,
        "ray_job": ray_job(),
    }


def run_record(started: float, finished: float, shards_run: int, failed: int) -> dict[str, Any]:
    """One entry of a store's ``runs`` attribute (times as ISO 8601 UTC and as seconds since the epoch)."""

    def iso(t: float) -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))

    return {
        "started": iso(started),
        "finished": iso(finished),
        "started_epoch": round(started, 3),
        "finished_epoch": round(finished, 3),
        "host": socket.gethostname(),
        "command": command_line(),
        "shards_run": shards_run,
        "shards_failed": failed,
    }
