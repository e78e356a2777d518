"""A killed driver leaves no Ray behind: a watchdog process ends the local Ray a driver started.

``pipeline submit --local`` starts Ray's processes (GCS, raylet, agents) as
children of the driver. When the driver ends normally ``ray.shutdown`` stops
them; when it is killed (SIGKILL, the out-of-memory killer) they would linger
for about a minute. ``watch(pids)`` starts a small process in its own session
that polls the driver every ``POLL_S`` seconds and, once it is gone, kills
those processes and their descendants (each checked by its start time, so a
reused process id is never hit). Linux only (``/proc``); elsewhere it does
nothing.

Run as ``python -m pipeline.watchdog DRIVER_PID PID:START ...``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

POLL_S = 0.5


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, parent pid, start time) of a process from ``/proc``, or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            text = handle.read()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return fields[0], int(fields[1]), int(fields[19])


def alive(pid: int, start: int | None = None) -> bool:
    stat = _stat(pid)
    return stat is not None and stat[0] not in ("Z", "X") and (start is None or stat[2] == start)


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (children, their children, ...)."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            stat = _stat(int(name))
            if stat is not None:
                children.setdefault(stat[1], []).append(int(name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def children_of_this_process() -> list[str]:
    """``PID:START`` of this process's descendants now (what the driver's ``ray.init`` started)."""
    if not os.path.isdir("/proc"):
        return []
    out = []
    for pid in descendants(os.getpid()):
        stat = _stat(pid)
        if stat is not None:
            out.append(f"{pid}:{stat[2]}")
    return out


def watch(pids: list[str]) -> subprocess.Popen | None:
    """Start the watchdog of this driver over ``pids`` (``PID:START``); None when there is nothing to watch."""
    if not pids or not os.path.isdir("/proc"):
        return None
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline.watchdog", str(os.getpid()), *pids],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def main(argv: list[str]) -> None:
    driver = int(argv[0])
    watched = [(int(p), int(s)) for p, s in (item.split(":") for item in argv[1:])]
    while alive(driver) and any(alive(p, s) for p, s in watched):
        time.sleep(POLL_S)
    targets = []
    for pid, start in watched:
        if alive(pid, start):
            targets.extend(descendants(pid))
            targets.append(pid)
    for pid in targets:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:])
