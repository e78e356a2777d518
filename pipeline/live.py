"""Live status of a run: what a driver publishes while it holds a store, and what workers report.

Three small things, each a JSON object written whole through one function
(``_put_json``): a file renamed into place on a file system, one PUT in a
bucket (``s3://``, ``gs://``, ... through ``storage``), so the same code serves
both:

- The **driver record** ``<store.path>.driver.json`` (beside the lock, or the
  lease object of a URL store, so it outlives a store being replaced by
  ``--overwrite``): host, pid, start time,
  command and working directory, phase (``starting``, ``replacing``,
  ``running``, ``finalizing``) and live counters (shards done / running /
  pending / failed, samples done, samples per second, ETA), rewritten every
  ``RECORD_INTERVAL_S`` seconds by the driver and deleted when it ends.
  ``pipeline status`` trusts it only while the driver holds the store
  (``lock_holder``: the POSIX lock, or a URL store's lease while it is
  renewed, ``lease.holder``): a record whose driver no longer holds the store
  is a driver that is gone (*stale*; a URL store's driver counts as gone once
  its lease expires, ``lease.TTL_SECONDS`` after the last renewal, or at once
  on its own host when its process is gone).
- **Block progress** ``_shards/<id>.progress``: the worker's samples written so
  far in its current attempt of the shard, rewritten as a block's write
  finishes (at most every ``BLOCK_REPORT_MIN_S``, and once at the attempt's
  start); removed when the shard commits.
  The driver polls these for the shards in flight (one directory listing per
  poll, a LIST of ``_shards/`` in a bucket; polls wait 20 times as long as
  the last took), so progress counts samples, not whole shards, and no array
  goes through the driver.
- **Attempt errors** ``_shards/<id>.<attempt>.error``: the exception type,
  message and full traceback of a failed attempt. The console gets one line
  per failed attempt; the traceback goes to the manifest's ``error`` column
  and ``pipeline inspect STORE --shard N``.

Example:
    >>> import tempfile, os
    >>> store = os.path.join(tempfile.mkdtemp(), "s.zarr")
    >>> put_record(store, {"pid": 1})
    >>> get_record(store)["pid"], lock_holder(store) is None   # a record, but nobody holds the lock: stale
    (1, True)
    >>> error_line("Traceback (most recent call last):\\n  File ...\\nValueError: bad x\\n")
    'ValueError: bad x'
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import struct
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import storage
from .errors import RejectedResults
from .lease import holder as lease_holder
from .lock import held_here, lock_path
from .plan import ShardFlags
from .provenance import command_line
from .store import MARKERS, marker_names

RECORD_VERSION = 1
RECORD_INTERVAL_S = 2.0  # how often the driver rewrites its record
HISTORY_STEP_S = 0.25  # the rate's history keeps one point per this many seconds
POLL_INTERVAL_S = 0.5  # how often the driver looks at the workers' progress files
BLOCK_REPORT_MIN_S = 0.25  # a worker rewrites a shard's progress file at most this often (and at its start)
RATE_WINDOW_S = 30.0  # samples per second are measured over this much of the recent past
TRACEBACK_CHARS = 20_000  # an attempt's traceback is kept up to this length (its end)


# ------------------------------------------------------------------ the driver record


def record_path(store: str | Path) -> str | Path:
    """``<store.path>.driver.json``, beside the store and its lock (a URL store: beside its lease object)."""
    if storage.is_remote(store):
        return str(store).rstrip("/") + ".driver.json"
    store = Path(store)
    return store.with_name(store.name + ".driver.json")


def _in_markers(store: str | Path, name: str) -> str | Path:
    """``_shards/<name>`` of a store, a file or an object."""
    if storage.is_remote(store):
        return storage.join(str(store), MARKERS, name)
    return Path(store) / MARKERS / name


def _put_json(where: str | Path, data: dict[str, Any]) -> None:
    """Write ``data`` to ``where`` whole: readers see the old or the new object, never a part."""
    if storage.is_remote(where):  # one PUT: an object appears whole or not at all
        storage.write_bytes(str(where), json.dumps(data).encode())
        return
    file = Path(where)
    temporary = file.with_name(f".{file.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        temporary.write_text(json.dumps(data))
        os.replace(temporary, file)
    except BaseException:  # a full disk: no half-written temporary left beside the store
        temporary.unlink(missing_ok=True)
        raise


def _get_json(where: str | Path) -> dict[str, Any] | None:
    """The JSON object at ``where``, or None when there is none or it cannot be read."""
    try:
        data = json.loads(storage.read_bytes(where) if storage.is_remote(where) else Path(where).read_text())
    except (OSError, ValueError):
        return None
    except Exception:  # a bucket's client errors are not all OSErrors; the driver's poll must not fail on one
        if not storage.is_remote(where):
            raise
        return None
    return data if isinstance(data, dict) else None


def _remove(where: str | Path) -> None:
    if storage.is_remote(where):
        storage.remove(where)
        return
    with contextlib.suppress(FileNotFoundError):
        Path(where).unlink()


def put_record(store: str | Path, record: dict[str, Any]) -> None:
    """Publish the driver record of ``store`` (the one function that writes it)."""
    _put_json(record_path(store), record)


def get_record(store: str | Path) -> dict[str, Any] | None:
    """The driver record of ``store``, or None when there is none (or it cannot be read)."""
    return _get_json(record_path(store))


def delete_record(store: str | Path) -> None:
    _remove(record_path(store))


def _lock_owner(file: Path) -> int | None:
    """The pid holding the POSIX lock on ``file`` (0 when unknown), or None when it is free.

    Asks with ``F_GETLK``, which tests the lock without taking it, so a
    ``pipeline status`` never stands in the way of a driver starting.
    """
    try:
        fd = os.open(file, os.O_RDONLY)
    except OSError:
        return None
    try:
        layout = "qqihh" if sys.platform == "darwin" else "hhqqi4x"  # struct flock (macOS, Linux)
        if sys.platform == "darwin":
            query = struct.pack(layout, 0, 0, 0, fcntl.F_WRLCK, os.SEEK_SET)
            _, _, pid, kind, _ = struct.unpack(layout, fcntl.fcntl(fd, fcntl.F_GETLK, query))
        else:
            query = struct.pack(layout, fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0)
            kind, _, _, _, pid = struct.unpack(layout, fcntl.fcntl(fd, fcntl.F_GETLK, query))
    except OSError:
        return None
    finally:
        os.close(fd)
    return None if kind == fcntl.F_UNLCK else pid


def lock_holder(store: str | Path) -> dict[str, Any] | None:
    """Who holds the store's driver lock now: the lock file's host, pid and since; None when nobody does.

    The lock itself is checked (not just the file, which a killed driver
    leaves behind). A URL store's lock is its lease (``lease.holder``): held
    while it is renewed, free once it expires or its process on this host is gone.
    """
    if storage.is_remote(store):
        return lease_holder(store)
    file = lock_path(store)
    if held_here(store):  # this very process
        owner: int | None = os.getpid()
    else:
        owner = _lock_owner(file)
    if owner is None:
        return None
    holder = _get_json(file) or {}
    holder.setdefault("pid", owner)
    return holder


# ------------------------------------------------------------------ worker side


def write_block_progress(store: str | Path, shard_id: int, attempt: int, done: int, size: int) -> None:
    """A worker's progress in a shard: ``done`` of its ``size`` samples written, in attempt ``attempt``.

    Best effort: a progress file (or object) that cannot be written never fails the shard.
    """
    with contextlib.suppress(Exception):
        progress = {"attempt": attempt, "done": done, "size": size, "t": time.time()}
        _put_json(_in_markers(store, f"{shard_id}.progress"), progress)


def clear_block_progress(store: str | Path, shard_id: int) -> None:
    """Remove a shard's progress file (it committed: its marker says the rest; one left behind is ignored)."""
    with contextlib.suppress(Exception):
        _remove(_in_markers(store, f"{shard_id}.progress"))


