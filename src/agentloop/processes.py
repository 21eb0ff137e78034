"""Processes loop started, told apart from a recycled pid by their kernel start time: a record of one,
whether it is still ours, and stopping its whole process group (SIGTERM, then SIGKILL after a grace
period), so a stopped service, suite or jailed command leaves nothing behind."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from pydantic import BaseModel

_STOP_GRACE = 3.0


class ProcessRecord(BaseModel):
    """A process `loop` started; `start_time` tells a live process from a recycled pid."""

    pid: int
    start_time: str | None = None


def start_time(pid: int) -> str | None:
    """The kernel's start time of `pid` (clock ticks since boot), or None when there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    fields = stat.rsplit(")", 1)[1].split()
    # fields[0] is the state (field 3); a zombie has finished and only waits to be reaped.
    return None if fields[0] == "Z" else fields[19]


def record_of(pid: int) -> ProcessRecord:
    return ProcessRecord(pid=pid, start_time=start_time(pid))


def alive(record: ProcessRecord | None) -> bool:
    if record is None:
        return False
    _reap(record.pid)
    now = start_time(record.pid)
    return now is not None and (record.start_time is None or now == record.start_time)


def _reap(pid: int) -> None:
    """Collect our own exited children so they do not linger as zombies."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def stop(record: ProcessRecord | None, *, grace: float = _STOP_GRACE) -> None:
    """Stop the process group led by `record` (if it is still the process we started): SIGTERM, then
    SIGKILL for whatever is left once the leader is gone or the grace period is over."""
    if record is None or not alive(record):
        return
    _signal_group(record.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while alive(record) and time.monotonic() < deadline:
        time.sleep(0.01)
    _signal_group(record.pid, signal.SIGKILL)
    deadline = time.monotonic() + grace
    while (alive(record) or group_members(record.pid)) and time.monotonic() < deadline:
        time.sleep(0.01)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of a process group. Zombies are skipped: in a container the init
    process may take a while to reap them, and they hold no port or file."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(entry.name))
    return members
