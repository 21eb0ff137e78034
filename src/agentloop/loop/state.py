"""The graph's state. Plain JSON-able values only, so every checkpointer (SQLite, Postgres) stores it.

Records from `agentloop.results` are kept as dicts (``model_dump(mode="json")``). `attempts` holds one
entry per iteration; the nodes of an iteration fill in the last entry (see `nodes._common.update_attempt`).
"""

from __future__ import annotations

from typing import Any

# not typing.TypedDict: pydantic (LangGraph Server's schemas, Studio) needs this one before Python 3.12
from typing_extensions import TypedDict

from agentloop.runs.folder import RunStatus


class Attempt(TypedDict, total=False):
    """One iteration: what the agent did, how the deploy went, what validation said, what logs showed."""

    iteration: int
    edit: dict[str, Any]  # EditResult
    changed_files: list[str]
    deploy: dict[str, Any]  # DeployResult
    verdict: dict[str, Any] | None  # Verdict
    diagnosis: dict[str, Any] | None  # Diagnosis
    started_at: float
    ended_at: float


class RunState(TypedDict, total=False):
    run_id: str
    repo: str  # the user's repository (never edited)
    issue: dict[str, Any]  # Issue
    model: str
    branch: str  # loop/<issue>-<run>
    worktree: str  # the run's git worktree, where every edit happens
    base_commit: str
    started_at: float
    iteration: int  # 1-based; the iteration being worked on
    sandbox: dict[str, Any] | None  # SandboxInfo once deployed
    deploy: dict[str, Any] | None  # the latest DeployResult
    verdict: dict[str, Any] | None  # the latest Verdict
    diagnosis: dict[str, Any] | None  # the latest Diagnosis, handed to the next edit
    attempts: list[Attempt]
    usage: dict[str, Any]  # Usage, summed over the run
    budget_spent: str | None  # why the run must stop, when it must
    pull_request: dict[str, Any] | None  # PullRequest once published
    status: RunStatus
    error: str | None
    confinement: dict[str, Any]  # how agent-written code was confined (Confinement.describe())
