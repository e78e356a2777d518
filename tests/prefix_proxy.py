"""An HTTP proxy in front of the test S3 server that acts as credentials limited to one key prefix.

moto's server-mode IAM cannot evaluate the ``s3:prefix`` condition of a
ListBucket grant (a listing is allowed or refused for the whole bucket), so a
policy cannot express "list, read and write only under ``team-a/``". This
proxy enforces what AWS S3 would under the policy of docs/object-storage.md
("A user limited to a prefix"), forwarding the signed requests unchanged
(SigV4 signs the ``Host`` header, which is passed on as the client sent it)
and answering the rest with S3's own ``403 AccessDenied``:

- an object request (GET, HEAD, PUT, DELETE, POST of a multipart upload) on
  a key under the prefix: allowed;
- a listing of the bucket (``GET /bucket?list-type=2`` or v1) whose ``prefix``
  starts with the prefix: allowed;
- a multi-object delete (``POST /bucket?delete``) whose keys are all under
  the prefix: allowed (S3 authorises it as DeleteObject per key);
- anything else (another bucket, a listing of the top level or of another
  prefix, any other bucket-level call): refused.

Every request is recorded in ``requests`` as ``(method, path and query, allowed)``.
"""

from __future__ import annotations

import html
import http.client
import http.server
import re
import threading
import urllib.parse
from dataclasses import dataclass

from s3server import free_port

ACCESS_DENIED = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>AccessDenied</Code><Message>Access Denied</Message>'
    b"<RequestId>PREFIXPROXY</RequestId><HostId>prefix-proxy</HostId></Error>"
)
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "te", "upgrade"}


@dataclass(frozen=True)
class Request:
    method: str
    target: str
    allowed: bool


def allowed(method: str, target: str, body: bytes, bucket: str, prefix: str) -> bool:
    """What credentials limited to ``s3://bucket/prefix*`` may do (see the module's docstring).

    Example:
        >>> allowed("GET", "/b?list-type=2&prefix=team-a%2Frun.zarr%2F", b"", "b", "team-a/")
        True
        >>> allowed("GET", "/b?list-type=2&prefix=&delimiter=%2F", b"", "b", "team-a/")
        False
        >>> allowed("PUT", "/b/team-a/run.zarr.lease", b"", "b", "team-a/"), allowed("HEAD", "/b/x.zarr", b"", "b", "team-a/")
        (True, False)
    """
    parsed = urllib.parse.urlsplit(target)
    name, _, key = parsed.path.lstrip("/").partition("/")
    key = urllib.parse.unquote(key)
    query = urllib.parse.parse_qs(parsed.query, keep_blank_values=True)
    if name != bucket:
        return False
    if key:
        return key.startswith(prefix)
    if method == "GET" and set(query) <= {"list-type", "prefix", "delimiter", "max-keys", "continuation-token",
                                          "start-after", "marker", "encoding-type", "fetch-owner"}:  # fmt: skip
        return query.get("prefix", [""])[0].startswith(prefix)
    if method == "POST" and "delete" in query:
        keys = [html.unescape(k.decode()) for k in re.findall(rb"<Key>(.*?)</Key>", body, re.S)]
        return bool(keys) and all(k.startswith(prefix) for k in keys)
    return False


class PrefixProxy:
    """``PrefixProxy(server_port, bucket, "team-a/")``: a proxy on ``endpoint`` until ``stop()``."""

    def __init__(self, target_port: int, bucket: str, prefix: str) -> None:
        self.requests: list[Request] = []
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    data = b""
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                        chunk = self.rfile.read(size + 2)[:size]
                        if size == 0:
                            while self.rfile.readline().strip():  # trailers
                                pass
                            return data
                        data += chunk
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _handle(self) -> None:
                body = self._body()
                ok = allowed(self.command, self.path, body, bucket, prefix)
                proxy.requests.append(Request(self.command, self.path, ok))
                if not ok:
                    self.send_response(403)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(ACCESS_DENIED)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(ACCESS_DENIED)
                    return
                upstream = http.client.HTTPConnection("127.0.0.1", target_port, timeout=60)
                try:
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
                    if self.command not in ("GET", "HEAD", "DELETE") or body:
                        headers = {k: v for k, v in headers.items() if k.lower() != "content-length"}
                        headers["Content-Length"] = str(len(body))
                    upstream.request(self.command, self.path, body=body or None, headers=headers)
                    response = upstream.getresponse()
                    data = response.read()
                    self.send_response(response.status, response.reason)
                    for name, value in response.getheaders():
                        if name.lower() not in _HOP_BY_HOP and name.lower() != "content-length":
                            self.send_header(name, value)
                    length = response.getheader("Content-Length") if self.command == "HEAD" else str(len(data))
                    self.send_header("Content-Length", length or "0")
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(data)
                finally:
                    upstream.close()

            do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _handle

        self.port = free_port()
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def refused(self) -> list[Request]:
        return [r for r in self.requests if not r.allowed]

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
