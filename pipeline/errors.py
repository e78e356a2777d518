"""The errors a user fixes: every bad-input error is a ``BadInput``, which the CLI turns into exit code 2.

Stdlib only and imported by every module that raises one, so it sits below
all of them (no import cycles). Each module keeps its own subclass, named for
what is wrong (``spec.SpecError``, ``sources.InputError``,
``models.FunctionError``, ``storage.StorageError``, ``store.StoreError``,
``ClusterError`` here); they keep their ``ValueError`` / ``RuntimeError`` bases
too, for callers that catch those.

Example:
    >>> from pipeline.store import StoreError
    >>> issubclass(StoreError, BadInput), issubclass(ClusterError, RuntimeError)
    (True, True)
"""

from __future__ import annotations


class BadInput(Exception):
    """Input the user must fix (job file, function, input files, store path, cluster): exit code 2."""


class ClusterError(BadInput, RuntimeError):
    """Ray cannot be started or joined, or the cluster cannot run the job's tasks."""
