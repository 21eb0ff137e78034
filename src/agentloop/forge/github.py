"""The GitHub forge: issues, status comments and pull requests over the REST API (github.com or a
GitHub Enterprise Server through its API URL), pushes over HTTPS with the token.

The token never touches `.git/config`, argv or a log: pushes pass it to git through the
`GIT_CONFIG_COUNT` environment as a one-off `http.extraHeader`, and git's output is redacted. Git runs
through `agentloop.git` (hardened settings, a scrubbed environment; a push from a run's worktree uses
the git dir loop found for it, never the worktree's own `.git`).
"""

from __future__ import annotations

import base64
import logging
import os
import re
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import tenacity

from agentloop import git as loopgit
from agentloop.config import LoopConfig
from agentloop.errors import ConfigError, IssueNotFound, LoopError
from agentloop.forge.base import Step, after_side_effect
from agentloop.forge.github_checks import ChecksMixin
from agentloop.forge.github_pulls import PullsMixin
from agentloop.redact import redact
from agentloop.results import Issue, PullRequest

log = logging.getLogger(__name__)

STATUS_MARKER = "<!-- loop:status -->"
BODY_LIMIT = 65536
_TRUNCATION_NOTE = "\n\n… (truncated to fit GitHub's limit; the full evidence is in the run record)\n"
_REMOTE = re.compile(r"^(?:https?://[^/]+/|ssh://[^/]+/|[\w.-]+@[^:]+:)(?P<slug>[\w.-]+/[\w.-]+?)(?:\.git)?/?$")


class GitHubError(LoopError):
    """GitHub answered with an error that retrying does not fix."""


class _Retryable(Exception):
    def __init__(self, response: httpx.Response):
        super().__init__(f"HTTP {response.status_code}")
        self.response = response


def slug_from_remote(url: str) -> str | None:
    """`owner/name` from an https, ssh or scp-style remote URL."""
    match = _REMOTE.match(url.strip())
    return match.group("slug") if match else None


