"""One driver per store on object storage: a lease object ``<store.path>.lease`` beside the store.

A bucket has no POSIX locks, so a driver of a URL store takes a *lease*: it
creates the object ``<store.path>.lease`` with a conditional put (S3
``If-None-Match: *``, which s3fs sends for ``mode="create"``; GCS and Azure
have the same precondition), so of two drivers starting together exactly one
creates it. The lease names its holder and an expiry ``TTL_SECONDS`` ahead; a
background thread renews it every ``RENEW_SECONDS`` while the driver runs and
deletes it when the driver ends. A driver that dies (SIGKILL, a lost node)
stops renewing, so its lease expires and the next driver takes it over; on
the same host a lease whose process is gone is taken over at once.

Limits (docs/object-storage.md): a driver killed without cleanup blocks the store for
up to ``TTL_SECONDS``; takeover of an expired lease is delete-then-create,
so it is only as exclusive as the conditional create; expiry is judged by the
clocks of the hosts (keep them in NTP sync); a driver that cannot renew for a
whole TTL (a network partition) may be overtaken while it still runs. A
create retried after a lost answer (``storage.retry``) that finds the lease
holding its own token has taken it. On a
filesystem whose ``pipe_file`` lacks ``mode="create"`` the create is a plain
check-then-put (``memory://`` has it: its create is exclusive too).

Example:
    >>> with store_lease("memory://doc/s.zarr"):
    ...     from pipeline import storage
    ...     storage.exists("memory://doc/s.zarr.lease")
    True
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator

from . import storage
from .store import StoreError

# how long a lease lasts unless renewed (PIPELINE_LEASE_TTL_S shortens it: tests see a lost driver in seconds)
TTL_SECONDS = float(os.environ.get("PIPELINE_LEASE_TTL_S", "60"))
RENEW_SECONDS = TTL_SECONDS / 4  # three renewals may fail before the lease expires

_HELD: dict[str, int] = {}  # lease URL -> nesting depth, in this process


def lease_url(store: str) -> str:
    return store.rstrip("/") + ".lease"


def _record(token: str, command: str) -> bytes:
    return json.dumps(
        {
            "command": command,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "token": token,
            "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "expires": time.time() + TTL_SECONDS,
        }
    ).encode()


def _read(url: str) -> dict | None:
    try:
        return json.loads(storage.read_bytes(url))
    except FileNotFoundError:
        return None
    except ValueError:
        return {}


def _dead_here(held: dict) -> bool:
    """True when the holder ran on this host and its process is gone (taken over at once, not after the TTL)."""
    pid = held.get("pid")
    if held.get("host") != socket.gethostname() or not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False


def _alive(held: dict) -> bool:
    """A lease that nobody may take over: its expiry is ahead and its holder is not known to be gone."""
    expires = held.get("expires", 0)
    return isinstance(expires, (int, float)) and expires > time.time() and not _dead_here(held)


def holder(store: str) -> dict | None:
    """Who holds the store's lease now: its record (host, pid, since, expires), or None when nobody does.

    Nobody holds an expired lease, nor one of a process on this host that is
    gone: the leases ``acquire`` takes over (``pipeline status`` calls their
    driver *stale*).
    """
    held = _read(lease_url(store))
    return held if held and _alive(held) else None


def _create(url: str, data: bytes) -> bool:
    """Create ``url`` only if it does not exist (a conditional put where the backend has one)."""
    fs, path = storage.filesystem(url)
    try:
        storage.retry(fs.pipe_file, path, data, mode="create")
        return True
    except FileExistsError:
        return False
    except TypeError:  # a filesystem without mode="create": check, then put
        if fs.exists(path):
            return False
        fs.pipe_file(path, data)
        return True


def acquire(store: str, command: str = "pipeline submit") -> str:
    """Take the store's lease for ``command``; returns its token. Raises ``StoreError`` while another live driver holds it."""
    url = lease_url(store)
    token = uuid.uuid4().hex
    for _ in range(3):
        if _create(url, _record(token, command)):
            held = _read(url)
            if held and held.get("token") == token:
                return token
            continue
        held = _read(url)
        if held is None:
            continue  # released meanwhile: try again
        if held.get("token") == token:
            return token  # our create took effect but its answer was lost; the retry's refusal is our own lease
        if _alive(held):
            raise StoreError(
                f"store.path: another `{held.get('command') or 'pipeline submit'}` is running this store (pid {held.get('pid')} on "
                f"{held.get('host')}, since {held.get('since')}; its lease {url} is renewed every "
                f"{RENEW_SECONDS:.0f} s); wait for it to finish and run the command again (it resumes). "
                f"A driver that died loses the lease within {TTL_SECONDS:.0f} s."
            )
        storage.remove(url)  # expired: the holder died; take it over (the create above decides who wins)
    raise StoreError(f"store.path: could not take the lease {url} (other drivers kept taking it); try again")


def release(store: str, token: str) -> None:
    url = lease_url(store)
    with contextlib.suppress(Exception):
        held = _read(url)
        if held and held.get("token") == token:
            storage.remove(url)


class _Renewer(threading.Thread):
    def __init__(self, store: str, token: str, command: str) -> None:
        super().__init__(name="pipeline-lease", daemon=True)
        self.store, self.token, self.command = store, token, command
        self.stop = threading.Event()

    def run(self) -> None:
        url = lease_url(self.store)
        while not self.stop.wait(RENEW_SECONDS):
            with contextlib.suppress(Exception):  # a missed renewal is retried at the next tick
                held = _read(url)
                if held is not None and held.get("token") not in (None, self.token):
                    return  # overtaken (we were partitioned past the TTL): stop writing
                storage.write_bytes(url, _record(self.token, self.command))


@contextlib.contextmanager
def store_lease(store: str, command: str = "pipeline submit") -> Iterator[None]:
    """Hold the store's lease (re-entrant within a process), renewed in the background, released at the end.

    ``command`` names the holder in the message another driver gets.
    """
    url = lease_url(store)
    if url in _HELD:
        _HELD[url] += 1
        try:
            yield
        finally:
            _HELD[url] -= 1
        return
    token = acquire(store, command)
    _HELD[url] = 1
    renewer = _Renewer(store, token, command)
    renewer.start()
    try:
        yield
    finally:
        del _HELD[url]
        renewer.stop.set()
        renewer.join(timeout=5)
        release(store, token)
