"""Exceptions with meaning. Each carries a message a user can act on; the CLI prints it in one line."""

from __future__ import annotations


class LoopError(Exception):
    """Base of every error `loop` reports to a user (exit code 2 at the CLI)."""

    exit_code = 2


class ConfigError(LoopError):
    """`loop.yaml` is missing or invalid; the message names the file and the field."""


class IssueNotFound(LoopError):
    """The issue reference does not resolve to an issue on the forge."""


class RepoError(LoopError):
    """The target repository is not usable (not git, dirty, no base branch)."""


class RunNotFound(LoopError):
    """No run record with that id."""


class NotSupportedYet(LoopError):
    """A documented capability that this version does not build yet."""


class DeployError(LoopError):
    """A fork crashed or never became healthy. Carries what the agent needs to fix it."""

    def __init__(self, message: str, *, service: str = "", exit_code: int | None = None, log_tail: str = ""):
        super().__init__(message)
        self.service = service
        self.process_exit_code = exit_code
        self.log_tail = log_tail


class ModelError(LoopError):
    """The model could not be reached or answered unusably after retries."""


class RunInterrupted(LoopError):
    """The run was stopped on request (Ctrl-C, SIGTERM, `/loop stop`); it can be resumed."""


class WorktreeTampered(LoopError):
    """A run's worktree `.git` is no longer the file loop made (replaced, removed, redirected): loop runs
    no git there, and the run stops."""
