"""Timestamped service logs: the launcher that prefixes each output line, and time slicing.

Every service process (baseline or fork) is started as
``python -m agentloop.sandbox.local.stamp --log FILE --max-mb M --registry R --sandbox S --service N -- JAIL…``.
The launcher runs CMD with stdout+stderr on a pipe and writes each line to FILE with an ISO-8601 UTC
time prefix, so `logs --since/--until` can slice by time; past M MB the rest is dropped. It outlives
the `loop` command that started it
(the baseline is shared between commands), which is why this is a process and not a thread. It exits
with the service's exit code (128+N when the service died of signal N) after writing a final
``[loop] exited with code N`` line. The `--registry/--sandbox/--service` arguments are never read here:
they tag the process so `gc` can find processes whose records are gone.

Each line has high-confidence secret patterns masked (`agentloop.redact`) before it reaches the file: a
service's log is kept at rest (the run record, the baseline's state) and quoted to the model. Loop's
known secret values are not given to this process (it runs beside the service); the run masks those in
its copy of the logs when the sandbox is removed.

Otherwise stdlib only, so that starting a service costs as little as possible.
"""

from __future__ import annotations

import argparse
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

EXIT_MARK = "[loop] exited with code"


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


def _line_time(line: str) -> float | None:
    head = line.split(" ", 1)[0]
    if len(head) < 20 or head[4:5] != "-" or "T" not in head:
        return None
    try:
        return datetime.fromisoformat(head).timestamp()
    except ValueError:
        return None


def slice_log(path: Path, since: float | None = None, until: float | None = None) -> str:
    """The lines of `path` stamped within [since, until] (epoch seconds); unstamped lines (a traceback
    written without the launcher) belong to the stamped line before them."""
    if not path.is_file():
        return ""
    kept: list[str] = []
    inside = since is None
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines(keepends=True):
        stamp = _line_time(line)
        if stamp is not None:
            inside = (since is None or stamp >= since) and (until is None or stamp <= until)
        if inside:
            kept.append(line)
    return "".join(kept)


def tail(path: Path, lines: int = 40) -> str:
    if not path.is_file():
        return ""
    return "".join(path.read_text(encoding="utf-8", errors="replace").splitlines(keepends=True)[-lines:])


_LINE_BYTES = 64 * 1024
_QUEUED_LINES = 4096  # read ahead of the writer; beyond it the service waits on its pipe, as it would anyway


def _copy_stamped(source: IO[bytes], log: IO[bytes], max_bytes: int,
                  mask: Callable[[str], str] | None = None) -> None:
    """Stamp each line into `log` (through `mask`) until it holds `max_bytes`; after that the output is
    still drained (a service blocked on a full pipe would hang) but dropped, with one line saying so.

    A line is stamped when it is read; masking and writing happen on a thread of their own, so that the
    moment it takes to load the detectors delays no line's time."""
    lines: queue.Queue[tuple[bytes, bytes] | None] = queue.Queue(maxsize=_QUEUED_LINES)
    writer = threading.Thread(target=_write_lines, args=(lines, log, max_bytes, mask), daemon=True)
    writer.start()
    for raw in iter(lambda: source.readline(_LINE_BYTES), b""):
        lines.put((now_iso().encode(), raw))
    lines.put(None)
    writer.join()


def _write_lines(lines: queue.Queue[tuple[bytes, bytes] | None], log: IO[bytes], max_bytes: int,
                 mask: Callable[[str], str] | None) -> None:
    written = log.tell()
    capped = False
    while (item := lines.get()) is not None:
        if capped:
            continue
        stamp, raw = item
        body = raw.rstrip(b"\r\n")
        if mask is not None:
            body = mask(body.decode("utf-8", errors="surrogateescape")).encode("utf-8", errors="surrogateescape")
        line = stamp + b" " + body + b"\n"
        if written + len(line) > max_bytes:
            capped = True
            line = f"{now_iso()} [loop] log capped at {max_bytes // (1024 * 1024)} MB; later output dropped\n".encode()
        log.write(line)
        log.flush()
        written += len(line)


def _lazy_mask() -> Callable[[str], str]:
    """The secret mask, loaded with the first line: the detectors take a moment to import, which a
    service that logs nothing never pays, and the others pay while they start."""
    loaded: list[Callable[[str], str]] = []

    def mask(line: str) -> str:
        if not loaded:
            from agentloop.redact import Redactor

            loaded.append(Redactor().line_mask())
        return loaded[0](line)

    return mask


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agentloop.sandbox.local.stamp")
    parser.add_argument("--log", required=True, type=Path)
    parser.add_argument("--max-mb", type=int, default=64)
    parser.add_argument("--registry", default="")
    parser.add_argument("--sandbox", default="")
    parser.add_argument("--service", default="")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    # The whole process group gets SIGTERM from `stop`; keep running until the service's output ends
    # so its last lines and its exit code reach the log. A handler (unlike SIG_IGN) is not inherited
    # across exec, so the service still gets the default SIGTERM.
    signal.signal(signal.SIGTERM, lambda signum, frame: None)
    args.log.parent.mkdir(parents=True, exist_ok=True)
    with args.log.open("ab") as log:
        child = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        assert child.stdout is not None
        _copy_stamped(child.stdout, log, args.max_mb * 1024 * 1024, mask=_lazy_mask())
        code = child.wait()
        code = 128 - code if code < 0 else code
        log.write(f"{now_iso()} {EXIT_MARK} {code}\n".encode())
    return code


if __name__ == "__main__":
    sys.exit(main())
