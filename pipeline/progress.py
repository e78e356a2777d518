"""Progress display of a run: shards done, samples/s and ETA, with rich."""

from __future__ import annotations

import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class RichProgress:
    """A rich progress bar fed by the driver's shard callbacks."""

    def __init__(self, console: Console | None = None, label: str = "shards", unit: str = "samples"):
        self.console = console or Console(stderr=True)
        self.label = label
        self.unit = unit
        self._progress: Progress | None = None
        self._task = None
        self._samples = 0
        self._began = 0.0

    def start(self, total_shards: int, total_samples: int, done_shards: int = 0, done_samples: int = 0) -> None:
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=self.console,
            transient=False,
        )
        self._progress.start()
        self._task = self._progress.add_task(self.label, total=total_shards, completed=done_shards, rate="")
        self._samples = 0
        self._began = time.perf_counter()

    def advance(self, record) -> None:
        self._samples += record.stop - record.start
        rate = self._samples / max(time.perf_counter() - self._began, 1e-9)
        if self._progress is not None:
            self._progress.update(self._task, advance=1, rate=f"{rate:,.0f} {self.unit}/s")

    def fail(self, shard, error: str) -> None:
        first_line = error.splitlines()[0] if error else "unknown error"
        self.console.print(f"[red]shard {shard.id} [{shard.start}, {shard.stop}) failed:[/red] {first_line}")
        if self._progress is not None:
            self._progress.update(self._task, advance=1)

    def stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
