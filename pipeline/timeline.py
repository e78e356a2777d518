"""Where a job's time went, per worker, from the manifest's shard timeline.

Every committed shard records ``started``, ``finished``, ``seconds`` (its
blocks computed and written) and ``worker`` (``host:pid`` of the process
that ran it). Per worker process this gives the shards it ran, its busy
time, and the gaps between one shard's commit and its next shard's start:
the executor's cost per shard (on Ray: the result back, the next task in).
A re-run of the job runs in new worker processes, so no gap spans two runs.

``pipeline report`` shows the table; ``bench/end_to_end.py`` uses it for the
per-shard overhead.

Example:
    >>> rows = [dict(worker="h:1", started=0.0, finished=1.0, seconds=0.9),
    ...         dict(worker="h:1", started=1.02, finished=2.0, seconds=0.95)]
    >>> t = worker_timeline(rows)[0]
    >>> t.shards, round(t.mean_gap, 3), round(t.busy_share, 2)
    (2, 0.02, 0.99)
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class WorkerTime:
    """One worker process's shards: how long they ran and what lay between them."""

    worker: str
    shards: int
    busy: float  # sum of finished - started over its shards
    span: float  # its first shard's start to its last shard's commit
    gaps: tuple[float, ...]  # commit of one shard -> start of its next
    outside: float  # mean time of a shard in run_shard outside its own seconds (attempt record, marker)

    @property
    def mean_gap(self) -> float:
        return sum(self.gaps) / len(self.gaps) if self.gaps else 0.0

    @property
    def max_gap(self) -> float:
        return max(self.gaps, default=0.0)

    @property
    def busy_share(self) -> float:
        """busy / span: 1.0 when the worker never waited between shards."""
        return self.busy / self.span if self.span > 0 else 1.0


def worker_timeline(rows: Iterable[Mapping[str, Any]]) -> list[WorkerTime]:
    """Per worker process (by name), from manifest rows of committed shards with a start and a commit time."""
    by_worker: dict[str, list[Mapping[str, Any]]] = {}
    for r in rows:  # committed, with times (stores written before shards recorded them hold 0.0); one pass
        if r.get("status", "done") == "done" and r.get("finished") and r.get("started") is not None:
            by_worker.setdefault(r.get("worker") or r.get("host") or "?", []).append(r)
    found = []
    for worker in sorted(by_worker):
        mine = sorted(by_worker[worker], key=lambda r: r["started"])
        found.append(
            WorkerTime(
                worker=worker,
                shards=len(mine),
                busy=sum(r["finished"] - r["started"] for r in mine),
                span=mine[-1]["finished"] - mine[0]["started"],
                gaps=tuple(max(0.0, b["started"] - a["finished"]) for a, b in itertools.pairwise(mine)),
                outside=sum(max(0.0, r["finished"] - r["started"] - r["seconds"]) for r in mine) / len(mine),
            )
        )
    return found


def per_shard_overhead(workers: list[WorkerTime]) -> float | None:
    """Mean seconds per shard outside its own work: the gap before it plus its time outside ``seconds``.

    None when no worker ran two shards (no gap to measure).
    """
    gaps = [g for w in workers for g in w.gaps]
    if not gaps:
        return None
    outside = sum(w.outside * w.shards for w in workers) / sum(w.shards for w in workers)
    return sum(gaps) / len(gaps) + outside
