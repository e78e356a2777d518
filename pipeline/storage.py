"""Where bytes live: plain paths, ``file://`` and object-storage URLs (``s3://``, ``gs://``, ``az://``, ``memory://``).

Every place a job names a path (``store.path``, ``inputs.path``, a sweep's
``path`` and ``profiles``, ``function.checkpoint``) accepts a URL. A plain path
(or ``file://``) keeps the local code paths of ``store.py`` and ``sources.py``
unchanged (POSIX renames, memory maps, ``fcntl`` locks); a URL goes through
one fsspec filesystem per scheme and options (``filesystem``), and the Zarr
arrays through zarr's obstore-based ``ObjectStore`` for ``s3://`` when obstore
is installed (~1.5x faster writes than s3fs, docs/object-storage.md), else
zarr's ``FsspecStore`` on that same filesystem (``zarr_store``).

Credentials come from the environment as each cloud's own tools read them
(``AWS_*`` variables and profiles, ``GOOGLE_APPLICATION_CREDENTIALS``,
``AZURE_STORAGE_*``), plus ``store.storage_options`` (a mapping passed to the
filesystem, like xarray's ``storage_options``), registered per URL prefix with
``set_options``. Options are never written to the store: ``redact`` replaces
their values in what the store records.

Transient errors (HTTP 5xx, throttling, timeouts, refused or dropped
connections) are retried with backoff by ``retry`` inside a shard, before the
shard itself fails and the executor retries it.

Example:
    >>> is_url("s3://bucket/x.zarr"), is_url("results/x.zarr"), is_url("C:/x")
    (True, False, False)
    >>> split("s3://bucket/a/b.zarr")
    ('s3', 'bucket/a/b.zarr')
    >>> local_path("file:///tmp/x.zarr")
    '/tmp/x.zarr'
    >>> join("memory://a", "b", "c.json")
    'memory://a/b/c.json'
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import json
import os
import re
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeGuard, TypeVar

if TYPE_CHECKING:
    from obstore.store import ClientConfig, RetryConfig

from .errors import BadInput

T = TypeVar("T")

# scheme -> (fsspec protocol, package that implements it, extra that installs it)
SCHEMES: dict[str, tuple[str, str | None, str | None]] = {
    "s3": ("s3", "s3fs", "s3"),
    "s3a": ("s3", "s3fs", "s3"),
    "gs": ("gcs", "gcsfs", "gcs"),
    "gcs": ("gcs", "gcsfs", "gcs"),
    "az": ("az", "adlfs", "azure"),
    "abfs": ("abfs", "adlfs", "azure"),
    "abfss": ("abfs", "adlfs", "azure"),
    "memory": ("memory", None, None),
}
_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://(.*)$")

# tries of one storage call before the error reaches the shard (PIPELINE_STORAGE_RETRIES overrides)
RETRY_ATTEMPTS = int(os.environ.get("PIPELINE_STORAGE_RETRIES", "5"))
RETRY_BASE_SECONDS = 0.5  # backoff 0.5, 1, 2, 4 s (with jitter)


class StorageError(BadInput, ValueError):
    """A URL whose scheme is unknown or whose package is missing (a bad-input error naming the key)."""


def is_url(path: Any) -> TypeGuard[str]:
    """True for ``scheme://...`` (any scheme, so an unknown one is reported rather than made a folder)."""
    return isinstance(path, str) and _URL.match(path) is not None


def is_remote(path: Any) -> TypeGuard[str]:
    """True for a URL that is not ``file://``: it goes through fsspec, not the local code paths."""
    return is_url(path) and split(path)[0] != "file"


def split(url: str) -> tuple[str, str]:
    """``(scheme, rest)`` of a URL, the scheme lower-cased."""
    match = _URL.match(url)
    if match is None:
        raise ValueError(f"not a URL: {url!r}")
    return match.group(1).lower(), match.group(2)


def local_path(path: str) -> str:
    """A ``file://`` URL as a plain path (other values unchanged)."""
    if is_url(path) and split(path)[0] == "file":
        rest = split(path)[1]
        return rest if rest.startswith("/") else "/" + rest
    return path


