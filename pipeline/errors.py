"""The errors a user fixes: every bad-input error is a ``BadInput``, which the CLI turns into exit code 2.

Stdlib only and imported by every module that raises one, so it sits below
all of them (no import cycles). Each module keeps its own subclass, named for
what is wrong (``spec.SpecError``, ``sources.InputError``,
``models.FunctionError``, ``storage.StorageError``, ``store.StoreError``,
``ClusterError`` here); they keep their ``ValueError`` / ``RuntimeError`` bases
too, for callers that catch those.

``ClusterLost`` is not bad input: the driver lost its Ray cluster mid-run (exit
code 1); the shards committed so far are kept and the same command resumes.
``StorageDown`` is its twin for the store: the storage answered only transient
errors (an outage, a revoked credential, a cut network) on shard attempts in a
row, so no further shard started (exit code 1, committed shards kept, the same
command resumes).

Example:
    >>> from pipeline.store import StoreError
    >>> issubclass(StoreError, BadInput), issubclass(ClusterError, RuntimeError)
    (True, True)
    >>> print(ClusterLost("10.0.0.1:6379", "no answer for 10 s").counted(3, 8))
    lost the Ray cluster at 10.0.0.1:6379 (no answer for 10 s); 3 of 8 shards are committed and kept; run the same command again to resume
    >>> print(StorageDown("s3://b/x.zarr", "503 SlowDown", 3).counted(1, 12))
    the storage of s3://b/x.zarr did not answer: 3 shard attempts in a row failed on it (503 SlowDown), so no further shard was started; 1 of 12 shards are committed and kept; run the same command again when the storage answers (it resumes)
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


class StorageDown(RuntimeError):
    """The store's storage answered only transient errors on ``attempts`` shard attempts in a row: exit code 1.

    The executor stops starting shards and knows the store, the last error (``reason``) and the count; the
    driver adds how many shards are committed (``counted``) and, when the finalize failed too, why
    (``not_finalized``: the committed shards are still kept, their markers are in the store).
    """

    def __init__(
        self,
        store: str,
        reason: str,
        attempts: int,
        committed: int | None = None,
        total: int | None = None,
        not_finalized: str | None = None,
    ) -> None:
        self.store, self.reason, self.attempts = store, reason, attempts
        self.committed, self.total, self.not_finalized = committed, total, not_finalized
        super().__init__(str(self))

    def counted(self, committed: int, total: int, not_finalized: str | None = None) -> StorageDown:
        """The same outage, with ``committed`` of ``total`` shards in the store (and why it was not finalized)."""
        return StorageDown(self.store, self.reason, self.attempts, committed, total, not_finalized)

    def __str__(self) -> str:
        kept = "" if self.total is None else f"; {self.committed} of {self.total} shards are committed and kept"
        if self.not_finalized is not None:
            kept += f" (the manifest could not be written either: {self.not_finalized})"
        return (
            f"the storage of {self.store} did not answer: {self.attempts} shard attempts in a row failed on it "
            f"({self.reason}), so no further shard was started{kept}; run the same command again when the "
            "storage answers (it resumes)"
        )


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
