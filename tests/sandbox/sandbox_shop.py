"""Helpers for reading the test shop's answers."""

from __future__ import annotations

from collections.abc import Callable


def version(label: str) -> tuple[str, str]:
    return ('VERSION = "base"', f'VERSION = "{label}"')


def chain(payload: dict[str, object]) -> list[str]:
    """The versions along web -> orders -> inventory from a /call response."""
    versions = []
    node: object = payload
    while isinstance(node, dict):
        versions.append(str(node["version"]))
        node = node.get("downstream")
    return versions


def gone(pid: int | None, port: int | None) -> bool:
    """No process with that pid (zombies count as gone) and nothing listening on that port."""
    from agentloop import processes
    from agentloop.sandbox.local import process

    return (pid is None or processes.start_time(pid) is None) and (port is None or not process.port_in_use(port))


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/", 1)[0])


def eventually(read: Callable[[], str], needle: str, seconds: float = 5.0) -> str:
    """`read()` once it contains `needle` (logs are written by another process, a moment later)."""
    import time

    deadline = time.monotonic() + seconds
    text = read()
    while needle not in text and time.monotonic() < deadline:
        time.sleep(0.02)
        text = read()
    return text