def join(url: str, *parts: str) -> str:
    """``url/part/part`` (one slash between)."""
    out = url.rstrip("/")
    for part in parts:
        out += "/" + part.strip("/")
    return out


def parent(url: str) -> str:
    scheme, rest = split(url)
    rest = rest.rstrip("/")
    return f"{scheme}://{rest.rsplit('/', 1)[0]}" if "/" in rest else f"{scheme}://"


def basename(url: str) -> str:
    return split(url)[1].rstrip("/").rsplit("/", 1)[-1]


def check_url(path: str, key: str) -> None:
    """Raise ``StorageError`` naming ``key`` unless the URL's scheme is known and its package installed."""
    if not is_url(path):
        return
    scheme, rest = split(path)
    if scheme == "file":
        return
    if scheme not in SCHEMES:
        known = ", ".join(f"{s}://" for s in ("s3", "gs", "az", "abfs", "memory", "file"))
        raise StorageError(f"{key}: {path} has the unknown scheme {scheme}://; use a plain path or one of {known}")
    _, package, extra = SCHEMES[scheme]
    if package is not None and importlib.util.find_spec(package) is None:
        raise StorageError(
            f"{key}: {path} needs the package {package}, which is not installed; "
            f"pip install 'pipeline[{extra}]' (or pip install {package})"
        )
    if scheme != "memory" and not rest.split("/", 1)[0]:
        raise StorageError(f"{key}: {path} names no bucket; write {scheme}://<bucket>/<path>")


# ------------------------------------------------------------- options


_OPTIONS: dict[str, dict[str, Any]] = {}  # URL prefix -> storage options, in this process


def set_options(url: str, options: dict[str, Any] | None) -> None:
    """Use ``options`` (``store.storage_options``) for ``url`` and everything below it, in this process."""
    if is_remote(url):
        _OPTIONS[url.rstrip("/")] = dict(options or {})


def is_under(url: str, prefix: str) -> bool:
    """True when ``url`` is ``prefix`` or below it (``prefix/...``), or beside it as ``prefix.lease`` and the like."""
    prefix = prefix.rstrip("/")
    return url == prefix or url.startswith(prefix + "/") or url.startswith(prefix + ".")


def options_for(url: str) -> dict[str, Any]:
    """The storage options registered for the longest prefix of ``url`` (``{}`` when none)."""
    best = ""
    for prefix in _OPTIONS:
        if is_under(url, prefix) and len(prefix) > len(best):
            best = prefix
    return dict(_OPTIONS.get(best, {}))


SECRET_WORDS = ("secret", "token", "password", "key", "credential", "sas", "session", "signature")


def redact(options: dict[str, Any] | None) -> dict[str, Any]:
    """``storage_options`` as recorded in a store: every value replaced, except a few harmless settings.

    Example:
        >>> redact({"key": "AKIA...", "secret": "s", "client_kwargs": {"endpoint_url": "http://h"}, "anon": False})
        {'key': '<redacted>', 'secret': '<redacted>', 'client_kwargs': '<redacted>', 'anon': False}
    """
    out = {}
    for name, value in (options or {}).items():
        keep = isinstance(value, bool) or (
            isinstance(value, (int, float)) and not any(w in name.lower() for w in SECRET_WORDS)
        )
        out[name] = value if keep else "<redacted>"
    return out


def redact_command(argv: list[str]) -> list[str]:
    """A command line as recorded (store, lease, ``status``): each ``--set`` of ``store.storage_options`` redacted.

    Example:
        >>> redact_command(["pipeline", "submit", "j.yaml", "--set", "store.storage_options={key: K, secret: S}"])
        ['pipeline', 'submit', 'j.yaml', '--set', 'store.storage_options=<redacted>']
        >>> redact_command(["pipeline", "submit", "--set=store.storage_options.secret=S", "--set", "inputs.n=8"])
        ['pipeline', 'submit', '--set=store.storage_options.secret=<redacted>', '--set', 'inputs.n=8']
        >>> redact_command(["--set", ".store..storage_options.key=K"])  # empty parts: the same key
        ['--set', '.store..storage_options.key=<redacted>']
    """
    out = []
    for arg in argv:
        prefix, body = ("--set=", arg[len("--set=") :]) if arg.startswith("--set=") else ("", arg)
        key, equals, value = body.partition("=")
        path = ".".join(part for part in key.strip().split(".") if part)  # as ``spec.parse_override`` reads it
        if equals and (path.startswith("store.storage_options") or (path == "store" and "storage_options" in value)):
            arg = f"{prefix}{key}=<redacted>"
        out.append(arg)
    return out


