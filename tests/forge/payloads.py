"""Webhook payloads shaped like GitHub's documented examples (issues, issue_comment, ping)."""

from __future__ import annotations

import json
from typing import Any

INSTALLATION = 4242


def _user(login: str, kind: str = "User") -> dict[str, Any]:
    return {"login": login, "id": abs(hash(login)) % 10**6, "node_id": "MDQ6VXNlcjE=", "type": kind,
            "site_admin": False, "html_url": f"https://github.com/{login}"}


def _repository(slug: str) -> dict[str, Any]:
    owner, name = slug.split("/")
    return {"id": 1296269, "node_id": "MDEwOlJlcG9zaXRvcnkxMjk2MjY5", "name": name, "full_name": slug,
            "owner": _user(owner, "Organization"), "private": False, "html_url": f"https://github.com/{slug}",
            "clone_url": f"https://github.com/{slug}.git", "default_branch": "main"}


def _issue(number: int, title: str, labels: list[str]) -> dict[str, Any]:
    return {"id": 1, "node_id": "MDU6SXNzdWUx", "url": f"https://api.github.com/repos/acme/shop/issues/{number}",
            "html_url": f"https://github.com/acme/shop/issues/{number}", "number": number, "state": "open",
            "title": title, "body": "total(2, 3) should be 5", "user": _user("octocat"),
            "labels": [{"id": 208045946, "name": name, "color": "f29513", "default": False} for name in labels],
            "comments": 0, "author_association": "OWNER", "created_at": "2011-04-22T13:33:48Z"}


def issues_event(action: str, *, slug: str = "acme/shop", number: int = 7, labels: list[str] | None = None,
                 label: str | None = None) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "action": action, "issue": _issue(number, "total() subtracts", labels or []),
        "repository": _repository(slug), "sender": _user("octocat"),
        "installation": {"id": INSTALLATION, "node_id": "MDIzOkludGVncmF0aW9uSW5zdGFsbGF0aW9uMQ=="},
    }
    if label is not None:
        payload["label"] = {"id": 208045946, "name": label, "color": "f29513", "default": False}
    return payload


def comment_event(body: str, *, association: str = "MEMBER", login: str = "hubot", kind: str = "User",
                  slug: str = "acme/shop", number: int = 7) -> dict[str, Any]:
    return {
        "action": "created", "issue": _issue(number, "total() subtracts", []),
        "comment": {"id": 1, "node_id": "MDEyOklzc3VlQ29tbWVudDE=", "body": body, "user": _user(login, kind),
                    "author_association": association, "created_at": "2011-04-22T13:33:48Z",
                    "html_url": f"https://github.com/{slug}/issues/{number}#issuecomment-1"},
        "repository": _repository(slug), "sender": _user(login, kind),
        "installation": {"id": INSTALLATION, "node_id": "MDIzOkludGVncmF0aW9uSW5zdGFsbGF0aW9uMQ=="},
    }


def ping_event() -> dict[str, Any]:
    return {"zen": "Keep it logically awesome.", "hook_id": 109948940,
            "hook": {"type": "App", "id": 109948940, "active": True, "events": ["issues", "issue_comment"]}}


def encode(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload).encode()
