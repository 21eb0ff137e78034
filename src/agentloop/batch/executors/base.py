"""What the batch needs from an executor."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from agentloop.batch.run import BatchItem
    from agentloop.runs.folder import RunSummary


class RunHandle(Protocol):
    def poll(self) -> int | None:
        """The exit code once the run has ended, else None."""

    def interrupt(self) -> None:
        """Ask the run to stop cleanly (sandbox removed, status interrupted, resumable)."""

    def kill(self) -> None:
        """Stop the run at once."""

    def close(self) -> None:
        """Release what watching the run held (log files, connections)."""


class Executor(Protocol):
    def start(self, item: BatchItem) -> RunHandle:
        """Start (or resume, when the run already has a record) the run of `item`."""

    def summary(self, run_id: str) -> RunSummary | None:
        """The run's own summary, once it wrote one."""

    def last_node(self, run_id: str) -> str:
        """The graph node the run was last in, for the live table."""
