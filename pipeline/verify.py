"""Verify a store against its own record, and repair what is damaged.

``verify_store(path)`` reads every chunk of every committed shard (threads in
parallel, one shard per task), recomputes the shard's checksum the way the
worker did (``store.Checksum``: a CRC32C per array fed in sample order;
zlib's CRC32 for a store made before session 12) and
compares it with the shard's commit marker and with the manifest. A chunk
whose file is gone, that cannot be decoded (a new store's ``crc32c`` codec
refuses a flipped bit) or a shard whose bytes no longer match is reported by
array, shard and chunk. ``repair_store(path, report)`` un-commits exactly the
damaged shards (their markers go, ``complete`` is cleared); the next run of
the job (``pipeline verify --repair`` or ``pipeline submit --repair``)
recomputes them, bit for bit what a clean run writes.

A chunk that was never written because it holds only fill values (Zarr skipped
those before tasks turned its fill check off) reads back as the fill value, so a missing chunk alone is no damage:
it is listed only for a shard whose checksum no longer matches.

Example:
    >>> report = verify_store("results/quickstart.zarr")   # doctest: +SKIP
    >>> report.ok, report.damaged_shards                   # doctest: +SKIP
    (True, [])
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import storage
from .kinds import kind_of_store
from .store import Checksum, read_attributes, read_manifest, read_markers, uncommit_shards

DEFAULT_THREADS = 4


@dataclass(frozen=True)
class Problem:
    """One thing wrong: ``kind`` is missing, unreadable, mismatch or manifest."""

    kind: str
    array: str
    shard: int | None
    chunk: int | None
    start: int | None
    stop: int | None
    detail: str = ""

    def line(self) -> str:
        where = f"shard {self.shard}" if self.shard is not None else "not in any shard"
        chunk = f", chunk {self.chunk} (samples {self.start}-{self.stop})" if self.chunk is not None else ""
        return f"{self.kind}: {self.array}, {where}{chunk}" + (f": {self.detail}" if self.detail else "")


@dataclass
class VerifyReport:
    """What ``verify_store`` found."""

    path: str
    shards: int
    committed: int
    chunks_read: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def damaged_shards(self) -> list[int]:
        return sorted({p.shard for p in self.problems if p.shard is not None})

    @property
    def unrepairable(self) -> list[Problem]:
        """Problems outside every shard (coordinates, case parameters written with the store)."""
        return [p for p in self.problems if p.shard is None]

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict:
        return {
            "path": self.path,
            "ok": self.ok,
            "shards": self.shards,
            "committed": self.committed,
            "chunks_read": self.chunks_read,
            "damaged_shards": self.damaged_shards,
            "problems": [asdict(p) for p in self.problems],
        }


def _open(path: str):
    import zarr

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return zarr.open_group(storage.zarr_target(path), mode="r", use_consolidated=False)


def _chunk_exists(array, index: int) -> bool:
    from zarr.core.sync import sync

    shards = getattr(array, "shards", None)  # Zarr v3 sharding: one stored object holds several chunks
    if shards:
        index = index * array.chunks[0] // shards[0]
    key = array.metadata.encode_chunk_key((index,) + (0,) * (array.ndim - 1))
    store_path = array.store_path
    return bool(sync(store_path.store.exists(f"{store_path.path}/{key}" if store_path.path else key)))


def checksummed_arrays(group, attrs: dict) -> list[str]:
    """The arrays a shard's checksum covers: those along the sample (case) axis that its shards write.

    A sweep's case parameters are written with the store, not by a shard.
    """
    from .kinds import axis_name

    dim = axis_name(attrs.get("kind"))
    written_up_front = set(attrs.get("parameters") or [])
    names = []
    for name in sorted(group.array_keys()):
        array = group[name]
        dims = tuple(getattr(array.metadata, "dimension_names", None) or ())
        if dims[:1] == (dim,) and array.shape[0] == attrs.get("n") and name not in written_up_front:
            names.append(name)
    return names


def _check_shard(group, names: list[str], record, manifest_checksum: str | None) -> tuple[int, list[Problem]]:
    """Read a committed shard chunk by chunk; the chunks read and the problems found."""
    summer = Checksum.like(record.checksum)  # CRC32C, or a store made before it: zlib's CRC32
    problems: list[Problem] = []
    missing: list[Problem] = []
    read = 0
    unreadable = set()
    for name in names:
        array = group[name]
        chunk = array.chunks[0]
        for index in range(record.start // chunk, -(-record.stop // chunk)):
            lo, hi = index * chunk, min((index + 1) * chunk, array.shape[0])
            read += 1
            try:
                values = array[lo:hi]
            except Exception as err:  # a codec refusing the bytes: crc32c, blosc, zstd
                unreadable.add(name)
                problems.append(
                    Problem(
                        "unreadable", name, record.shard_id, index, lo, hi, f"{type(err).__name__}: {str(err)[:200]}"
                    )
                )
                continue
            if not _chunk_exists(array, index):
                missing.append(Problem("missing", name, record.shard_id, index, lo, hi, "the chunk file is gone"))
            if name not in unreadable:
                summer.update({name: values})
    if not unreadable:
        stored = json.loads(record.array_checksums) if record.array_checksums else {}
        now = summer.per_array()
        wrong = sorted(name for name in stored if now.get(name) != stored[name])
        if summer.hexdigest() != record.checksum or wrong:
            for name in wrong or ["(all arrays)"]:
                problems.append(
                    Problem(
                        "mismatch",
                        name,
                        record.shard_id,
                        None,
                        record.start,
                        record.stop,
                        f"checksum {stored.get(name, record.checksum)} in the commit marker, "
                        f"{now.get(name, summer.hexdigest())} now",
                    )
                )
    if problems:
        problems.extend(missing)  # a missing chunk of a matching shard is an all-fill chunk Zarr skipped
    if manifest_checksum is not None and manifest_checksum != record.checksum:
        problems.append(
            Problem(
                "manifest",
                "(all arrays)",
                record.shard_id,
                None,
                record.start,
                record.stop,
                f"the manifest records checksum {manifest_checksum}, the commit marker {record.checksum}",
            )
        )
    return read, problems


def _check_other(group, name: str) -> list[Problem]:
    try:
        group[name][...]
    except Exception as err:
        return [Problem("unreadable", name, None, None, None, None, f"{type(err).__name__}: {str(err)[:200]}")]
    return []


def verify_store(
    path: str | Path, *, threads: int = DEFAULT_THREADS, progress: Callable[[int, int], None] | None = None
) -> VerifyReport:
    """Read every chunk of ``path`` and check each committed shard against its marker and the manifest.

    ``progress(done, total)`` is called once the markers are read (``done`` 0), then after each shard.
    Raises ``StoreError`` when ``path`` is not a pipeline store.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zarr warns about our Parquet files and markers
        return _verify(str(path), threads, progress)


