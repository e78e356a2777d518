"""Whether the machines of a cluster see the driver's local store folder: a probe file and its reading.

The driver writes a file holding a random token beside the store (``probe_file``,
removed whatever happens); a task pinned to each node on another host reads it
back (``sees_probe``). A node that does not see the driver's disk finds no file,
or another file at that path without the token. Ray-free: ``runner`` runs the tasks.

Example:
    >>> import tempfile
    >>> with probe_file(tempfile.mkdtemp() + "/run.zarr") as (path, token):
    ...     sees_probe(path, token)[0], sees_probe(path, "another token")[0]
    (True, False)
"""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

PREFIX = ".pipeline-probe-"


def probe_folder(store: str | Path) -> Path:
    """The folder the probe goes in: the nearest existing folder that holds (or will hold) the store.

    The store's parent when it exists; else the nearest existing ancestor, where
    the driver will create the folders leading to the store.
    """
    folder = Path(store).absolute().parent
    while not folder.is_dir() and folder != folder.parent:
        folder = folder.parent
    return folder


@contextmanager
def probe_file(store: str | Path) -> Iterator[tuple[str, str]]:
    """Write ``<probe_folder>/.pipeline-probe-<token>`` holding a random token; yield (its path, the token).

    The file is removed when the block ends, however it ends.
    """
    token = secrets.token_hex(16)
    path = probe_folder(store) / f"{PREFIX}{token}"
    try:
        path.write_text(token)
        yield str(path), token
    finally:
        try:
            path.unlink()
        except FileNotFoundError:
            pass


def sees_probe(path: str, token: str) -> tuple[bool, str]:
    """On a worker: (whether the probe file at ``path`` holds ``token`` here, this machine's hostname)."""
    try:
        with open(path) as file:
            seen = file.read(len(token) + 1) == token
    except OSError:
        seen = False
    return seen, socket.gethostname()


def probe_timeout_s() -> float:
    """How long the driver waits for the nodes' answers: ``$PIPELINE_STORE_PROBE_S``, default 20 s."""
    try:
        return float(os.environ.get("PIPELINE_STORE_PROBE_S", "20"))
    except ValueError:
        return 20.0