class GitHubForge(PullsMixin, ChecksMixin):  # pull request updates and check runs: github_*.py
    kind = "github"

    def __init__(
        self,
        repo_slug: str,
        *,
        api_url: str = "https://api.github.com",
        token: str | Callable[[], str],
        clone_url: str | None = None,
        backoff: float = 1.0,
        attempts: int = 5,
        transport: httpx.BaseTransport | None = None,
    ):
        self.repo_slug = repo_slug
        self.api_url = api_url.rstrip("/")
        self._token = token
        self._clone_url = clone_url
        self._backoff = backoff
        self._attempts = attempts
        self._client = httpx.Client(
            base_url=self.api_url,
            timeout=30.0,
            transport=transport,
            headers={"Accept": "application/vnd.github+json", "X-GitHub-Api-Version": "2022-11-28",
                     "User-Agent": "agentloop"},
        )
        self._status_comment_id: int | None = None
        self._run_comments: dict[str, tuple[int, str]] = {}  # run -> (its status comment's id, body)
        self._login: str | None = None
        self._asked_login = False

    @classmethod
    def from_repo(cls, repo: Path, config: LoopConfig) -> GitHubForge:
        slug = config.forge.repo or _origin_slug(repo)
        if not slug:
            raise ConfigError(
                f"{repo / 'loop.yaml'}: field `forge.repo` is not set and the `origin` remote is not a GitHub "
                "URL; set `forge: {kind: github, repo: owner/name}`"
            )
        api_url = config.forge.api_url or os.environ.get("GITHUB_API_URL") or "https://api.github.com"
        token = os.environ.get("GITHUB_TOKEN", "").strip()
        if not token:
            raise ConfigError(
                "GITHUB_TOKEN is not set; export a token with issues, pull requests and contents read/write "
                f"on {slug} (or run `loop serve` as a GitHub App)"
            )
        return cls(slug, api_url=api_url, token=token)

    # -- the Forge protocol -------------------------------------------------------------------------

    def get_issue(self, number: int) -> Issue:
        response = self._request("GET", f"{self._repo_path}/issues/{number}", ok=(200, 404, 410))
        if response.status_code != 200:
            raise IssueNotFound(f"{self.repo_slug}#{number}: no such issue on {self.api_url}")
        data = response.json()
        if "pull_request" in data:
            raise IssueNotFound(f"{self.repo_slug}#{number} is a pull request; pass an issue number")
        comments = [
            str(c.get("body") or "")
            for c in self._paginate(f"{self._repo_path}/issues/{number}/comments")
            if STATUS_MARKER not in str(c.get("body") or "")
        ]
        return Issue(
            number=number,
            title=str(data.get("title") or ""),
            body=str(data.get("body") or ""),
            url=data.get("html_url"),
            labels=[str(label["name"]) if isinstance(label, dict) else str(label) for label in data.get("labels", [])],
            comments=comments,
        )

    def find_pull_request(self, branch: str) -> PullRequest | None:
        owner = self.repo_slug.split("/")[0]
        # closed ones too: a resumed run whose pull request someone closed must not open a second one
        params = {"head": f"{owner}:{branch}", "state": "all", "per_page": "100"}
        for pull in self._paginate(f"{self._repo_path}/pulls", params=params):
            if pull.get("head", {}).get("ref") == branch:
                return _pull_record(pull)
        return None

    def publish(
        self, *, worktree: loopgit.Worktree, branch: str, title: str, body: str, draft: bool, issue: Issue,
        step: Step | None = None,
    ) -> PullRequest:
        self.push(worktree, branch)
        existing = self.find_pull_request(branch)
        if existing is not None:
            log.info("%s: pull request for %s already open: %s", self.repo_slug, branch, existing.url)
            return existing
        payload = {
            "title": title or issue.title,
            "head": branch,
            "base": self.repository().get("default_branch", "main"),
            "body": fit_body(f"{step.marker}\n{body}" if step else body, issue.number),
            "draft": draft,
        }
        response = self._request("POST", f"{self._repo_path}/pulls", json=payload, ok=(201, 422))
        if response.status_code == 422:
            # A concurrent or earlier attempt opened it between our lookup and the create.
            again = self.find_pull_request(branch)
            if again is not None:
                return again
            raise GitHubError(f"{self.repo_slug}: GitHub refused the pull request: {_message(response)}")
        after_side_effect(f"pull:{step.node}" if step else "pull")
        return _pull_record(response.json())

    def comment(self, issue: Issue, body: str, *, step: Step | None = None) -> None:
        """With a `step`: the run's own status comment, found again by its marker (posted by loop, never
        someone quoting it), edited to the step's text, or left alone when that step already wrote it."""
        if step is None:
            self._issue_status(issue, body)
            return
        text = self._comment_text(f"{STATUS_MARKER}\n{step.marker}\n{body}")
        found = self._run_comments.get(step.run) or self._find_run_comment(issue.number, step)
        if found is not None and step.marker in found[1]:
            log.info("%s#%s: %s already commented; not posted again", self.repo_slug, issue.number, step.marker)
            self._run_comments[step.run] = found
            return
        if found is not None:
            response = self._request("PATCH", f"{self._repo_path}/issues/comments/{found[0]}", json={"body": text},
                                     ok=(200, 403, 404))
            if response.status_code == 200:
                self._run_comments[step.run] = (found[0], text)
                after_side_effect(f"comment:{step.node}")
                return
            log.warning("%s#%s: cannot edit comment %s (%s); posting a new one", self.repo_slug, issue.number,
                        found[0], response.status_code)
        response = self._request("POST", f"{self._repo_path}/issues/{issue.number}/comments", json={"body": text})
        data = response.json()
        self._run_comments[step.run] = (int(data["id"]), text)
        self._login = self._login or (data.get("user") or {}).get("login")
        after_side_effect(f"comment:{step.node}")

    def _issue_status(self, issue: Issue, body: str) -> None:
        """A comment that belongs to no run: the issue's first status comment, edited in place."""
        text = self._comment_text(body if STATUS_MARKER in body else f"{STATUS_MARKER}\n{body}")
        comment_id = self._status_comment_id or next(
            (int(c["id"]) for c in self._paginate(f"{self._repo_path}/issues/{issue.number}/comments")
             if STATUS_MARKER in str(c.get("body") or "")), None)
        if comment_id is not None:
            response = self._request(
                "PATCH", f"{self._repo_path}/issues/comments/{comment_id}", json={"body": text}, ok=(200, 403, 404)
            )
            if response.status_code == 200:
                self._status_comment_id = comment_id
                return
        response = self._request("POST", f"{self._repo_path}/issues/{issue.number}/comments", json={"body": text})
        self._status_comment_id = int(response.json()["id"])

    def _comment_text(self, text: str) -> str:
        return redact(fit_body(text, None), extra=[self._current_token()])

    def _find_run_comment(self, number: int, step: Step) -> tuple[int, str] | None:
        """(id, body) of the comment carrying the run's marker that loop itself posted: by the token's own
        account when GitHub says who that is, else (an App's installation token) by a bot."""
        login = self._own_login()
        for comment in self._paginate(f"{self._repo_path}/issues/{number}/comments"):
            text, user = str(comment.get("body") or ""), comment.get("user") or {}
            mine = user.get("login") == login if login else user.get("type") == "Bot"
            if step.run_marker in text and mine:
                return int(comment["id"]), text
        return None

    def _own_login(self) -> str | None:
        if self._login is None and not self._asked_login:
            self._asked_login = True  # an installation token may not ask (403): asked once per forge
            response = self._request("GET", "/user", ok=(200, 401, 403, 404))
            if response.status_code == 200:
                self._login = str(response.json().get("login") or "") or None
        return self._login

    # -- helpers others use (the App's worker) -------------------------------------------------------

    def repository(self) -> dict[str, Any]:
        data: dict[str, Any] = self._request("GET", self._repo_path).json()
        return data

    def clone_url(self) -> str:
        if self._clone_url is None:
            self._clone_url = str(self.repository()["clone_url"])
        return self._clone_url

    def git_env(self) -> dict[str, str]:
        """What lets one git command authenticate to the clone URL (added to loop's git environment for
        that command only), nothing persisted."""
        basic = base64.b64encode(f"x-access-token:{self._current_token()}".encode()).decode()
        return {
            "GIT_CONFIG_COUNT": "1",
            "GIT_CONFIG_KEY_0": "http.extraHeader",
            "GIT_CONFIG_VALUE_0": f"Authorization: Basic {basic}",
        }

    def secret_values(self) -> list[str]:
        """What must never be shown: the token and the header that carries it (for redact(extra=...))."""
        return [self._current_token(), self.git_env()["GIT_CONFIG_VALUE_0"]]

    def git(self, args: list[str], cwd: Path | None = None) -> str:
        """Run git (on loop's own clone, never a run's worktree) with the token available for this command
        only; errors are redacted."""
        return self._checked(args[0], loopgit.command(args, cwd=cwd, env=self.git_env(), check=False,
                                                      network=True, timeout=600))

    def push(self, worktree: loopgit.Worktree, branch: str) -> None:
        """Push the worktree's head to `branch`; nothing to do when the branch is already there (a
        resumed run killed right after its push)."""
        if self._remote_head(branch) == loopgit.head(worktree):
            log.info("%s: %s already has this commit; not pushed again", self.repo_slug, branch)
            return
        # The branch belongs to the run alone; a resumed run may rewrite what an earlier attempt pushed.
        self._checked("push", loopgit.push(worktree, self.clone_url(), f"HEAD:refs/heads/{branch}",
                                           env=self.git_env()))
        log.info("%s: pushed %s", self.repo_slug, branch)
        after_side_effect("push")

    def _remote_head(self, branch: str) -> str | None:
        done = loopgit.command(["ls-remote", "--refs", "--", self.clone_url(), f"refs/heads/{branch}"],
                               env=self.git_env(), check=False, network=True, timeout=120)
        if done.returncode != 0:  # the push that follows reports what is wrong
            return None
        return done.stdout.split()[0] if done.stdout.strip() else None

    def _checked(self, verb: str, done: subprocess.CompletedProcess[str]) -> str:
        if done.returncode != 0:
            detail = redact(done.stderr.strip()[-2000:], extra=self.secret_values())
            raise GitHubError(f"git {verb} to {self.repo_slug} failed: {detail}")
        return done.stdout

    def close(self) -> None:
        self._client.close()

    # -- HTTP ----------------------------------------------------------------------------------------

    @property
    def _repo_path(self) -> str:
        return f"/repos/{self.repo_slug}"

    def _current_token(self) -> str:
        return self._token() if callable(self._token) else self._token

    def _request(
        self, method: str, path: str, *, ok: tuple[int, ...] = (200, 201), **kwargs: Any
    ) -> httpx.Response:
        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception_type((_Retryable, httpx.TransportError)),
            wait=_wait_for(self._backoff),
            stop=tenacity.stop_after_attempt(self._attempts),
            reraise=True,
        )
        try:
            response: httpx.Response = retrying(self._once, method, path, **kwargs)
        except _Retryable as exc:
            raise GitHubError(
                f"{method} {path}: GitHub still answered {exc.response.status_code} after {self._attempts} "
                f"attempts: {_message(exc.response)}"
            ) from None
        except httpx.TransportError as exc:
            raise GitHubError(f"{self.api_url}: cannot reach GitHub ({type(exc).__name__}); check GITHUB_API_URL") from None
        if response.status_code not in ok:
            hint = " (check the token's permissions)" if response.status_code in (401, 403) else ""
            raise GitHubError(f"{method} {path}: GitHub answered {response.status_code}{hint}: {_message(response)}")
        return response

    def _once(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self._current_token()}"}
        response = self._client.request(method, path, headers=headers, **kwargs)
        if response.status_code >= 500 or _rate_limited(response):
            log.warning("%s %s: GitHub answered %s; retrying", method, path, response.status_code)
            raise _Retryable(response)
        return response

    def _paginate(self, path: str, params: Mapping[str, str] | None = None) -> Iterator[dict[str, Any]]:
        url: str | None = path
        query: Mapping[str, str] | None = {"per_page": "100", **(params or {})}
        while url:
            response = self._request("GET", url, params=query)
            yield from response.json()
            url = response.links.get("next", {}).get("url")
            query = None  # the next link carries its own query


