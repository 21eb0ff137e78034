"""A run's pull request on GitHub under review: the pull request itself, the feedback of its reviewers
(inline review comments with file and line, reviews' bodies, `/loop <text>` comments) and its body.

Only members' feedback is read (owner, member, collaborator: the same rule as for `/loop` commands on
issues), never loop's own comments, and only what was written after `since` (the end of the run's last
pass), so that each review iteration is given what it has not seen yet.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterable
from typing import Any

from agentloop.forge.base import ReviewNote
from agentloop.forge.github import STATUS_MARKER, GitHubForge, fit_body

TRUSTED = frozenset({"OWNER", "MEMBER", "COLLABORATOR"})


def pull_request(forge: GitHubForge, number: int) -> dict[str, Any]:
    """GET /repos/{o}/{r}/pulls/{n}."""
    data: dict[str, Any] = forge._request("GET", f"/repos/{forge.repo_slug}/pulls/{number}").json()
    return data


def review_notes(forge: GitHubForge, number: int, *, since: float | None = None) -> list[ReviewNote]:
    """The members' feedback on pull request `number` written after `since` (epoch seconds), oldest first."""
    base = f"/repos/{forge.repo_slug}"
    found: list[tuple[str, ReviewNote]] = []
    for item in forge._paginate(f"{base}/pulls/{number}/comments"):  # inline: file and line
        line = item.get("line") or item.get("original_line")
        found += _note(item, item.get("created_at"), path=item.get("path"), line=line if isinstance(line, int) else None)
    for item in forge._paginate(f"{base}/pulls/{number}/reviews"):
        if str(item.get("state", "")).upper() in ("CHANGES_REQUESTED", "COMMENTED"):
            found += _note(item, item.get("submitted_at"))
    for item in forge._paginate(f"{base}/issues/{number}/comments"):
        text = str(item.get("body") or "").strip()
        if text.startswith("/loop") and STATUS_MARKER not in text:
            found += _note({**item, "body": _command_text(text)}, item.get("created_at"))
    # GitHub's times are whole seconds: a note of the second the last pass ended is given too (never lost)
    return [note for when, note in sorted(found, key=lambda pair: pair[0])
            if since is None or _epoch(when) >= math.floor(since)]


def update_body(forge: GitHubForge, number: int, body: str, issue_number: int | None) -> None:
    """PATCH the pull request's body (the evidence report of its latest pass)."""
    forge._request("PATCH", f"/repos/{forge.repo_slug}/pulls/{number}", json={"body": fit_body(body, issue_number)})


def _note(item: dict[str, Any], when: object, *, path: object = None, line: int | None = None
          ) -> Iterable[tuple[str, ReviewNote]]:
    user = item.get("user") or {}
    body = str(item.get("body") or "").strip()
    if not body or user.get("type") == "Bot" or str(item.get("author_association", "")) not in TRUSTED:
        return []
    return [(str(when or ""), ReviewNote(author=str(user.get("login", "")), body=body,
                                         path=str(path) if path else None, line=line))]


def _command_text(text: str) -> str:
    """`/loop fix please rename x` -> `please rename x`; `/loop rename x` -> `rename x`."""
    words = text.split(None, 2)
    rest = words[1:]
    if rest and rest[0] in ("fix", "retry"):
        rest = rest[1:]
    return " ".join(rest)


def _epoch(stamp: str) -> float:
    try:
        return dt.datetime.fromisoformat(stamp).timestamp()
    except ValueError:
        return float("inf")  # no time: treated as new
