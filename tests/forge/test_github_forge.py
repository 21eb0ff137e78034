"""GitHubForge against the loopback GitHub (REST under /api/v3, git smart HTTP via `git http-backend`)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from looptest import git

from agentloop.config import parse_config
from agentloop.errors import ConfigError, IssueNotFound
from agentloop.forge.github import (
    BODY_LIMIT,
    STATUS_MARKER,
    GitHubError,
    GitHubForge,
    fit_body,
    slug_from_remote,
)
from agentloop.git import Worktree

from .conftest import SLUG
from .fake_github import FakeGitHub


def _forge(github: FakeGitHub, **kwargs: object) -> GitHubForge:
    return GitHubForge(SLUG, api_url=github.api_url, token=github.token, backoff=0, **kwargs)  # type: ignore[arg-type]


def _branch_with_change(tmp_path: Path, github: FakeGitHub, forge: GitHubForge, branch: str) -> Path:
    work = tmp_path / "work"
    forge.git(["clone", "--quiet", forge.clone_url(), str(work)])
    git(work, "checkout", "-q", "-b", branch)
    (work / "app.py").write_text("def total(a, b):\n    return a + b\n", encoding="utf-8")
    git(work, "commit", "-qam", "fix total")
    return work


def test_reads_issue_with_labels_and_comments_across_pages(github: FakeGitHub, shop: Path) -> None:
    forge = _forge(github)
    for n in range(105):
        github.repos[SLUG].comments.append({"id": n + 1, "issue": 7, "body": f"note {n}", "user": {}, "edits": 0})
    issue = forge.get_issue(7)
    assert issue.title == "total() subtracts"
    assert issue.labels == ["loop"]
    assert len(issue.comments) == 105 and issue.comments[-1] == "note 104"


def test_missing_issue_is_issue_not_found(github: FakeGitHub, shop: Path) -> None:
    with pytest.raises(IssueNotFound, match="acme/shop#99"):
        _forge(github).get_issue(99)


def test_publish_pushes_branch_and_opens_one_draft_pr(
    github: FakeGitHub, shop: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    forge = _forge(github)
    issue = forge.get_issue(7)
    work = _branch_with_change(tmp_path, github, forge, "loop/7-r1")
    pull = forge.publish(worktree=Worktree(work, work), branch="loop/7-r1", title=issue.title, body="evidence", draft=True, issue=issue)
    assert pull.draft and pull.number == 101
    assert pull.head_commit == github.branch_sha(SLUG, "loop/7-r1") == git(work, "rev-parse", "HEAD").strip()
    assert github.repos[SLUG].pulls[0]["body"].rstrip().endswith("Fixes #7")
    assert github.repos[SLUG].pulls[0]["base"] == {"ref": "main"}
    # A resumed run publishing again gets the same pull request, not a second one.
    again = forge.publish(worktree=Worktree(work, work), branch="loop/7-r1", title=issue.title, body="evidence", draft=True, issue=issue)
    assert again.number == pull.number and len(github.repos[SLUG].pulls) == 1
    # The token went over HTTP only: not into the clone's config, not into a log.
    assert github.token not in (work / ".git" / "config").read_text()
    assert github.token not in caplog.text
    git_requests = [s for s in github.seen if s.path.startswith("/git/")]
    assert git_requests and all("authorization" in s.headers for s in git_requests if "receive-pack" in s.path)


def test_push_failure_is_reported_without_the_token(github: FakeGitHub, shop: Path, tmp_path: Path) -> None:
    forge = _forge(github)
    work = _branch_with_change(tmp_path, github, forge, "loop/7-r2")
    github.tokens.clear()  # the token was revoked mid-run
    with pytest.raises(GitHubError) as raised:
        forge.push(Worktree(work, work), "loop/7-r2")
    assert "x-access-token" not in str(raised.value) and "ghs_" not in str(raised.value)


def test_one_status_comment_edited_in_place(github: FakeGitHub, shop: Path) -> None:
    issue = _forge(github).get_issue(7)
    _forge(github).comment(issue, "working")
    _forge(github).comment(issue, f"done; token was {github.token}")  # a new forge finds it by the marker
    [comment] = github.comments_on(SLUG, 7)
    assert comment["edits"] == 1
    assert STATUS_MARKER in comment["body"] and "done" in comment["body"]
    assert github.token not in comment["body"]
    assert _forge(github).get_issue(7).comments == []  # its own status is not fed back as issue text


def test_retries_5xx_and_rate_limits(github: FakeGitHub, shop: Path) -> None:
    github.fail_next = [(502, {}), (403, {"x-ratelimit-remaining": "0", "x-ratelimit-reset": "0"}),
                        (429, {"retry-after": "0"})]
    assert _forge(github).get_issue(7).number == 7
    assert github.fail_next == []


def test_gives_up_after_attempts_with_clear_error(github: FakeGitHub, shop: Path) -> None:
    github.fail_next = [(503, {})] * 3
    with pytest.raises(GitHubError, match="503 after 3 attempts"):
        _forge(github, attempts=3).get_issue(7)


def test_plain_403_is_not_retried(github: FakeGitHub, shop: Path) -> None:
    github.fail_next = [(403, {}), (200, {})]
    with pytest.raises(GitHubError, match="403 .check the token"):
        _forge(github).get_issue(7)


def test_long_body_is_cut_under_the_limit_keeping_fixes_line() -> None:
    body = "```\n" + "x" * 80 + "\n" + ("line\n" * 20000)
    fitted = fit_body(body, 12)
    assert len(fitted) <= BODY_LIMIT
    assert fitted.rstrip().endswith("Fixes #12") and "truncated" in fitted
    assert fitted.count("```") % 2 == 0


@pytest.mark.parametrize("url", ["https://github.com/acme/shop.git", "git@github.com:acme/shop.git",
                                 "ssh://git@ghe.example.com/acme/shop", "https://ghe.example.com/acme/shop/"])
def test_slug_from_remote_forms(url: str) -> None:
    assert slug_from_remote(url) == "acme/shop"


def test_from_repo_infers_slug_and_needs_token(
    shop: Path, github: FakeGitHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    git(shop, "remote", "add", "origin", "git@github.com:acme/shop.git")
    config = parse_config({"services": {}, "forge": {"kind": "github"}}, shop / "loop.yaml")
    with pytest.raises(ConfigError, match="GITHUB_TOKEN is not set"):
        GitHubForge.from_repo(shop, config)
    monkeypatch.setenv("GITHUB_TOKEN", github.token)
    monkeypatch.setenv("GITHUB_API_URL", github.api_url)
    forge = GitHubForge.from_repo(shop, config)
    assert forge.repo_slug == SLUG and forge.get_issue(7).number == 7
