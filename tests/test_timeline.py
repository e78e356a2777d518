"""Where a job's time went per worker (``pipeline.timeline``), against hand-computed timelines."""

from __future__ import annotations

import pytest

from pipeline.timeline import per_shard_overhead, worker_timeline


def row(worker, started, finished, seconds, status="done"):
    return {"worker": worker, "started": started, "finished": finished, "seconds": seconds, "status": status}


def test_busy_span_gaps_and_time_outside_a_shards_work_per_worker():
    rows = [
        row("h:1", 1.5, 2.5, 0.9),  # out of order on purpose: the timeline sorts by start
        row("h:1", 0.0, 1.0, 0.9),
        row("h:1", 2.6, 3.0, 0.3),
        row("h:2", 0.2, 1.2, 1.0),
        row("h:2", 5.0, 6.0, 1.0, status="failed"),  # not a committed shard
        {"worker": "h:3", "started": 0.0, "finished": 0.0, "seconds": 0.0, "status": "pending"},
    ]
    first, second = worker_timeline(rows)
    assert (first.worker, first.shards, second.worker, second.shards) == ("h:1", 3, "h:2", 1)
    assert (first.gap_count, first.gap_total) == (2, pytest.approx(0.6))
    assert first.mean_gap == pytest.approx(0.3) and first.max_gap == pytest.approx(0.5)
    assert first.busy == pytest.approx(2.4) and first.span == pytest.approx(3.0)
    assert first.busy_share == pytest.approx(0.8) and first.outside == pytest.approx(0.1)
    assert (
        second.gap_count == 0
        and second.max_gap == 0.0
        and second.busy_share == pytest.approx(1.0)
        and second.outside == pytest.approx(0.0)
    )
    # the gaps' mean (0.3) plus the time outside seconds, averaged over all 4 shards: (3 x 0.1 + 0) / 4
    assert per_shard_overhead([first, second]) == pytest.approx(0.3 + 0.075)


def test_a_rerun_in_new_worker_processes_adds_no_gap_and_one_shard_per_worker_measures_none():
    runs = [row("h:1", 0.0, 1.0, 1.0), row("h:1", 1.01, 2.0, 0.99), row("h:7", 3600.0, 3601.0, 1.0)]
    found = worker_timeline(runs)
    assert [(w.gap_count, w.max_gap) for w in found] == [(1, pytest.approx(0.01)), (0, 0.0)]  # the hour between runs
    assert per_shard_overhead(worker_timeline([row("h:1", 0.0, 1.0, 1.0), row("h:2", 0.0, 1.0, 1.0)])) is None
    assert worker_timeline([]) == []


def test_columns_match_rows_over_many_workers_and_shards():
    from pipeline.timeline import worker_timeline_columns

    n = 240_000  # a tenth of the 1e10-sample plan's shard count, over 64 workers
    workers = [f"h:{i % 64}" for i in range(n)]
    started = [float(i // 64) for i in range(n)]
    finished = [s + 0.9 for s in started]
    seconds = [0.85] * n
    found = worker_timeline_columns(workers, started, finished, seconds)
    assert len(found) == 64 and all(w.shards == n // 64 and w.gap_count == n // 64 - 1 for w in found)
    assert per_shard_overhead(found) == pytest.approx(0.1 + 0.05)
    small = [row(w, s, f, d) for w, s, f, d in zip(workers[:640], started[:640], finished[:640], seconds[:640])]
    assert worker_timeline(small) == worker_timeline_columns(
        workers[:640], started[:640], finished[:640], seconds[:640]
    )