def write_attempt_error(store: str | Path, shard_id: int, attempt: int, error: BaseException) -> None:
    """Record why attempt ``attempt`` of a shard failed: type, message, full traceback, host, time."""
    from .errors import is_storage_full

    text = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    with contextlib.suppress(Exception):  # never hides the error itself
        _put_json(
            _in_markers(store, f"{shard_id}.{attempt}.error"),
            {
                "shard_id": shard_id,
                "attempt": attempt,
                "type": type(error).__name__,
                "message": str(error)[:2000],
                # never retried: fail() reports it
                "final": isinstance(error, RejectedResults) or is_storage_full(error),
                "traceback": text[-TRACEBACK_CHARS:],
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "t": time.time(),
            },
        )


def read_attempt_errors(store: str | Path, shard_id: int) -> list[dict[str, Any]]:
    """The recorded failed attempts of a shard, oldest first."""
    names = [n for n in marker_names(store) if n.startswith(f"{shard_id}.") and n.endswith(".error")]
    errors = [_get_json(_in_markers(store, name)) for name in names]
    return sorted((e for e in errors if e), key=lambda e: e.get("attempt", 0))


def attempt_traceback(store: str | Path, shard_id: int, attempt: int) -> str | None:
    """The full traceback of one attempt of a shard, if the worker recorded it."""
    error = _get_json(_in_markers(store, f"{shard_id}.{attempt}.error"))
    return error.get("traceback") if error else None


