"""The errors a user fixes: every bad-input error is a ``BadInput``, which the CLI turns into exit code 2.

Stdlib only and imported by every module that raises one, so it sits below
all of them (no import cycles). Each module keeps its own subclass, named for
what is wrong (``spec.SpecError``, ``sources.InputError``,
``models.FunctionError``, ``storage.StorageError``, ``store.StoreError``,
``ClusterError`` here); they keep their ``ValueError`` / ``RuntimeError`` bases
too, for callers that catch those.

``ClusterLost`` is not bad input: the driver lost its Ray cluster mid-run (exit
code 1); the shards committed so far are kept and the same command resumes.

Example:
    >>> from pipeline.store import StoreError
    >>> issubclass(StoreError, BadInput), issubclass(ClusterError, RuntimeError)
    (True, True)
    >>> print(ClusterLost("10.0.0.1:6379", "no answer for 10 s").counted(3, 8))
    lost the Ray cluster at 10.0.0.1:6379 (no answer for 10 s); 3 of 8 shards are committed and kept; run the same command again to resume
"""

from __future__ import annotations

import errno


class BadInput(Exception):
    """Input the user must fix (job file, function, input files, store path, cluster): exit code 2."""


class ClusterError(BadInput, RuntimeError):
    """Ray cannot be started or joined, or the cluster cannot run the job's tasks."""


class RejectedResults(RuntimeError):
    """A shard whose results break a rule of the job (NaN under ``on_nonfinite: fail``, a stored dtype's overflow).

    Another attempt computes the same values and fails the same way, so it is
    not retried; the shard is not committed and the run says why.
    """


class ClusterLost(RuntimeError):
    """The driver lost its Ray cluster mid-run: exit code 1, committed shards kept, the same command resumes.

    The executor knows the address and why (``reason``); the driver, which
    knows the store, adds how many shards are committed (``counted``).
    """

    def __init__(self, address: str, reason: str, committed: int | None = None, total: int | None = None) -> None:
        self.address, self.reason, self.committed, self.total = address, reason, committed, total
        super().__init__(str(self))

    def counted(self, committed: int, total: int) -> ClusterLost:
        """The same loss, with ``committed`` of ``total`` shards in the store."""
        return ClusterLost(self.address, self.reason, committed, total)

    def __str__(self) -> str:
        kept = "" if self.total is None else f"; {self.committed} of {self.total} shards are committed and kept"
        return f"lost the Ray cluster at {self.address} ({self.reason}){kept}; run the same command again to resume"


STORAGE_FULL_MESSAGES = ("No space left on device", "Disk quota exceeded")


def is_storage_full(error: BaseException | None) -> bool:
    """Whether ``error`` (or what caused it) is a full disk or an exceeded quota: every shard would fail the same way.

    Follows ``__cause__`` / ``__context__`` and Ray's ``cause``; a worker's error that reached the driver only
    as text is recognised by its message.

        >>> is_storage_full(RuntimeError("block 2")), is_storage_full(OSError(28, "No space left on device"))
        (False, True)
    """
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if any(text in str(error) for text in STORAGE_FULL_MESSAGES):
            return True
        error = getattr(error, "cause", None) or error.__cause__ or error.__context__
    return False
