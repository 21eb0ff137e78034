"""Running a jailed command to its end: output kept as a head and a tail, the disk watched, the process
group killed on a stop."""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Finished:
    """A command run to its end (or stopped)."""

    exit_code: int | None
    output: str
    duration: float
    timed_out: bool = False
    truncated: bool = False
    stopped_for: str | None = None  # why loop stopped it, in words for the model and the record


class CappedReader(threading.Thread):
    """Drains a pipe so the child never blocks, keeping the first and last bytes only: a runaway command
    can fill neither loop's memory nor a host disk."""

    def __init__(self, stream: object, *, limit_bytes: int, keep_bytes: int) -> None:
        super().__init__(daemon=True)
        self._stream = stream
        self._head = bytearray()
        self._tail: collections.deque[bytes] = collections.deque()
        self._tail_size = 0
        self._half = max(min(limit_bytes, keep_bytes) // 2, 1024)
        self.total = 0

    def run(self) -> None:
        read = self._stream.read1  # type: ignore[attr-defined]
        while True:
            chunk: bytes = read(65536)
            if not chunk:
                return
            self.total += len(chunk)
            room = self._half - len(self._head)
            if room > 0:
                self._head += chunk[:room]
                chunk = chunk[room:]
            if chunk:
                self._tail.append(chunk)
                self._tail_size += len(chunk)
                while self._tail and self._tail_size - len(self._tail[0]) >= self._half:
                    self._tail_size -= len(self._tail.popleft())

    def text(self, limit_chars: int) -> tuple[str, bool]:
        tail = b"".join(self._tail)[-self._half:]
        kept = len(self._head) + len(tail)
        if kept >= self.total:
            text = (bytes(self._head) + tail).decode("utf-8", errors="replace")
            if len(text) <= limit_chars:
                return text, False
            half = limit_chars // 2
            return f"{text[:half]}\n[... {len(text) - 2 * half} characters cut ...]\n{text[-half:]}", True
        head_text = bytes(self._head).decode("utf-8", errors="replace")[: limit_chars // 2]
        tail_text = tail.decode("utf-8", errors="replace")[-(limit_chars // 2):]
        return f"{head_text}\n[... {self.total - kept} bytes of output cut ...]\n{tail_text}", True


def kill_group(process: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def free_bytes(path: Path | None) -> int | None:
    if path is None:
        return None
    try:
        stats = os.statvfs(path)
    except OSError:
        return None
    return stats.f_bavail * stats.f_frsize
