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
import re
import threading
import urllib.parse
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler

from fault_proxy import FaultProxy


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


class PrefixProxy(FaultProxy):
    """``PrefixProxy(server_port, bucket, "team-a/")``: a proxy on ``endpoint`` until ``stop()``.

    A ``FaultProxy`` whose only fault is S3's ``403 AccessDenied``, answered to what ``allowed`` refuses.
    """

    def __init__(self, target_port: int, bucket: str, prefix: str) -> None:
        self.bucket, self.prefix = bucket, prefix
        self._seen = threading.Lock()
        super().__init__(target_port)
        self.requests: list[Request] = []  # type: ignore[assignment]  (every request, not FaultProxy's counts)

    def _decide(self, handler: BaseHTTPRequestHandler, body: bytes) -> str | None:
        ok = allowed(handler.command, handler.path, body, self.bucket, self.prefix)
        with self._seen:
            self.requests.append(Request(handler.command, handler.path, ok))
        return None if ok else "403"

    def refused(self) -> list[Request]:
        return [r for r in self.requests if not r.allowed]

    def stop(self) -> None:
        self.close()
