"""The forge protocol the intake and publish nodes see."""

from __future__ import annotations

from typing import Protocol

from agentloop.git import Worktree
from agentloop.records import Issue, PullRequest


class Forge(Protocol):
    kind: str

    def get_issue(self, number: int) -> Issue:
        """Raise IssueNotFound when there is no such issue."""
        ...

    def find_pull_request(self, branch: str) -> PullRequest | None:
        """The PR already opened for `branch`, so that a resumed run never opens a second one."""
        ...

    def publish(
        self, *, worktree: Worktree, branch: str, title: str, body: str, draft: bool, issue: Issue
    ) -> PullRequest:
        """Push the worktree's branch (already committed) and open the pull request."""
        ...

    def comment(self, issue: Issue, body: str) -> None:
        """Post (or update in place) the run's status comment on the issue."""
        ...
