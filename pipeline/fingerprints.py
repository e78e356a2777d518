"""Fingerprints of the files a job reads, so that a resume notices when one changed.

The spec hash covers file *paths*; a checkpoint replaced by other weights, an
edited function module or a rewritten input file keeps its path. The driver
records ``fingerprints(spec)`` in the store's root attributes (``files``) when
it creates the store and compares them on every resume (``changed_files``).

A file's fingerprint is its size and mtime, plus a SHA-256 of its bytes when
it is at most ``HASH_LIMIT`` (checkpoints, module sources, small tables): a
small file that was only touched or copied still matches, a big input file is
never read whole. A directory (a Zarr array) is fingerprinted by the listing of
its files (names, sizes, mtimes). Nothing here imports torch, Ray or Zarr.

Example:
    >>> fingerprint("/no/such/file")
    {'missing': True}
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from .kinds import CODE_KEYS

HASH_LIMIT = 64 * 2**20  # bytes: files up to this size are hashed whole


def fingerprint(path: str | Path) -> dict[str, Any]:
    """Size, mtime and (for a small file) SHA-256 of a file, or a listing digest of a directory.

    An object in a bucket (a URL) is fingerprinted by what the storage says
    of it without reading it: size and ETag (or checksum), and for a prefix
    (a Zarr array) the listing of its objects' names, sizes and ETags.
    """
    from . import storage

    if storage.is_remote(str(path)):
        return _remote(str(path))
    path = Path(path)
    try:
        if path.is_dir():
            return _directory(path)
        stat = path.stat()
    except FileNotFoundError:
        return {"missing": True}
    found: dict[str, Any] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    if stat.st_size <= HASH_LIMIT:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(2**20), b""):
                digest.update(block)
        found["sha256"] = digest.hexdigest()
    return found


def _remote(url: str) -> dict[str, Any]:
    from . import storage

    fs, path = storage.filesystem(url)
    try:
        entry = storage.retry(fs.info, path)
    except FileNotFoundError:
        return {"missing": True}
    if entry.get("type") == "directory":
        digest = hashlib.sha256()
        files = size = 0
        for name, item in sorted(storage.retry(fs.find, path, detail=True).items()):
            tag = item.get("ETag") or item.get("etag") or item.get("md5Hash") or item.get("mtime") or ""
            digest.update(f"{name[len(path) :]}\0{item.get('size')}\0{str(tag).strip(chr(34))}\n".encode())
            files += 1
            size += int(item.get("size") or 0)
        return {"files": files, "size": size, "listing": digest.hexdigest()}
    found: dict[str, Any] = {"size": int(entry.get("size") or 0)}
    tag = entry.get("ETag") or entry.get("etag") or entry.get("md5Hash") or entry.get("checksum")
    if tag:
        found["etag"] = str(tag).strip('"')
    return found


def _directory(path: Path) -> dict[str, Any]:
    digest = hashlib.sha256()
    files = size = 0
    for root, dirs, names in os.walk(path):
        dirs.sort()
        for name in sorted(names):
            stat = os.stat(os.path.join(root, name))
            rel = os.path.relpath(os.path.join(root, name), path)
            digest.update(f"{rel}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
            files += 1
            size += stat.st_size
    return {"files": files, "size": size, "listing": digest.hexdigest()}


def job_files(spec) -> dict[str, str]:
    """The files a job reads, by the job-file key that names them (module sources under their target's key).

    Each kind knows its own files (``job_files`` of its module in ``pipeline.kinds``).
    """
    from .kinds import kind_of

    return kind_of(spec).job_files(spec)


def input_path(source) -> str:
    """The path an input source (``inputs``, a sweep's ``profiles``) reads.

    A Zarr input is read from one array: other files of its store (a manifest
    rewritten by a resume of that job) do not change what the job reads.
    """
    if source.kind == "zarr":
        from .storage import is_remote, join

        return join(source.path, source.array) if is_remote(source.path) else str(Path(source.path) / source.array)
    return source.path


def module_source(target: str, python_path) -> str | None:
    """The source file of the module of ``package.module:attr`` (already imported by ``prepare``), if any."""
    from .imports import module_file

    return module_file(target.split(":", 1)[0], python_path) or None


def fingerprints(spec) -> dict[str, dict[str, Any]]:
    """``{key: {"path": ..., fingerprint...}}`` of every file the job reads (recorded in the store)."""
    return {key: {"path": path, **fingerprint(path)} for key, path in job_files(spec).items()}


def same(recorded: dict[str, Any], now: dict[str, Any]) -> bool:
    """Whether a file still matches its recorded fingerprint (content hash first when both have one)."""
    if recorded.get("missing") or now.get("missing"):
        return bool(recorded.get("missing")) == bool(now.get("missing"))
    if "sha256" in recorded and "sha256" in now:
        return recorded["sha256"] == now["sha256"]
    if "listing" in recorded or "listing" in now:
        return recorded.get("listing") == now.get("listing")
    if "etag" in recorded or "etag" in now:
        return recorded.get("etag") == now.get("etag") and recorded.get("size") == now.get("size")
    return recorded.get("size") == now.get("size") and recorded.get("mtime_ns") == now.get("mtime_ns")


def describe(recorded: dict[str, Any], now: dict[str, Any]) -> str:
    """How a file changed, in a few words."""
    if now.get("missing"):
        return "it is gone"
    if recorded.get("missing"):
        return "it did not exist then"
    if "sha256" in recorded and "sha256" in now:
        return f"content sha256 {recorded['sha256'][:12]} -> {now['sha256'][:12]}, size {recorded['size']} -> {now['size']} bytes"
    if "listing" in recorded or "listing" in now:
        return f"{recorded.get('files')} -> {now.get('files')} files, {recorded.get('size')} -> {now.get('size')} bytes, or their times"
    return f"size {recorded.get('size')} -> {now.get('size')} bytes, modified since"


def changed_files(recorded: dict[str, dict[str, Any]], spec) -> list[str]:
    """One line per file the job reads that differs from the store's record (``key: path changed (how)``)."""
    current = job_files(spec)
    lines = []
    for key, old in recorded.items():
        path = current.get(key, old.get("path"))
        if not path:
            continue
        if path != old.get("path"):
            lines.append(f"{key}: the job now reads {path}, the store was made from {old.get('path')}")
            continue
        now = fingerprint(path)
        if not same(old, now):
            lines.append(f"{key}: {path} changed since the store was created ({describe(old, now)})")
    return lines


def code_digest(files: dict[str, dict[str, Any]]) -> str:
    """A short digest of the recorded fingerprints of a job's module files ("" when it has none)."""
    parts = []
    for key in sorted(k for k in files if k in CODE_KEYS):
        found = files[key]
        parts.append(f"{key}={found.get('sha256') or (str(found.get('size')) + ':' + str(found.get('mtime_ns')))}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:12] if parts else ""


def code_fingerprint(spec) -> str:
    """The digest of the job's function or solver module as it is now (recorded in each commit marker)."""
    found = {}
    for key, path in job_files(spec).items():
        if key in CODE_KEYS:
            found[key] = fingerprint(path)
    return code_digest(found)
