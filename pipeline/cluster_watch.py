"""Noticing that the driver lost its Ray cluster: a TCP probe of the head, on a clock.

When the head goes (killed, its machine gone, the network cut), Ray's driver
does not say so: ``ray.wait`` blocks, and Ray's core worker retries the GCS
for a minute before it kills the process without a word a user could act on.
``ClusterWatch`` probes the head's GCS port (a TCP connect every
``PROBE_INTERVAL_S``) in a small daemon thread, and ``check()`` raises
``ClusterLost`` once the probe has failed for ``limit_s`` seconds
(``$PIPELINE_CLUSTER_LOST_S``, default 10). The runner also calls ``probe()``
when Ray reports a system error, to tell a lost head from a lost worker.
Stdlib only.

Example:
    >>> watch = ClusterWatch("127.0.0.1:1", limit_s=60)   # nothing listens on port 1
    >>> watch.probe()                                      # refused
    False
    >>> watch.check()                                      # not silent for 60 s yet: no error
"""

from __future__ import annotations

import os
import socket
import threading
import time

from .errors import ClusterLost

LOST_ENV = "PIPELINE_CLUSTER_LOST_S"
DEFAULT_LOST_S = 10.0
PROBE_INTERVAL_S = 1.0


def lost_after_s() -> float:
    """Seconds without an answer from the cluster after which the driver gives up (``$PIPELINE_CLUSTER_LOST_S``)."""
    text = os.environ.get(LOST_ENV, "")
    try:
        value = float(text) if text else DEFAULT_LOST_S
    except ValueError:
        value = DEFAULT_LOST_S
    return value if value > 0 else DEFAULT_LOST_S


def host_port(address: str) -> tuple[str, int] | None:
    """(host, port) of ``HOST:PORT`` or ``ray://HOST:PORT``, else None (nothing to probe).

    Example:
        >>> host_port("ray://10.0.0.1:10001"), host_port("[::1]:6379"), host_port("auto")
        (('10.0.0.1', 10001), ('::1', 6379), None)
    """
    rest = address.strip()
    if rest.startswith("ray://"):
        rest = rest[len("ray://") :].rstrip("/")
    host, colon, port = rest.rpartition(":")
    host = host.strip("[]")
    if not colon or not host or not port.isdigit() or "://" in host:
        return None
    return host, int(port)


class ClusterWatch:
    """Whether the cluster at ``address`` still answers; ``check()`` raises ``ClusterLost`` once it has not for long.

    Use as a context manager (the probe thread runs inside it). An address
    that is not HOST:PORT (``local``) is not probed and never lost.
    """

    def __init__(self, address: str, limit_s: float | None = None, interval_s: float = PROBE_INTERVAL_S) -> None:
        self.address = address
        self.limit_s = lost_after_s() if limit_s is None else limit_s
        self.interval_s = interval_s
        self._target = host_port(address)
        self._lock = threading.Lock()
        self._last_answer = time.monotonic()  # the probe's last connect
        self._probe_failing = False
        self._reason = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> ClusterWatch:
        if self._target is not None:
            self._thread = threading.Thread(target=self._probe_loop, name="pipeline-cluster-watch", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()

    def _probe_loop(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            self.probe()
            self._stop.wait(max(0.0, self.interval_s - (time.monotonic() - started)))

    def probe(self) -> bool:
        """Connect to the head's port once now: whether it answered (True when there is nothing to probe)."""
        if self._target is None:
            return True
        try:
            with socket.create_connection(self._target, timeout=self.interval_s):
                pass
        except OSError as err:
            with self._lock:
                self._probe_failing = True
                self._reason = reason_of(err)
            return False
        with self._lock:
            self._probe_failing = False
            self._last_answer = time.monotonic()
        return True

    def check(self) -> None:
        """Raise ``ClusterLost`` when the cluster has not answered for ``limit_s`` seconds."""
        with self._lock:
            failing = self._probe_failing
            silent = time.monotonic() - self._last_answer
            reason = self._reason
        if failing and silent >= self.limit_s:
            raise ClusterLost(self.address, f"no answer for {silent:.0f} s: {reason}")


def reason_of(err: BaseException) -> str:
    """A short reason: the OS's words for a refused connection, else the error's first line."""
    if isinstance(err, socket.timeout):
        return "timed out"
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    text = (str(err).strip().splitlines() or [""])[0][:200]
    return f"{type(err).__name__}: {text}" if text else type(err).__name__
