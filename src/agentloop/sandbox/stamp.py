"""Timestamped service logs: the launcher that prefixes each output line, and time slicing.

Every service process (baseline or fork) is started as
``python -m agentloop.sandbox.stamp --log FILE --registry R --sandbox S --service N -- sh -c CMD``.
The launcher runs CMD with stdout+stderr on a pipe and writes each line to FILE with an ISO-8601 UTC
time prefix, so `logs --since/--until` can slice by time. It outlives the `loop` command that started it
(the baseline is shared between commands), which is why this is a process and not a thread. It exits
with the service's exit code (128+N when the service died of signal N) after writing a final
``[loop] exited with code N`` line. The `--registry/--sandbox/--service` arguments are never read here:
they tag the process so `gc` can find processes whose records are gone.

Stdlib only, so that starting a service costs as little as possible.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
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


def _copy_stamped(source: IO[bytes], log: IO[bytes]) -> None:
    for raw in iter(source.readline, b""):
        log.write(now_iso().encode() + b" " + raw.rstrip(b"\r\n") + b"\n")
        log.flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agentloop.sandbox.stamp")
    parser.add_argument("--log", required=True, type=Path)
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
        _copy_stamped(child.stdout, log)
        code = child.wait()
        code = 128 - code if code < 0 else code
        log.write(f"{now_iso()} {EXIT_MARK} {code}\n".encode())
    return code


if __name__ == "__main__":
    sys.exit(main())