# ------------------------------------------------------------- filesystems


@functools.lru_cache(maxsize=32)
def _filesystem(protocol: str, frozen: str):
    import fsspec

    options = json.loads(frozen)
    if protocol == "s3":
        options.setdefault("config_kwargs", {}).setdefault("connect_timeout", 10)
        options["config_kwargs"].setdefault("read_timeout", 60)
        options["config_kwargs"].setdefault("retries", {"total_max_attempts": 1})  # ``retry`` is the one retry loop
    fs = fsspec.filesystem(protocol, **options)
    if protocol == "s3":
        fs.retries = 1  # s3fs's own loop (5 tries, sleeping up to 15 s) would multiply with ``retry``
    return fs


def filesystem(url: str, storage_options: dict[str, Any] | None = None):
    """``(fs, path)``: the fsspec filesystem of a URL (cached per options) and the path within it."""
    check_url(url, "path")
    scheme, rest = split(url)
    protocol = SCHEMES[scheme][0] if scheme in SCHEMES else scheme
    options = options_for(url) if storage_options is None else storage_options
    fs = _filesystem(protocol, json.dumps(options, sort_keys=True, default=str))
    return fs, (rest.rstrip("/") if protocol != "memory" else "/" + rest.strip("/"))


def fs_path(url: str) -> str:
    return filesystem(url)[1]


def zarr_store(url: str, *, read_only: bool = False):
    """The zarr store of ``url``: zarr's ``ObjectStore`` (obstore) for ``s3://``, else ``FsspecStore``.

    obstore wrote seed-000 chunks ~1.5x faster than s3fs against the local S3
    server (docs/object-storage.md); it is used when obstore is installed and the
    storage options are ones it understands (keys, endpoint, region,
    anonymous), else the fsspec filesystem that everything else uses.
    """
    from zarr.storage import FsspecStore

    scheme, rest = split(url)
    if SCHEMES.get(scheme, ("",))[0] == "s3":
        store = _obstore_s3(rest, options_for(url), read_only)
        if store is not None:
            return store
    fs, path = filesystem(url)
    if not getattr(fs, "async_impl", False):
        from fsspec.implementations.asyn_wrapper import AsyncFileSystemWrapper

        fs = AsyncFileSystemWrapper(fs, asynchronous=True)
    elif not getattr(fs, "asynchronous", False):
        fs = _async_copy(fs)
        if protocol_of(fs) == "s3":
            fs.retries = 1
    return FsspecStore(fs, path=path, read_only=read_only)


_OBSTORE_KEYS = {
    "key": "access_key_id",
    "secret": "secret_access_key",
    "token": "session_token",
    "endpoint_url": "endpoint",
    "region_name": "region",
}
ZARR_LAYER = "obstore"  # or "fsspec": which store zarr_store makes for s3:// (bench/store.py compares both)


def _obstore_s3(rest: str, options: dict[str, Any], read_only: bool):
    """zarr's ``ObjectStore`` over obstore's ``S3Store`` (None when obstore is missing or an option is not mapped)."""
    if ZARR_LAYER != "obstore" or importlib.util.find_spec("obstore") is None:
        return None
    config: dict[str, Any] = {}
    flat = dict(options)
    flat.update(flat.pop("client_kwargs", {}) or {})
    for name, value in flat.items():
        if name in _OBSTORE_KEYS:
            config[_OBSTORE_KEYS[name]] = value
        elif name == "anon":
            config["skip_signature"] = bool(value)
        else:
            return None
    from datetime import timedelta

    from obstore.store import S3Store
    from zarr.storage import ObjectStore

    bucket, _, prefix = rest.strip("/").partition("/")
    endpoint = config.get("endpoint") or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    client: ClientConfig = {"allow_http": True} if endpoint and endpoint.startswith("http://") else {}
    client["connect_timeout"] = "10s"
    retry_config: RetryConfig = {
        "max_retries": RETRY_ATTEMPTS - 1,
        "backoff": {
            "base": 2,
            "init_backoff": timedelta(seconds=RETRY_BASE_SECONDS),
            "max_backoff": timedelta(seconds=5),
        },
        "retry_timeout": timedelta(seconds=30),
    }
    kwargs = dict(config)
    if endpoint:
        kwargs["endpoint"] = endpoint
    inner = S3Store(bucket, prefix=prefix or None, client_options=client, retry_config=retry_config, **kwargs)
    return ObjectStore(inner, read_only=read_only)


