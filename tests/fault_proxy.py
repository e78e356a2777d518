"""An HTTP proxy in front of the test S3 server that answers some requests as a flaky S3 does.

``FaultProxy(target_port, rate=0.05, seed=0)`` forwards every request to the
server and, for a seeded random share ``rate`` of them (or for the requests a
``rule`` picks), answers instead with one of the faults real S3 produces:

- ``"503"``: ``503 SlowDown`` with S3's XML error body, request not forwarded;
- ``"500"``: ``500 InternalError``, request not forwarded;
- ``"403"``: ``403 AccessDenied``, request not forwarded;
- ``"reset"``: the connection reset before any answer, request not forwarded;
- ``"reset-after"``: the request forwarded (so it took effect), then the
  connection reset before the answer reaches the client;
- ``"delay"``: the answer held back ``delay_s`` seconds.

``rule(method, path, query, headers) -> action | None`` overrides the random
choice (``None``: forward). ``faults`` counts what was injected per action,
``requests`` counts every request seen. Started by the test, stopped by
``close()``; a daemon thread per connection.
"""

from __future__ import annotations

import http.client
import random
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

ACTIONS = ("503", "500", "reset", "reset-after", "delay")

_ERRORS = {
    "503": (503, "SlowDown", "Please reduce your request rate."),
    "500": (500, "InternalError", "We encountered an internal error. Please try again."),
    "403": (403, "AccessDenied", "Access Denied"),  # what prefix_proxy.PrefixProxy answers outside its prefix
}

Rule = Callable[[str, str, str, dict[str, str]], "str | None"]


class FaultProxy:
    """A fault-injecting HTTP proxy to ``127.0.0.1:target_port``; ``endpoint`` is its URL."""

    def __init__(
        self,
        target_port: int,
        *,
        rate: float = 0.0,
        seed: int = 0,
        actions: tuple[str, ...] = ACTIONS,
        rule: Rule | None = None,
        delay_s: float = 1.0,
    ) -> None:
        self.target_port = target_port
        self.rate, self.actions, self.rule, self.delay_s = rate, actions, rule, delay_s
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self.faults: Counter[str] = Counter()
        self.requests: Counter[str] = Counter()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def _any(self) -> None:
                proxy._handle(self)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _any

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request, client_address) -> None:
                pass  # a connection the proxy reset on purpose

        self._server = Server(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _choose(self, method: str, path: str, query: str, headers: dict[str, str]) -> str | None:
        with self._lock:
            self.requests[method] += 1
            if self.rule is not None:
                action = self.rule(method, path, query, headers)
            elif self.rate and self._random.random() < self.rate:
                action = self._random.choice(self.actions)
            else:
                action = None
            if action is not None:
                self.faults[action] += 1
            return action

    def _decide(self, handler: BaseHTTPRequestHandler, body: bytes) -> str | None:
        """The action for this request (None: forward it); subclasses decide otherwise (``PrefixProxy``)."""
        parts = urlsplit(handler.path)
        headers = {k.lower(): v for k, v in handler.headers.items()}
        return self._choose(handler.command, parts.path, parts.query, headers)

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        body = _read_body(handler)
        parts = urlsplit(handler.path)
        action = self._decide(handler, body)
        if action in _ERRORS:
            status, code, message = _ERRORS[action]
            xml = (
                f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}</Message>'
                f"<Resource>{parts.path}</Resource><RequestId>fault-proxy</RequestId></Error>"
            ).encode()
            handler.send_response(status)
            handler.send_header("Content-Type", "application/xml")
            handler.send_header("Content-Length", str(len(xml)))
            handler.end_headers()
            if handler.command != "HEAD":
                handler.wfile.write(xml)
            return
        if action == "reset":
            _reset(handler)
            return
        upstream = http.client.HTTPConnection("127.0.0.1", self.target_port, timeout=60)
        try:
            forwarded = {k: v for k, v in handler.headers.items() if k.lower() != "transfer-encoding"}
            forwarded["Content-Length"] = str(len(body))
            upstream.request(handler.command, handler.path, body=body, headers=forwarded)
            answer = upstream.getresponse()
            data = answer.read()
            if action == "reset-after":
                _reset(handler)
                return
            if action == "delay":
                time.sleep(self.delay_s)
            handler.send_response(answer.status, answer.reason)
            for name, value in answer.getheaders():
                if name.lower() not in ("transfer-encoding", "content-length", "connection", "date", "server"):
                    handler.send_header(name, value)
            handler.send_header("Content-Length", str(len(data)))
            handler.end_headers()
            if handler.command != "HEAD":
                handler.wfile.write(data)
        finally:
            upstream.close()


def _read_body(handler: BaseHTTPRequestHandler) -> bytes:
    if handler.headers.get("Transfer-Encoding", "").lower() == "chunked":
        out = b""
        while True:
            size = int(handler.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while handler.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass
                return out
            out += handler.rfile.read(size)
            handler.rfile.readline()
    length = int(handler.headers.get("Content-Length") or 0)
    return handler.rfile.read(length) if length else b""


def _reset(handler: BaseHTTPRequestHandler) -> None:
    """Close the client's connection with a TCP RST (SO_LINGER 0), as a dropped connection looks."""
    sock: socket.socket = handler.connection
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    handler.close_connection = True
    try:
        sock.close()
    except OSError:
        pass