def _verify(path: str, threads: int, progress) -> VerifyReport:
    attrs = read_attributes(path)
    group = _open(path)
    names = checksummed_arrays(group, attrs)
    markers = read_markers(path)
    manifest = read_manifest(path)
    recorded: dict[int, str] = {}
    if manifest is not None:
        data = manifest.select(["shard_id", "status", "checksum"]).to_pydict()
        recorded = {i: c for i, s, c in zip(data["shard_id"], data["status"], data["checksum"]) if s == "done"}
    report = VerifyReport(path, int(attrs.get("n_shards", len(markers))), len(markers))
    records = [markers[i] for i in sorted(markers)]
    total = len(records)
    done = 0
    if progress is not None:
        progress(0, total)  # the markers are read: the bar shows 0/N, not 0/? until the first shard is checked

    def one(record):
        return _check_shard(group, names, record, recorded.get(record.shard_id))

    with ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="verify") as pool:
        for read, problems in pool.map(one, records):
            report.chunks_read += read
            report.problems.extend(problems)
            done += 1
            if progress is not None:
                progress(done, total)
    for name in sorted(set(group.array_keys()) - set(names)):
        report.problems.extend(_check_other(group, name))
        report.chunks_read += 1
    for table in kind_of_store(attrs).tables:
        report.problems.extend(_check_table(path, table))
    return report


def _check_table(path: str, name: str) -> list[Problem]:
    """A table of the job's kind (a sweep's ``cases.parquet``), which every shard reads: gone or unreadable is damage."""
    from .parquet import open_parquet

    try:
        open_parquet(storage.join(path, name) if storage.is_remote(path) else Path(path) / name).read()
    except FileNotFoundError:
        return [Problem("missing", name, None, None, None, None, "the table is gone")]
    except Exception as err:
        return [Problem("unreadable", name, None, None, None, None, f"{type(err).__name__}: {str(err)[:200]}")]
    return []


def repair_store(path: str | Path, report: VerifyReport) -> list[int]:
    """Un-commit exactly the damaged shards of ``report`` (the next run recomputes them); their ids."""
    damaged = report.damaged_shards
    uncommit_shards(path, damaged)
    return damaged


def summary_lines(report: VerifyReport, limit: int = 20) -> list[str]:
    """Human-readable lines: one per problem (up to ``limit``), then the verdict."""
    lines = [p.line() for p in report.problems[:limit]]
    if len(report.problems) > limit:
        lines.append(f"... and {len(report.problems) - limit} more (--json lists all)")
    return lines