def error_line(error: str, limit: int = 300) -> str:
    """The one line of an error to show on a console: ``Type: message`` (from the end of a traceback)."""
    lines = [line for line in (error or "").rstrip().splitlines() if line.strip()]
    if not lines:
        return "unknown error"
    if lines[0].startswith("Traceback"):
        last_frame = max((i for i, line in enumerate(lines) if line.startswith(" ")), default=0)
        lines = lines[last_frame + 1 :] or lines[-1:]  # the exception after the last frame
    text = " ".join(line.strip() for line in lines)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ------------------------------------------------------------------ driver side


@dataclass
class Snapshot:
    """Where a run stands, as the driver sees it (also what the record's ``progress`` holds)."""

    unit: str
    shards: int
    shards_done: int
    shards_running: int
    shards_pending: int
    shards_failed: int
    samples: int
    samples_done: int
    samples_per_second: float
    eta_seconds: float | None
    elapsed_seconds: float


def format_eta(seconds: float | None) -> str:
    """``3725.2`` -> ``'1:02:05'``; None (not known yet) -> ``'-:--:--'``."""
    if seconds is None:
        return "-:--:--"
    seconds = round(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def describe(snapshot: Snapshot | dict[str, Any]) -> str:
    """One line: samples done of total, rate, ETA, shards done / running / pending / failed."""
    s = snapshot if isinstance(snapshot, dict) else vars(snapshot)
    share = f" ({100 * s['samples_done'] / s['samples']:.0f}%)" if s["samples"] else ""
    return (
        f"{s['samples_done']:,}/{s['samples']:,} {s['unit']}{share}, {s['samples_per_second']:,.0f} {s['unit']}/s, "
        f"eta {format_eta(s['eta_seconds'])}; shards {s['shards_done']} done, {s['shards_running']} running, "
        f"{s['shards_pending']} pending, {s['shards_failed']} failed of {s['shards']}"
    )


@dataclass
class _Files:
    """What one scan of ``_shards/`` found besides the commit markers (those are counted as they pass)."""

    errors: set[str] = field(default_factory=set)  # "<id>.<attempt>.error" files
    progress: list[int] = field(default_factory=list)  # shards with a "<id>.progress" file


class LiveRun:
    """The driver's side of a run: publishes the record, polls the workers' progress, feeds the display.

    Used by ``driver.submit`` in place of the progress display it was given
    (it forwards to it): ``start`` / ``advance`` / ``fail`` / ``stop`` are the
    driver's callbacks; a background thread polls ``_shards/`` every
    ``POLL_INTERVAL_S`` and rewrites the record every ``RECORD_INTERVAL_S``.
    """

    def __init__(
        self, store: str | Path, *, unit: str = "samples", retries: int = 0, replacing: bool = False, display=None
    ):
        self._where = store  # a path or a URL: every file below goes through _put_json / _get_json
        self.unit = unit
        self.tries = retries + 1
        self.display = display
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._began = time.time()
        self._run_began = self._began
        self._plan: Sequence = ()  # the store's shards (the lazy plan.Shards: a huge plan is never listed)
        self._total = 0  # samples (or cases) in the plan
        self._committed = ShardFlags(0)
        self._committed_samples = 0
        self._poll_seconds = 0.0  # how long the last poll took (a huge _shards/ is polled less often)
        self._last_poll = 0.0
        self._failed: set[int] = set()
        self._running: dict[int, int] = {}  # shard id -> samples written in its current attempt
        self._attempts_before: dict[int, int] = {}
        self._seen_errors: set[str] = set()
        self._history: deque[tuple[float, int]] = deque()
        self._samples_at_start = 0
        self._last_record = 0.0
        self.record: dict[str, Any] = {
            "version": RECORD_VERSION,
            "store": str(store),
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(self._began)),
            "started_unix": round(self._began, 3),
            "command": command_line(),
            "cwd": os.getcwd(),
            "phase": "replacing" if replacing else "starting",
            "replacing": replacing,
            "progress": None,
        }

    # -- lifecycle

    def __enter__(self) -> LiveRun:
        self._publish(force=True)
        return self

    def __exit__(self, *exc) -> None:
        self._halt()
        with contextlib.suppress(Exception):  # a bucket out of reach: `status` will call the record stale
            delete_record(self._where)

    def start(self, total_shards: int, total_samples: int, done_shards: int = 0, done_samples: int = 0) -> None:
        from .store import attempted_shards, attempts_of, read_plan

        with self._lock:
            self._run_began = time.time()
            try:
                self._plan = read_plan(self._where)
            except Exception:  # no plan to read: no live counters, the run goes on
                self._plan = ()
            self._total = getattr(self._plan, "n", None) or sum(s.size for s in self._plan)
            self._committed, self._committed_samples = ShardFlags(len(self._plan)), 0
            files = self._scan()
            try:
                attempted = attempted_shards(self._where)
            except Exception:  # a bucket out of reach: attempts count from 1 (the run goes on, as _scan's)
                attempted = {}
            self._attempts_before = {
                i: attempts_of(self._where, i, attempted) for i in attempted if i not in self._committed
            }
            self._seen_errors = set(files.errors)
            self._samples_at_start = self._committed_samples
            self._history = deque([(self._run_began, self._samples_at_start)])
            self.record["phase"] = "running"
            self.record["replacing"] = False  # the store has been replaced by now
        if self.display is not None:
            self.display.start(total_shards, total_samples, done_shards, done_samples)
        self.poll()
        self._thread = threading.Thread(target=self._loop, name="pipeline-live", daemon=True)
        self._thread.start()

    def advance(self, record) -> None:
        with self._lock:
            self._commit(record.shard_id)
            self._failed.discard(record.shard_id)
            self._running.pop(record.shard_id, None)
            due = time.monotonic() - self._last_poll >= 20 * self._poll_seconds  # a small store: every commit
        if due:
            self.poll()
        else:  # shards may commit hundreds a second: the counters move now, the listing waits its turn
            self._show(self._fresh_snapshot())
        if self.display is not None and not hasattr(self.display, "update"):
            self.display.advance(record)

    def fail(self, shard, error: str, attempts: int | None = None) -> None:
        """Say the shard failed for good; ``attempts``: this run's count of them, as the executor made them."""
        self.poll()  # lines of its earlier attempts first
        with self._lock:
            self._failed.add(shard.id)
            self._running.pop(shard.id, None)
            with contextlib.suppress(Exception):  # the storage is out of reach: the executor's count stands
                attempts = max(self._attempt_in_run(shard.id, None), attempts or 0)
        self._message(
            f"shard {shard.id}: attempt {attempts}/{self.tries} failed, giving up: {error_line(error)} "
            f"(traceback: pipeline inspect {self._where} --shard {shard.id})"
        )
        self.poll()
        if self.display is not None and not hasattr(self.display, "update"):
            self.display.fail(shard, error)

    def stop(self) -> None:
        self._halt()
        with contextlib.suppress(Exception):
            self.poll()  # the display's last word: where the run ended
        with self._lock:
            self.record["phase"] = "finalizing"
        self._publish(force=True)
        if self.display is not None:
            self.display.stop()

    def _halt(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
            self._thread = None

    def _loop(self) -> None:
        # a poll lists _shards/ (a marker per committed shard): at a million shards that takes a while,
        # so the poll waits 20 times as long as it took and costs the driver at most ~5% of a core
        while not self._stop.wait(self._poll_wait()):
            try:
                self.poll()
            except Exception:  # a progress display must never break a run
                pass

    # -- polling

    def _scan(self) -> _Files:
        """List ``_shards/`` once: count the commit markers as they pass, keep the few other names.

        Streamed from a folder (``os.scandir``): a store of a million committed
        shards is never held as names. A listing that fails (a bucket out of
        reach) leaves what it found so far: the run goes on.
        """
        files = _Files()
        with contextlib.suppress(Exception):
            for name in marker_names(self._where):
                stem, _, ext = name.partition(".")
                if not stem.isdigit():
                    continue
                if ext == "json":
                    self._commit(int(stem))
                elif ext == "progress":
                    files.progress.append(int(stem))
                elif ext.endswith(".error"):
                    files.errors.add(name)
        return files

    def _commit(self, shard_id: int) -> None:
        if self._committed.add(shard_id):
            self._committed_samples += self._plan[shard_id].size

    def _attempt_in_run(self, shard_id: int, attempt: int | None) -> int:
        from .store import attempt_count

        if attempt is None:
            attempt = attempt_count(self._where, shard_id)
        return max(1, attempt - self._attempts_before.get(shard_id, 0))

    def poll(self) -> Snapshot | None:
        """Look at the workers' files once: update the counters, print new attempt errors, feed the display."""
        if not self._plan:
            return None
        lines = []
        began = self._last_poll = time.monotonic()
        with self._lock:
            files = self._scan()
            for name in sorted(files.errors - self._seen_errors):
                self._seen_errors.add(name)
                error = _get_json(_in_markers(self._where, name))
                if not error or error.get("t", 0) < self._run_began:
                    continue
                shard_id = int(error["shard_id"])
                attempt = self._attempt_in_run(shard_id, int(error["attempt"]))
                self._running.pop(shard_id, None)
                if attempt < self.tries and not error.get("final"):  # the last is reported by fail(), with the outcome
                    what = error_line(f"{error.get('type')}: {error.get('message')}")
                    lines.append(f"shard {shard_id}: attempt {attempt}/{self.tries} failed, retrying: {what}")
            running = {}
            for shard_id in files.progress:
                name = f"{shard_id}.progress"
                if shard_id in self._committed or shard_id in self._failed or not 0 <= shard_id < len(self._plan):
                    continue
                progress = _get_json(_in_markers(self._where, name))
                if not progress or progress.get("t", 0) < self._run_began:
                    continue  # left by a worker of an earlier run
                if f"{shard_id}.{progress.get('attempt')}.error" in files.errors:
                    continue  # that attempt failed; a retry has not started yet
                running[shard_id] = min(int(progress.get("done", 0)), self._plan[shard_id].size)
            self._running = running
            snapshot = self._fresh_snapshot()
            self._poll_seconds = time.monotonic() - began
        for line in lines:
            self._message(line)
        self._show(snapshot)
        return snapshot

    def _poll_wait(self) -> float:
        return max(POLL_INTERVAL_S, 20 * self._poll_seconds)

    def _fresh_snapshot(self) -> Snapshot:
        with self._lock:
            snapshot = self._snapshot()
            self.record["progress"] = dict(vars(snapshot))  # a flat copy (asdict deep-copies: slow per commit)
        return snapshot

    def _show(self, snapshot: Snapshot) -> None:
        if self.display is not None and hasattr(self.display, "update"):
            self.display.update(snapshot)
        self._publish()

    def _snapshot(self) -> Snapshot:
        now = time.time()
        done = self._committed_samples + sum(self._running.values())
        total = self._total
        history = self._history
        if not history or history[-1][1] != done:
            if len(history) >= 2 and now - history[-2][0] < HISTORY_STEP_S:
                history[-1] = (now, done)  # a point per quarter second: hundreds of commits a second stay bounded
            else:
                history.append((now, done))
        while len(history) > 2 and history[1][0] < now - RATE_WINDOW_S:
            history.popleft()
        first_t, first_done = history[0]
        rate = (done - first_done) / (now - first_t) if done > first_done and now > first_t else 0.0
        if rate == 0.0 and done > self._samples_at_start and now > self._run_began:
            rate = (done - self._samples_at_start) / (now - self._run_began)
        eta = (total - done) / rate if rate > 0 else (0.0 if done >= total else None)
        failed = sum(1 for i in self._failed if i not in self._committed)
        running = len(self._running)
        return Snapshot(
            unit=self.unit,
            shards=len(self._plan),
            shards_done=len(self._committed),
            shards_running=running,
            shards_pending=len(self._plan) - len(self._committed) - running - failed,
            shards_failed=failed,
            samples=total,
            samples_done=done,
            samples_per_second=round(rate, 2),
            eta_seconds=None if eta is None else round(eta, 1),
            elapsed_seconds=round(now - self._run_began, 1),
        )

    # -- output

    def _message(self, text: str) -> None:
        if self.display is None:
            return
        if hasattr(self.display, "message"):
            self.display.message(text)

    def _publish(self, force: bool = False) -> None:
        now = time.time()
        with self._lock:
            if not force and now - self._last_record < RECORD_INTERVAL_S:
                return
            self._last_record = now
            self.record["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(now))
            self.record["updated_unix"] = round(now, 3)
            record = dict(self.record)
        with contextlib.suppress(Exception):  # a record that cannot be written never stops the run
            put_record(self._where, record)


# ------------------------------------------------------------------ what `pipeline status` says


def live_status(store: str | Path) -> tuple[str, dict[str, Any] | None]:
    """The store's state as far as drivers go, and what is known of its driver.

    Returns ``(state, driver)``: state ``running`` (a driver holds the lock, or
    the lease of a URL store), ``stale`` (a driver record is left but no
    driver holds the lock: it was killed or its machine went away) or
    ``idle`` (neither); ``driver`` is the record (or, while a driver starts
    and has not published one, what the lock or lease says) with ``alive``
    added, or None.
    """
    holder = lock_holder(store)
    record = get_record(store)
    if holder is not None:
        same = (
            record is not None and record.get("pid") == holder.get("pid") and record.get("host") == holder.get("host")
        )
        if record is None or not same:  # starting, or an older driver's leftover record
            record = {
                "host": holder.get("host"),
                "pid": holder.get("pid"),
                "started": holder.get("since"),
                "phase": "starting",
                "replacing": None,
                "progress": None,
            }
        driver = {**record, "alive": True}
        return "running", driver
    if record is not None:
        return "stale", {**record, "alive": False}
    return "idle", None


STATUS_EXIT_CODES = {"complete": 0, "incomplete": 1, "stale": 1, "running": 3}


def store_status(store: str | Path) -> dict[str, Any]:
    """What ``pipeline status STORE`` reports (and prints as ``--json``): the store's counts, its state, its driver.

    The keys of ``store.summarize`` (the store on disk: shards done / failed /
    pending, samples) plus ``state`` (``running``, ``stale``, ``complete`` or
    ``incomplete``) and ``driver`` (None, or its record: host, pid, started,
    command, cwd, phase, replacing, updated, alive, and ``progress``: the live
    counters of ``Snapshot``). ``complete`` is False while a driver replaces the
    store (``--overwrite``) or has not said yet what it does. Raises
    ``StoreError`` when there is no store and no driver.
    """
    from .store import StoreError, summarize

    state, driver = live_status(store)
    try:
        counts = summarize(store)
    except (StoreError, FileNotFoundError):  # FileNotFoundError: a bucket store is created in place, object by object
        if state != "running":
            raise
        counts = {
            "path": str(store),
            "name": "?",
            "complete": False,
            "shards": 0,
            "done": 0,
            "failed": 0,
            "pending": 0,
            "samples_done": 0,
            "samples": 0,
            "unit": "samples",
            "failed_shards": [],
            "pending_shards": [],
        }  # the driver has not created the store yet (or not all of it)
    record = driver or {}  # running and stale always come with a driver record
    if state == "running":
        counts["complete"] = bool(counts["complete"]) and record.get("phase") in ("running", "finalizing")
    elif state == "stale" and counts["complete"] and not record.get("replacing"):
        state = "complete"  # it ended after the store was complete (or before it touched it)
    elif state == "stale":
        counts["complete"] = False
    else:
        state = "complete" if counts["complete"] else "incomplete"
    if driver is not None and driver.get("updated_unix"):
        driver["updated_seconds_ago"] = round(max(0.0, time.time() - driver["updated_unix"]), 1)
    return {**counts, "state": state, "driver": driver}
