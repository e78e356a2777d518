"""Progress display of a run: samples done, samples/s, ETA and shards, fed by ``live.LiveRun``.

``RichProgress`` is a bar for a terminal; ``PlainProgress`` prints one plain
line every few seconds for output that is not a terminal (``ray job logs``,
pipes, CI). ``make_progress`` picks one. Both count samples (or cases): the
workers report each block of a shard as its write finishes, so the ETA is
known after the first block, not the first shard.
"""

from __future__ import annotations

import os
import threading
import time

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from .live import describe, format_eta

PROGRESS_INTERVAL_ENV = "PIPELINE_PROGRESS_INTERVAL"
DEFAULT_PROGRESS_INTERVAL_S = 10.0


def progress_interval(value: float | None = None) -> float:
    """Seconds between plain progress lines: ``value``, else ``$PIPELINE_PROGRESS_INTERVAL``, else 10."""
    if value is not None:
        return value
    text = os.environ.get(PROGRESS_INTERVAL_ENV)
    if text:
        try:
            return max(0.0, float(text))
        except ValueError:
            pass
    return DEFAULT_PROGRESS_INTERVAL_S


def make_progress(console: Console, unit: str = "samples", interval: float | None = None):
    """A bar when ``console`` is a terminal, plain lines every ``interval`` seconds otherwise."""
    if console.is_terminal:
        return RichProgress(console, unit=unit)
    return PlainProgress(console, unit=unit, interval=progress_interval(interval))


class RichProgress:
    """A rich progress bar of samples done, with the rate, the ETA and the shard counts."""

    def __init__(self, console: Console | None = None, label: str = "progress", unit: str = "samples"):
        self.console = console or Console(stderr=True)
        self.label = label
        self.unit = unit
        self._progress: Progress | None = None
        self._task: TaskID | None = None

    def start(self, total_shards: int, total_samples: int, done_shards: int = 0, done_samples: int = 0) -> None:
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("{task.completed:,.0f}/{task.total:,.0f} " + self.unit),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            TextColumn("eta {task.fields[eta]}"),
            TextColumn("{task.fields[shards]}"),
            console=self.console,
            transient=False,
        )
        self._progress.start()
        self._task = self._progress.add_task(
            self.label,
            total=total_samples,
            completed=done_samples,
            rate="",
            eta=format_eta(None),
            shards=f"shards {done_shards}/{total_shards}",
        )

    def update(self, snapshot) -> None:
        if self._progress is None or self._task is None:
            return
        shards = f"shards {snapshot.shards_done}/{snapshot.shards} ({snapshot.shards_running} running"
        shards += f", {snapshot.shards_failed} failed)" if snapshot.shards_failed else ")"
        self._progress.update(
            self._task,
            completed=snapshot.samples_done,
            rate=f"{snapshot.samples_per_second:,.0f} {self.unit}/s",
            eta=format_eta(snapshot.eta_seconds),
            shards=shards,
        )

    def message(self, text: str) -> None:
        self.console.print(text, markup=False, highlight=False)

    def stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


class PlainProgress:
    """One plain line every ``interval`` seconds (and at the start and the end), for logs."""

    def __init__(self, console: Console | None = None, unit: str = "samples", interval: float = 10.0):
        self.console = console or Console(stderr=True)
        self.unit = unit
        self.interval = interval
        self._last = 0.0
        self._snapshot = None
        self._lock = threading.Lock()

    def start(self, total_shards: int, total_samples: int, done_shards: int = 0, done_samples: int = 0) -> None:
        self._last = 0.0

    def update(self, snapshot) -> None:
        with self._lock:
            now = time.monotonic()
            if self._last and now - self._last < self.interval:
                self._snapshot = snapshot  # not shown yet: the last line shows it if nothing follows
                return
            self._last = now
            self._snapshot = None
        self._print(snapshot)

    def message(self, text: str) -> None:
        self.console.print(text, markup=False, highlight=False)

    def stop(self) -> None:
        with self._lock:
            snapshot, self._snapshot = self._snapshot, None
        if snapshot is not None:
            self._print(snapshot)

    def _print(self, snapshot) -> None:
        self.console.print(f"progress: {describe(snapshot)}", markup=False, highlight=False)
