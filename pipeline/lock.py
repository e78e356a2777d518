"""One driver per store: a lock file beside the store while ``submit`` runs.

Two ``pipeline submit`` of the same job on one store would both compute every
pending shard and race on the store's creation and finalize. The driver
holds ``<store.path>.lock`` (beside the store, so it also covers creating
it) from before the store is opened until the store is finalized. A lock
left by a driver that died on this host (its process is gone) is taken over;
one held by a live process, or by another host, stops the second driver with
the fix in the message.

Example:
    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "s.zarr")
    >>> with store_lock(path):
    ...     os.path.exists(path + ".lock")
    True
    >>> os.path.exists(path + ".lock")
    False
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from .store import StoreError


def lock_path(store: str | Path) -> Path:
    store = Path(store)
    return store.with_name(store.name + ".lock")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _holder(file: Path) -> dict:
    try:
        return json.loads(file.read_text())
    except (OSError, ValueError):
        return {}


@contextlib.contextmanager
def store_lock(store: str | Path) -> Iterator[None]:
    """Hold the store's driver lock for the duration; raise ``StoreError`` if another driver holds it."""
    file = lock_path(store)
    file.parent.mkdir(parents=True, exist_ok=True)
    me = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    for _ in range(2):
        try:
            fd = os.open(file, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _holder(file)
            same_host = holder.get("host") == me["host"]
            if same_host and isinstance(holder.get("pid"), int) and not _alive(holder["pid"]):
                file.unlink(missing_ok=True)  # its driver died: take over
                continue
            who = (f"pid {holder.get('pid')} on {holder.get('host')}, since {holder.get('since')}" if holder
                   else "unknown holder")
            raise StoreError(
                f"store.path: another `pipeline submit` is running this store ({who}); wait for it to "
                f"finish and run the command again (it resumes), or, if that driver is gone, delete {file}"
            ) from None
        with os.fdopen(fd, "w") as handle:
            json.dump(me, handle)
        break
    try:
        yield
    finally:
        file.unlink(missing_ok=True)
