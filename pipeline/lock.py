"""One driver per store: a lock on ``<store.path>.lock`` while ``submit`` runs.

Two ``pipeline submit`` of the same job on one store would both compute every
pending shard and race on the store's creation and finalize. The driver
holds a POSIX lock (``fcntl.lockf``) on ``<store.path>.lock`` (beside the
store, so it also covers creating it) from before the store is opened until
it is finalized. The operating system releases the lock when the driver's
process ends, however it ends, so a driver killed with SIGKILL never blocks
the next one, and taking over is atomic. The file also names the holder
(host, pid, start time) for the message a second driver gets.

``driver.submit`` takes it once, before the executor starts, and holds it
to the finalize. Within one process the lock is re-entrant (a caller that
holds it may still call ``driver.submit``).

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
import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from .store import StoreError

_HELD: dict[str, int] = {}  # lock file -> nesting depth, in this process


def lock_path(store: str | Path) -> Path:
    store = Path(store)
    return store.with_name(store.name + ".lock")


def held_here(store: str | Path) -> bool:
    """True while this very process holds the store's driver lock (``store_lock``, nested or not)."""
    return str(lock_path(store).resolve()) in _HELD


def _holder(file: Path) -> tuple[str, str]:
    """(the holder's command, "pid ... on ..., since ...") from the lock file."""
    try:
        holder = json.loads(file.read_text())
        command = holder.get("command") or "pipeline submit"  # a lock written before it named its command
        return command, f"pid {holder['pid']} on {holder['host']}, since {holder['since']}"
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return "pipeline submit", "holder unknown"


def _acquire(file: Path) -> int:
    """An open descriptor of ``file`` holding its lock; raises ``StoreError`` if another process holds it."""
    while True:
        try:
            fd = os.open(file, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:  # a read-only folder or file system: the store cannot be written either
            raise StoreError(
                f"store.path: cannot write the store's lock {file} ({err.strerror or err}); a store is run or "
                "repaired only where its folder is writable: copy it to a writable folder, or make this one writable"
            ) from None
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            command, who = _holder(file)
            raise StoreError(
                f"store.path: another `{command}` is running this store ({who}); wait for it "
                "to finish and run the command again (it resumes). The lock ends with that process."
            ) from None
        try:
            same = os.fstat(fd).st_ino == os.stat(file).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)  # the holder removed the file as we locked it: lock the new one


@contextlib.contextmanager
def store_lock(store: str | Path, command: str = "pipeline submit") -> Iterator[None]:
    """Hold the store's driver lock for the duration; raise ``StoreError`` if another process holds it.

    ``command`` names the holder in the message another driver gets.

    A URL store (``s3://...``) has no POSIX lock: its driver holds a lease object instead (``lease.py``).
    """
    from .storage import is_remote

    if is_remote(store):
        from .lease import store_lease

        with store_lease(str(store), command):
            yield
        return
    file = lock_path(store)
    key = str(file.resolve())
    if key in _HELD:
        _HELD[key] += 1
        try:
            yield
        finally:
            _HELD[key] -= 1
        return
    file.parent.mkdir(parents=True, exist_ok=True)
    fd = _acquire(file)
    _HELD[key] = 1
    try:
        os.ftruncate(fd, 0)
        os.pwrite(
            fd,
            json.dumps(
                {
                    "command": command,
                    "host": socket.gethostname(),
                    "pid": os.getpid(),
                    "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                }
            ).encode(),
            0,
        )
        yield
    finally:
        del _HELD[key]
        with contextlib.suppress(FileNotFoundError):
            file.unlink()  # before unlocking: a waiting driver then locks a new file (see _acquire)
        os.close(fd)