def zarr_target(path: str | os.PathLike[str]):
    """What zarr opens for a store: the local path as a string, or ``zarr_store`` of a URL."""
    return zarr_store(str(path)) if is_remote(path) else str(path)


def _async_copy(fs):
    """The asynchronous twin of a cached filesystem (zarr's FsspecStore wants ``asynchronous=True``)."""
    key = id(fs)
    twin = _ASYNC.get(key)
    if twin is None:
        kwargs = dict(fs.storage_options)
        kwargs["asynchronous"] = True
        kwargs.pop("skip_instance_cache", None)
        twin = type(fs)(**kwargs, skip_instance_cache=True)
        _ASYNC[key] = twin
    return twin


_ASYNC: dict[int, Any] = {}


# ------------------------------------------------------------- object I/O (retried)


def read_bytes(url: str) -> bytes:
    """The whole object; never answered from a listing cache (s3fs says a newer object is missing)."""
    fs, path = _fresh(url)
    return retry(fs.cat_file, path)


def write_bytes(url: str, data: bytes) -> None:
    """One PUT: on object storage an object appears whole or not at all (the commit markers rely on it)."""
    fs, path = filesystem(url)
    retry(fs.pipe_file, path, data)


def _fresh(url: str):
    """``(fs, path)`` with fsspec's listing cache for ``path`` dropped: s3fs answers ``exists`` and
    ``isfile`` from an earlier listing of the folder, which another process (or a removal) made stale."""
    fs, path = filesystem(url)
    fs.invalidate_cache(path)
    return fs, path


def exists(url: str) -> bool:
    fs, path = _fresh(url)
    return bool(retry(fs.exists, path))


def isfile(url: str) -> bool:
    """True when ``url`` is an object (a file); False when nothing is there or it is a prefix (a folder).

    Not fsspec's ``isfile``, which says False for any error: a refused
    credential or an unreachable endpoint raises here, rather than passing
    for a missing object.
    """
    fs, path = _fresh(url)
    try:
        return retry(fs.info, path).get("type") == "file"
    except FileNotFoundError:
        return False


def listdir(url: str) -> list[str]:
    """Names (not paths) directly under ``url``; ``[]`` when there is nothing."""
    fs, path = filesystem(url)
    try:
        entries = (
            retry(fs.ls, path, detail=False, refresh=True) if protocol_of(fs) != "memory" else fs.ls(path, detail=False)
        )
    except FileNotFoundError:
        return []
    return sorted({e.rstrip("/").rsplit("/", 1)[-1] for e in entries if e.rstrip("/") != path.rstrip("/")})


def remove_tree(url: str) -> None:
    fs, path = filesystem(url)
    try:
        retry(fs.rm, path, recursive=True)
    except FileNotFoundError:
        pass
    fs.invalidate_cache()


def remove(url: str) -> None:
    fs, path = filesystem(url)
    try:
        retry(fs.rm_file, path)
    except FileNotFoundError:
        pass


def info(url: str) -> dict[str, Any]:
    fs, path = filesystem(url)
    return retry(fs.info, path)


def open_file(url: str, mode: str = "rb"):
    fs, path = filesystem(url)
    return fs.open(path, mode)


def protocol_of(fs) -> str:
    protocol = fs.protocol
    return protocol[0] if isinstance(protocol, (tuple, list)) else protocol