def fit_body(body: str, issue_number: int | None) -> str:
    """Ensure `Fixes #N` and keep the body under GitHub's 65536-character limit, cutting on a line."""
    if issue_number is not None and not re.search(rf"(?i)\b(fixes|closes|resolves) #{issue_number}\b", body):
        body = f"{body.rstrip()}\n\nFixes #{issue_number}\n"
    if len(body) <= BODY_LIMIT:
        return body
    tail = f"\n\nFixes #{issue_number}\n" if issue_number is not None else ""
    room = BODY_LIMIT - len(_TRUNCATION_NOTE) - len(tail) - len("\n```")
    cut = body[:room]
    cut = cut[: cut.rfind("\n")] if "\n" in cut else cut
    if cut.count("```") % 2:  # never leave a code fence open
        cut += "\n```"
    return cut + _TRUNCATION_NOTE + tail


def _pull_record(data: dict[str, Any]) -> PullRequest:
    head = data.get("head") or {}
    return PullRequest(
        number=data.get("number"),
        url=str(data.get("html_url") or data.get("url")),
        branch=str(head.get("ref", "")),
        head_commit=str(head.get("sha", "")),
        draft=bool(data.get("draft", False)),
        title=str(data.get("title") or ""),
    )


def _rate_limited(response: httpx.Response) -> bool:
    if response.status_code == 429:
        return True
    return response.status_code == 403 and (
        response.headers.get("x-ratelimit-remaining") == "0" or "retry-after" in response.headers
    )


def _wait_for(backoff: float) -> Callable[[tenacity.RetryCallState], float]:
    exponential = tenacity.wait_exponential(multiplier=backoff, max=60 * backoff)

    def wait(state: tenacity.RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, _Retryable):
            headers = exc.response.headers
            if "retry-after" in headers:
                return min(float(headers["retry-after"]), 900.0)
            if headers.get("x-ratelimit-remaining") == "0" and "x-ratelimit-reset" in headers:
                return max(0.0, min(float(headers["x-ratelimit-reset"]) - time.time(), 900.0)) * min(backoff, 1.0)
        return float(exponential(state))

    return wait


def _message(response: httpx.Response) -> str:
    try:
        return str(response.json().get("message", ""))[:300]
    except ValueError:
        return response.text[:300]


def _origin_slug(repo: Path) -> str | None:
    done = loopgit.command(["remote", "get-url", "origin"], cwd=repo, check=False)
    return slug_from_remote(done.stdout) if done.returncode == 0 else None
