"""The webhooks of a run's pull request: what asks for another iteration, and what ends its review.

- `issue_comment` on a pull request (the payload's issue has `pull_request`): `/loop fix`, `/loop retry`
  or `/loop <text>` asks for a review iteration ("review"); `/loop stop` stops it. Only from an owner,
  member or collaborator, never from a bot or loop's own status comment: the rules of `/loop` on issues.
- `pull_request_review` submitted with state `changes_requested` by a member, whose body mentions loop
  (`loop`, `@loop`, `/loop`): a review iteration.
- `pull_request` closed (merged or not) on a run's branch `loop/<issue>-<run>`: its sandbox goes ("close").

A job's issue number is the pull request's: one review job per pull request at a time, apart from the
issue's own jobs. What the iteration is told (the review comments, with file and line) is read from GitHub
by the worker when the job runs, not from the payload.
"""

from __future__ import annotations

import re
from typing import Any

from agentloop.app.events import Comment, IssueNumber, Short, User, _Event, _Model, parse_event
from agentloop.forge.github import STATUS_MARKER

REVIEW_EVENTS = ("pull_request", "pull_request_review")
_MENTION = re.compile(r"(?<![\w-])[@/]?loop\b", re.IGNORECASE)
_RUN_BRANCH = re.compile(r"loop/(?:\d+|file)-[A-Za-z0-9][A-Za-z0-9._-]{0,80}")

Command = tuple[str, str, int, int | None]


class _PullIssue(_Model):
    number: IssueNumber
    pull_request: dict[str, Any] | None = None


class PullCommentEvent(_Event):
    issue: _PullIssue
    comment: Comment


class _Head(_Model):
    ref: Short = ""


class _Pull(_Model):
    number: IssueNumber
    head: _Head = _Head()


class PullRequestEvent(_Event):
    pull_request: _Pull


class _Review(_Model):
    body: str | None = None
    state: Short = ""
    user: User | None = None
    author_association: Short = ""


class PullRequestReviewEvent(_Event):
    pull_request: _Pull
    review: _Review


def on_pull_request(event: str, payload: dict[str, Any]) -> bool:
    """Whether this delivery is about a pull request (these rules), not an issue."""
    issue = payload.get("issue")
    return event in REVIEW_EVENTS or (event == "issue_comment" and isinstance(issue, dict)
                                      and isinstance(issue.get("pull_request"), dict))


def review_command(event: str, payload: dict[str, Any], *, app_slug: str | None, trusted: frozenset[str]
                   ) -> Command | str:
    """(action, repo, pull request number, installation id), or why the delivery is ignored. Raises
    `PayloadError` for a payload missing a field these rules read."""
    if event == "pull_request":
        closed = parse_event(PullRequestEvent, payload)
        if closed.action != "closed":
            return f"pull_request.{closed.action}"
        if not _RUN_BRANCH.fullmatch(closed.pull_request.head.ref):
            return "not a loop run's pull request"
        return "close", closed.repository.full_name, closed.pull_request.number, _installation(closed)
    if event == "pull_request_review":
        reviewed = parse_event(PullRequestReviewEvent, payload)
        review = reviewed.review
        if reviewed.action != "submitted" or review.state.lower() != "changes_requested":
            return "a review that does not request changes"
        if not _MENTION.search(review.body or ""):
            return "a review that does not mention loop"
        refused = _refused(review.user, review.author_association, review.body or "", app_slug, trusted)
        return refused or ("review", reviewed.repository.full_name, reviewed.pull_request.number,
                           _installation(reviewed))
    comment_event = parse_event(PullCommentEvent, payload)
    if comment_event.action != "created":
        return f"issue_comment.{comment_event.action}"
    text = (comment_event.comment.body or "").strip()
    words = text.split()
    if not words or words[0] != "/loop":
        return "comment is not a /loop command"
    comment = comment_event.comment
    refused = _refused(comment.user, comment.author_association, text, app_slug, trusted)
    if refused:
        return refused
    action = "stop" if words[1:2] == ["stop"] else "review"
    return action, comment_event.repository.full_name, comment_event.issue.number, _installation(comment_event)


def _refused(user: User | None, association: str, text: str, app_slug: str | None, trusted: frozenset[str]
             ) -> str | None:
    login = user.login if user else ""
    if (user and user.type == "Bot") or STATUS_MARKER in text or (app_slug and login == f"{app_slug}[bot]"):
        return f"comment from a bot ({login})"
    if association not in trusted:
        return f"{login} ({association}) may not run loop; owners, members and collaborators can"
    return None


def _installation(event: _Event) -> int | None:
    return event.installation.id if event.installation else None
