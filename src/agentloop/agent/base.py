"""The coding-agent protocol the edit node sees, and the model clients it talks to (with their optional
capability, `Seekable`, asked with `isinstance`)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from pydantic import BaseModel, Field

from agentloop.results import EditResult, Issue, Usage


class ModelClient(Protocol):
    """Answers one Messages API request with one response object (as JSON): the Anthropic API, a
    cassette being replayed, or either being recorded."""

    model: str

    def create(self, request: dict[str, Any]) -> dict[str, Any]:
        ...


@runtime_checkable
class Seekable(Protocol):
    """A model client whose answers have positions (a cassette replayed or recorded), so that a resumed run
    goes on from the model call where its last finished iteration ended."""

    def seek(self, position: int) -> None:
        """Continue from call `position` (the calls the run has already made)."""
        ...


class EditTask(BaseModel):
    """Everything one edit turn is given. `failures`, `logs` and `diff` are empty on the first turn."""

    run_id: str
    worktree: Path
    repo: Path = Field(description="The user's repository the worktree belongs to; loop's git trusts only it.")
    issue: Issue
    iteration: int
    services: dict[str, str] = Field(default_factory=dict, description="service -> path in the repo")
    checks: list[str] = Field(default_factory=list, description="Names/commands of suites and plans.")
    failures: str = ""
    logs: str = ""
    diff: str = ""
    sandbox_env: dict[str, str] = Field(default_factory=dict)
    usage_so_far: Usage = Field(default_factory=Usage)
    deadline: float | None = Field(default=None, description="Epoch seconds when the minutes budget ends.")


UsageCallback = Callable[[Usage], None]


class Coder(Protocol):
    """Changes the worktree for one iteration. A spent budget (tokens, dollars, the deadline) ends the
    edit with `stop_reason="budget"`; model errors that survive retries with `stop_reason="error"`."""

    def edit(self, task: EditTask, on_usage: UsageCallback | None = None) -> EditResult:
        ...