def check_access(url: str, key: str, options: str | None = "store.storage_options") -> None:
    """Raise ``StorageError`` naming ``key`` when the bucket is missing, unreachable or the credentials are refused.

    A cheap round trip before any work starts; nothing is written. On
    ``s3://`` it lists at most one object under the URL's own key prefix
    (``ListObjectsV2`` with ``Prefix=<key>/``, ``MaxKeys=1``), so credentials
    allowed only under a prefix (docs/object-storage.md) pass: S3 answers
    ``NoSuchBucket`` for a missing bucket and an empty listing for a prefix
    that holds nothing (s3fs's ``ls`` says FileNotFoundError for both). Other
    schemes list the bucket. ``options`` names where else than the environment
    the storage options can come from, for the messages (None: only the
    environment).
    """
    alternative = f" or {options}" if options else ""
    check_url(url, key)
    scheme, rest = split(url)
    if scheme == "memory":
        return
    fs, _ = filesystem(url)
    bucket, _, prefix = rest.strip("/").partition("/")
    listed = f"{scheme}://{bucket}/{prefix}/" if prefix else f"{scheme}://{bucket}"
    try:
        if protocol_of(fs) == "s3":
            retry(fs.call_s3, "list_objects_v2", Bucket=bucket, Prefix=f"{prefix}/" if prefix else "", MaxKeys=1)
        else:
            listed = f"{scheme}://{bucket}"
            retry(fs.ls, bucket, detail=False, refresh=True)
    except FileNotFoundError:
        raise StorageError(
            f"{key}: the bucket {bucket!r} of {url} does not exist (or these credentials cannot see it); "
            f"create it first (e.g. aws s3 mb {scheme}://{bucket}) or fix the URL"
        ) from None
    except PermissionError as err:
        raise StorageError(
            f"{key}: access to {listed} was refused ({_first_line(err)}); check the credentials "
            f"({CREDENTIAL_VARIABLES}){alternative}; a job needs to list, read and write under {listed}"
        ) from None
    except Exception as err:
        if is_missing_credentials(err):
            raise StorageError(
                f"{key}: no credentials were found for {url} ({_first_line(err)}); give them in the environment "
                f"({CREDENTIAL_VARIABLES}){alternative}, or run where an instance role provides them"
            ) from None
        if is_transient(err):
            raise StorageError(
                f"{key}: cannot reach the storage of {url} ({_first_line(err)}); check the endpoint "
                f"(AWS_ENDPOINT_URL{alternative}) and the network"
            ) from None
        raise StorageError(f"{key}: cannot open {url} ({_first_line(err)})") from None


CREDENTIAL_VARIABLES = (
    "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE, GOOGLE_APPLICATION_CREDENTIALS, AZURE_STORAGE_*"
)


def says_no_credentials(text: str | None) -> bool:
    """An error's text (``Type: message``, or a shard's traceback) is botocore's: no keys at all, not wrong ones.

    Example:
        >>> says_no_credentials("botocore.exceptions.NoCredentialsError: ..."), says_no_credentials("Forbidden")
        (True, False)
    """
    text = text or ""
    return any(name in text for name in ("NoCredentialsError", "PartialCredentialsError")) or (
        "unable to locate credentials" in text.lower()
    )


def is_missing_credentials(err: BaseException) -> bool:
    """``says_no_credentials`` of ``err`` or of anything in its chain.

    Example:
        >>> is_missing_credentials(RuntimeError("Unable to locate credentials")), is_missing_credentials(OSError())
        (True, False)
    """
    link: BaseException | None = err
    for _ in range(8):
        if link is None:
            return False
        if says_no_credentials(f"{type(link).__name__}: {link}"):
            return True
        link = link.__cause__ or link.__context__
    return False


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return (text[0] if text else type(err).__name__)[:300]


# ------------------------------------------------------------- retries

