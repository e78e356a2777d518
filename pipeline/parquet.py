"""Parquet row ranges read by row group, from a local path or a bucket URL (a leaf module: storage, pyarrow).

A reader of rows ``[start, stop)`` opens the file's footer and reads only the
row groups that cover the range; from a bucket (``storage.open_file``) those
are byte-range reads.

Example:
    >>> import tempfile, os, pyarrow as pa, pyarrow.parquet as pq
    >>> path = os.path.join(tempfile.mkdtemp(), "t.parquet")
    >>> pq.write_table(pa.table({"a": list(range(10))}), path, row_group_size=4)
    >>> read_rows(open_parquet(path), 5, 7).column("a").to_pylist()
    [5, 6]
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import storage


def open_parquet(path: str | Path) -> Any:
    """A ``pyarrow.parquet.ParquetFile`` of a path or URL (row groups read by byte range from a bucket)."""
    import pyarrow.parquet as pq

    if storage.is_remote(path):
        return pq.ParquetFile(storage.open_file(str(path)))
    return pq.ParquetFile(path)


def covering_row_groups(metadata: Any, start: int, stop: int) -> tuple[list[int], int]:
    """The row groups holding rows ``[start, stop)`` and the index of the first row of the first of them.

    Example:
        >>> class Group:
        ...     def __init__(self, n): self.num_rows = n
        >>> class Meta:
        ...     num_row_groups = 3
        ...     def row_group(self, i): return Group(4)
        >>> covering_row_groups(Meta(), 5, 9)
        ([1, 2], 4)
    """
    groups: list[int] = []
    offset, first = 0, 0
    for i in range(metadata.num_row_groups):
        rows = metadata.row_group(i).num_rows
        if offset + rows > start and offset < stop:
            if not groups:
                first = offset
            groups.append(i)
        offset += rows
    return groups, first


def read_rows(file: Any, start: int, stop: int, columns: Sequence[str] | None = None) -> Any:
    """Rows ``[start, stop)`` of an open ``ParquetFile`` as a ``pyarrow.Table``, reading only their row groups."""
    groups, first = covering_row_groups(file.metadata, start, stop)
    table = file.read_row_groups(groups, columns=None if columns is None else list(columns))
    return table.slice(start - first, stop - start)
