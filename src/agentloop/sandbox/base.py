"""The sandbox protocol. The deploy/validate/diagnose nodes and the CLI see only this: `SandboxBackend`,
the optional capabilities a backend may also have (`Plannable`, `Detachable`; asked with `isinstance`,
never by the backend's class), and `baseline_held`, the one way to use a baseline for a while."""

from __future__ import annotations

import builtins
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

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


@runtime_checkable
class Plannable(Protocol):
    """A backend that can say what `create` would do without doing it (`loop sandbox create --dry-run`)."""

    def plan(self, name: str, forks: dict[str, Path]) -> builtins.list[dict[str, Any]]:
        """Documents for people to review: the objects a sandbox would apply, or the processes it would
        start. Nothing is applied or started; secret-looking values may still be in them (the caller masks)."""
        ...


@runtime_checkable
class Detachable(Protocol):
    """A backend whose sandboxes and baseline belong to the process that made them (its `gc` removes them
    once that process is gone), which can make them belong to no process instead."""

    def detach(self) -> None:
        """What this backend makes from now on outlives this process: it lives until `rm`, `baseline down`
        or its TTL (`loop sandbox create`, `loop sandbox baseline up`)."""
        ...


@runtime_checkable
class Extendable(Protocol):
    """A backend that can keep a sandbox past the run that made it: a published run's, for its review."""

    def extend(self, name: str, until: float) -> SandboxInfo | None:
        """Keep sandbox `name` until `until` (epoch seconds), owned by no process (gc removes it only once
        it expires, or `remove`); None when there is no such sandbox."""
        ...


def _always() -> bool:
    return True


class _Held(AbstractContextManager[bool]):
    # A class, not a generator: a hold entered on an ExitStack that is never closed stops nothing when it is
    # garbage collected, as a suspended generator's `finally` would.
    def __init__(self, backend: SandboxBackend | None, stop_if: Callable[[], bool]) -> None:
        self._backend = backend
        self._stop_if = stop_if
        self._started = False

    def __enter__(self) -> bool:
        self._started = self._backend is not None and self._backend.baseline_up()
        return self._started

    def __exit__(self, *exc_info: object) -> None:
        if self._started and self._backend is not None and self._stop_if():
            self._started = False
            self._backend.baseline_down()


def baseline_held(
    backend: SandboxBackend | None, *, stop_if: Callable[[], bool] = _always
) -> AbstractContextManager[bool]:
    """The baseline for the length of a `with` block: started unless it is up; the block gets whether this
    call started it (or took it over from a killed owner). Leaving the block in any way -- at its end, on an
    error, on Ctrl-C or SIGTERM -- stops a baseline started here, when `stop_if()` says nothing else still
    needs it; one found up is left as it was. An error while stopping propagates. With no backend (no
    services) there is nothing to hold: the block gets False."""
    return _Held(backend, stop_if)