_TRANSIENT_NAMES = (
    "EndpointConnectionError",
    "ConnectTimeoutError",
    "ReadTimeoutError",
    "ConnectionClosedError",
    "ClientConnectorError",
    "ClientConnectionError",
    "ServerDisconnectedError",
    "ClientOSError",
    "ServerTimeoutError",
    "IncompleteReadError",
    "ResponseStreamingError",
    "ProxyConnectionError",
)
_TRANSIENT_WORDS = (
    "slowdown",
    "slow down",
    "throttl",
    "toomanyrequests",
    "too many requests",
    "internalerror",
    "internal server error",  # a 500 to a HEAD: no body, so botocore has only the status ("(500) ... Internal Server Error")
    "bad gateway",
    "gateway timeout",
    "serviceunavailable",
    "service unavailable",
    "requesttimeout",
    "connection reset",
    "timed out",
)


# an HTTP status as the clients write it (botocore: "An error occurred (503) when calling ..."; obstore: "status
# code: 503"), not any digits ("float16 holds |x| <= 65504" is no 504, nor is "shard 500" a 500)
_TRANSIENT_STATUS = re.compile(r"\((?:500|502|503|504)\)|status(?: code)?:? ?(?:500|502|503|504)(?!\d)")


def is_transient(err: BaseException) -> bool:
    """An error worth trying again: HTTP 5xx, throttling, timeouts, refused or dropped connections.

    Example:
        >>> is_transient(ConnectionRefusedError(111, "refused")), is_transient(FileNotFoundError("x"))
        (True, False)
        >>> is_transient(OSError("An error occurred (503) when calling PutObject")), is_transient(ValueError("|x| <= 65504"))
        (True, False)
    """
    seen = 0
    link: BaseException | None = err
    while link is not None and seen < 8:
        marked = getattr(link, TRANSIENT_MARK, None)
        if marked is not None:  # said where its causes were at hand (``mark_transient``)
            return bool(marked)
        if isinstance(link, (FileNotFoundError, PermissionError, FileExistsError, IsADirectoryError)):
            return False
        if isinstance(link, (ConnectionError, TimeoutError)) or type(link).__name__ in _TRANSIENT_NAMES:
            return True
        text = str(link).lower()
        if any(word in text for word in _TRANSIENT_WORDS) or _TRANSIENT_STATUS.search(text):
            return True
        link = link.__cause__ or link.__context__
        seen += 1
    return False


TRANSIENT_MARK = "pipeline_transient"


def mark_transient(err: BaseException) -> None:
    """Record on ``err`` whether it ``is_transient``, so that a copy without its causes still says so.

    A worker's error reaches the driver through Ray's pickle without ``__cause__`` / ``__context__``: s3fs's
    ``OSError(EBUSY, "Please reduce your request rate.")`` has lost the ``SlowDown`` it came from. An
    attribute travels with the copy.

        >>> err = OSError(16, "Please reduce your request rate.")
        >>> err.__cause__ = RuntimeError("SlowDown"); mark_transient(err); err.__cause__ = None; is_transient(err)
        True
    """
    with contextlib.suppress(AttributeError, TypeError):  # an exception type that takes no attributes
        setattr(err, TRANSIENT_MARK, is_transient(err))


def retry_zarr(store: Any, call: Callable[..., T], *args, **kwargs) -> T:
    """``call`` through Zarr on ``store``, retried by ``retry``, unless obstore retries its requests itself.

    zarr's ``ObjectStore`` (obstore) already tries each request ``RETRY_ATTEMPTS``
    times (``_obstore_s3``); a second loop around it would multiply the tries
    (25 per call, ~30 s, before a shard's attempt fails on a bucket that
    answers only errors).
    """
    from zarr.storage import ObjectStore

    return retry(call, *args, attempts=1 if isinstance(store, ObjectStore) else None, **kwargs)


_jitter = threading.local()


def retry(call: Callable[..., T], *args, attempts: int | None = None, **kwargs) -> T:
    """``call(*args, **kwargs)``, tried again with exponential backoff while it raises a transient error."""
    import random

    attempts = RETRY_ATTEMPTS if attempts is None else attempts
    for attempt in range(attempts):
        try:
            return call(*args, **kwargs)
        except Exception as err:
            if attempt == attempts - 1 or not is_transient(err):
                raise
            time.sleep(RETRY_BASE_SECONDS * 2**attempt * (0.75 + 0.5 * random.random()))
    raise AssertionError("unreachable")
