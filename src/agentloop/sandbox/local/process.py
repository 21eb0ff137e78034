"""Service processes: start (own process group, timestamped log), health with backoff, stop, liveness.

Every process is started with `start_new_session=True`, so it leads its own process group and
stopping it (SIGTERM to the group, SIGKILL after a grace period) leaves nothing behind.
Liveness compares the pid's start time (from /proc) with the recorded one, so a recycled pid is never
mistaken for ours and never killed.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_exponential

from agentloop import processes
from agentloop.errors import DeployError
from agentloop.processes import ProcessRecord
from agentloop.sandbox.local.stamp import tail

log = logging.getLogger(__name__)

_HASH_SKIP_DIRS = {"__pycache__", ".git", "node_modules", ".venv", ".pytest_cache", ".mypy_cache"}
_HASH_SKIP_SUFFIXES = (".pyc", ".pyo")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def listening_socket() -> socket.socket:
    """A loopback socket already listening, to hand to the router: its port is known and kept."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(512)
    return sock


def spawn_router(
    *, registry: Path, requests_dir: Path, route_header: str, sockets: Mapping[str, socket.socket], log_path: Path,
    upstream_timeout: float | None = None,
) -> ProcessRecord:
    """Start the router process (see router.py) on the given listening sockets, in its own session.
    `upstream_timeout`: seconds to wait for a service's response headers (None: the router's default)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    argv = [
        sys.executable, "-m", "agentloop.sandbox.router", "--registry", str(registry),
        "--requests", str(requests_dir), "--route-header", route_header,
    ]
    if upstream_timeout is not None:
        argv += ["--upstream-timeout", f"{upstream_timeout:g}"]
    for name, sock in sockets.items():
        argv += ["--listen", f"{name}={sock.fileno()}"]
    with log_path.open("ab") as log_file:
        router = subprocess.Popen(
            argv, pass_fds=[sock.fileno() for sock in sockets.values()], start_new_session=True,
            stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file,
        )
    return processes.record_of(router.pid)


def port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def code_hash(root: Path, service_path: str) -> str:
    """sha256 over the relative names and contents of the files under `root/service_path`."""
    digest = hashlib.sha256()
    base = root / service_path
    for directory, dirs, files in os.walk(base):
        dirs[:] = sorted(d for d in dirs if d not in _HASH_SKIP_DIRS)
        for name in sorted(files):
            if name.endswith(_HASH_SKIP_SUFFIXES):
                continue
            path = Path(directory) / name
            digest.update(path.relative_to(base).as_posix().encode() + b"\0")
            try:
                digest.update(path.read_bytes())
            except OSError:
                continue
            digest.update(b"\0")
    return digest.hexdigest()[:16]


@dataclass
class Started:
    process: subprocess.Popen[bytes]
    record: ProcessRecord
    port: int
    log_path: Path


def launch(
    command: Sequence[str],
    *,
    cwd: Path,
    env: Mapping[str, str],
    log_path: Path,
    port: int,
    tag: tuple[str, str, str],
    shown: str = "",
    max_log_mb: int = 64,
) -> Started:
    """Run `command` (argv, already wrapped in its jail) under the stamping launcher; `tag` is
    (registry, sandbox, service); `shown` is the command as the user wrote it, for the log."""
    registry, sandbox, service = tag
    log_path.parent.mkdir(parents=True, exist_ok=True)
    argv = [
        sys.executable, "-m", "agentloop.sandbox.local.stamp", "--log", str(log_path), "--max-mb", str(max_log_mb),
        "--registry", registry, "--sandbox", sandbox, "--service", service, "--", *command,
    ]
    process = subprocess.Popen(
        argv, cwd=cwd, env=dict(env), start_new_session=True,
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    log.info("started %s/%s pid %s port %s: %s", sandbox, service, process.pid, port, shown or command)
    return Started(process, processes.record_of(process.pid), port, log_path)


class _NotReady(Exception):
    pass


class _Exited(Exception):
    pass


def wait_healthy(started: Started, *, service: str, health: str | None, timeout: float) -> None:
    """Poll with exponential backoff until the service is ready: its `health` path answers 2xx, or,
    without one, its port accepts a TCP connection. On crash or timeout stop the process group and
    raise DeployError carrying the exit code and the log tail."""
    url = f"http://127.0.0.1:{started.port}{health}" if health is not None else f"127.0.0.1:{started.port} (TCP)"

    def probe(client: httpx.Client) -> None:
        if started.process.poll() is not None:
            raise _Exited
        if health is None:
            _connect(started.port, timeout=min(2.0, timeout))
            return
        response = client.get(url)
        if response.status_code >= 300:
            raise _NotReady(f"{url} answered {response.status_code}")

    retrying = Retrying(
        retry=retry_if_exception_type((httpx.HTTPError, _NotReady)),
        wait=wait_exponential(multiplier=0.01, max=0.25),
        stop=stop_after_delay(timeout),
        reraise=True,
    )
    try:
        with httpx.Client(trust_env=False, timeout=min(2.0, timeout)) as client:
            retrying(probe, client)
        return
    except _Exited:
        code = started.process.wait()
        _wait_for_log(started.log_path)
        processes.stop(started.record)
        raise DeployError(
            f"service {service!r} exited with code {code} before it was healthy; see {started.log_path}",
            service=service, exit_code=code, log_tail=tail(started.log_path),
        ) from None
    except (httpx.HTTPError, _NotReady) as exc:
        processes.stop(started.record)
        started.process.wait()
        raise DeployError(
            f"service {service!r} not healthy at {url} within {timeout:g}s ({exc}); see {started.log_path}",
            service=service, exit_code=None, log_tail=tail(started.log_path),
        ) from None


def _connect(port: int, *, timeout: float) -> None:
    """A TCP connection to the port, closed at once; _NotReady when nothing accepts it."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout):
            pass
    except OSError as exc:
        raise _NotReady(f"no TCP connection to 127.0.0.1:{port} ({exc.strerror or exc})") from None


def _wait_for_log(path: Path) -> None:
    """The launcher writes its exit line just before exiting; make sure the tail includes it."""
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline and not (path.is_file() and b"[loop] exited" in path.read_bytes()[-200:]):
        time.sleep(0.01)


def tagged_processes(registry: Path) -> list[tuple[int, str]]:
    """(pid, sandbox) of live launchers and routers tagged with this registry (Linux /proc scan)."""
    found: list[tuple[int, str]] = []
    proc = Path("/proc")
    if not proc.is_dir():
        return found
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        args = [part.decode(errors="replace") for part in argv]
        if "--registry" not in args or str(registry) not in args:
            continue
        if "agentloop.sandbox.local.stamp" in args and "--sandbox" in args:
            found.append((int(entry.name), args[args.index("--sandbox") + 1]))
        elif "agentloop.sandbox.router" in args:
            found.append((int(entry.name), "__router__"))
    return found
