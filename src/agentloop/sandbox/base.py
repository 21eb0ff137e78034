"""The sandbox protocol. The deploy/validate/diagnose nodes and the CLI see only this."""

from __future__ import annotations

import builtins
from pathlib import Path
from typing import Protocol, runtime_checkable

from agentloop.results import SandboxInfo


@runtime_checkable
class SandboxBackend(Protocol):
    """A shared baseline plus per-run sandboxes that fork only the changed services.

    Implementations: `local` (processes on loopback + a built-in router), `kubernetes`.
    Failures to start or get healthy raise `agentloop.errors.DeployError`.
    """

    name: str

    def baseline_up(self) -> bool:
        """Start the baseline if it is not up. Return True when this call started it, or took it over from
        an owner that was killed: the caller then stops it when done (`baseline_down`)."""
        ...

    def baseline_down(self) -> None:
        ...

    def baseline_status(self) -> dict[str, object]:
        ...

    def create(self, name: str, forks: dict[str, Path], *, log_dir: Path | None = None) -> SandboxInfo:
        """Create sandbox `name` forking each service from the given source directory (a worktree)."""
        ...

    def update(self, name: str, forks: dict[str, Path]) -> SandboxInfo:
        """Restart (or add) the given forks from their source; keep the sandbox and its route key."""
        ...

    def get(self, name: str) -> SandboxInfo | None:
        ...

    def list(self) -> list[SandboxInfo]:
        ...

    def logs(self, name: str, service: str, *, since: float | None = None, until: float | None = None) -> str:
        """A fork's (or, for unforked services, the baseline's) log lines, sliced to [since, until]."""
        ...

    def remove(self, name: str) -> None:
        ...

    def gc(self) -> builtins.list[str]:  # `list` here would be the method above
        """Remove expired sandboxes and orphans; return what was removed."""
        ...
