"""The forge protocol the intake and publish nodes see, the optional capabilities a forge may also have
(`ListsIssues`, `HoldsSecrets`, `DraftsPullRequests`, `RunsChecks`; asked with `isinstance`, never by
the forge's class), and the marks that make its side effects idempotent.

Every comment and pull request a run makes carries its `Step` (run and node:iteration) as a hidden HTML
comment, so that a run killed right after posting and then resumed finds what it already made and edits
or skips it instead of posting it again; a push is a no-op when the remote branch already has the commit.
"""

from __future__ import annotations

import logging
import os
import re
import signal
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

from agentloop.git import Worktree
from agentloop.results import Issue, PullRequest

log = logging.getLogger(__name__)

# the run ids `loop fix` accepts (runner.prepare) and node names: nothing that could close the marker
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,80}")
# A test-only hook: the process SIGKILLs itself right after the named side effect (`comment:intake`,
# `pull:publish`, `push`...), the moment a crash would make a resumed run repeat it.
KILL_AFTER = "LOOP_TEST_KILL_AFTER"


@dataclass(frozen=True)
class Step:
    """The run and the step (node and iteration) a side effect belongs to."""

    run: str
    node: str
    iteration: int = 0

    def __post_init__(self) -> None:
        if not (_ID.fullmatch(self.run) and _ID.fullmatch(self.node)):
            raise ValueError(f"run {self.run!r}, step {self.node!r}: letters, digits, '.', '_' and '-' only")

    @property
    def marker(self) -> str:
        """What a comment or pull request body carries: invisible on GitHub, found again on resume."""
        return f"{self.run_marker}{self.node}:{self.iteration} -->"

    @property
    def run_marker(self) -> str:
        """The marker's prefix shared by every step of the run."""
        return f"<!-- loop:run={self.run} step="


def after_side_effect(what: str) -> None:
    """Called right after a comment, a pull request or a push; see KILL_AFTER."""
    if os.environ.get(KILL_AFTER) == what:
        log.warning("%s=%s: killing this process now", KILL_AFTER, what)
        os.kill(os.getpid(), signal.SIGKILL)


@dataclass(frozen=True)
class ReviewNote:
    """One piece of review feedback on a run's pull request: an inline comment (file and line), a review's
    body or a `/loop <text>` comment. Untrusted text, like an issue's."""

    author: str
    body: str
    path: str | None = None
    line: int | None = None


class Forge(Protocol):
    kind: str

    def get_issue(self, number: int) -> Issue:
        """Raise IssueNotFound when there is no such issue."""
        ...

    def find_pull_request(self, branch: str) -> PullRequest | None:
        """The PR already opened for `branch` (open or not), so that a resumed run never opens a second one."""
        ...

    def publish(
        self, *, worktree: Worktree, branch: str, title: str, body: str, draft: bool, issue: Issue,
        step: Step | None = None,
    ) -> PullRequest:
        """Push the worktree's branch (already committed; a no-op when the remote has it) and open the pull
        request, or return the one already open for the branch. Its body carries `step`'s marker."""
        ...

    def comment(self, issue: Issue, body: str, *, step: Step | None = None) -> None:
        """Post the run's comment for `step` on the issue; a comment of that step already there is not posted
        again (the local forge skips it, GitHub edits the run's status comment in place)."""
        ...


@runtime_checkable
class ListsIssues(Protocol):
    """A forge that can list its open issues (`loop batch --label`)."""

    def list_issues(self, label: str | None = None) -> list[Issue]:
        """Open issues, optionally only those with `label`."""
        ...


@runtime_checkable
class HoldsSecrets(Protocol):
    """A forge holding credentials that a run must mask wherever it writes or shows text."""

    def secret_values(self) -> list[str]:
        """The values never to show (raise LoopError when they are not available yet)."""
        ...


@runtime_checkable
class DraftsPullRequests(Protocol):
    """A forge whose pull request is the run's home: opened as a draft (`Forge.publish(draft=True)`) after
    the first deploy, its body rewritten after each iteration, marked ready for review only when proven."""

    def update_pull_request(self, pull: PullRequest, *, body: str, ready: bool, step: Step | None = None
                            ) -> PullRequest:
        """Rewrite the body (carrying `step`'s marker) and, when `ready`, mark a draft ready for review
        (never the other way). Repeating it is harmless: a resumed run does."""
        ...


CHECK_NAME = "loop / validation"
Conclusion = Literal["success", "failure", "neutral"]


@dataclass(frozen=True)
class Annotation:
    """A failing test at its file and line, as a check run shows it on the diff."""

    path: str
    line: int
    title: str
    message: str


@dataclass(frozen=True)
class CheckReport:
    """What a finished check run says: its conclusion, a title, the summary (markdown) and annotations."""

    conclusion: Conclusion
    title: str
    summary: str
    annotations: list[Annotation] = field(default_factory=list)


@runtime_checkable
class RunsChecks(Protocol):
    """A forge that can show the run's validation as a check run (`CHECK_NAME`) on the head commit."""

    def start_check(self, head_sha: str, *, step: Step) -> str | None:
        """The check run in progress on `head_sha` (the one `step` already made, found again on resume);
        None when this forge cannot make checks (a token without the permission): never an error."""
        ...

    def finish_check(self, check_id: str, report: CheckReport) -> None:
        """Complete the check run with `report` (logged, never raised, when the forge refuses)."""
        ...
