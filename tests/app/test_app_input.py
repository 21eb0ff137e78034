"""What the App does with input GitHub would never send, over real HTTP on loopback: a traversing
repository name touches nothing outside the work directory, malformed payloads and headers get a 4xx
with a JSON reason (never a 500), and a job whose GitHub goes away at the end still ends, as failed."""

from __future__ import annotations

import json
import socket
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from forge.conftest import SLUG
from forge.fake_github import FakeGitHub, start_asgi, stop_asgi
from forge.payloads import INSTALLATION, comment_event, encode, issues_event
from pydantic import BaseModel

from agentloop.app.auth import AppAuth
from agentloop.app.queue import Job, JobQueue
from agentloop.app.server import AppSettings, create_app, signature_for
from agentloop.app.worker import Worker
from agentloop.forge.github import GitHubForge

SECRET = "webhook-secret-for-input-tests"
Post = Callable[..., httpx.Response]


class Outcome(BaseModel):
    run_id: str
    status: str
    pull_request: None = None
    message: str = ""


def never_run(*args: Any, **kwargs: Any) -> Outcome:
    raise AssertionError("a job with a bad repository name must not get as far as a run")


def make_worker(tmp_path: Path, api_url: str, app_key: tuple[str, str], run: Callable[..., Outcome] = never_run,
                app_id: str = "42") -> Worker:
    auth = AppAuth(app_id, app_key[0], api_url=api_url)
    return Worker(JobQueue.open(tmp_path / "queue.sqlite3"), workdir=tmp_path / "serve" / "repos", api_url=api_url,
                  tokens=auth.token_for, run_fix=run, run_resume=run, owner="server-input", poll_seconds=0.05,
                  forge_options={"backoff": 0, "attempts": 2})


@pytest.fixture
def sentinel(tmp_path: Path) -> Path:
    """Where `<workdir>/../../x/issue-7` lands: a directory that must survive every test here."""
    path = tmp_path / "x" / "issue-7"
    path.mkdir(parents=True)
    (path / "keep.txt").write_text("precious\n")
    return path


@pytest.fixture
def app(tmp_path: Path, github: FakeGitHub, app_key: tuple[str, str]) -> Iterator[tuple[str, Worker]]:
    """The App with its worker pool running, as `loop serve` runs it."""
    worker = make_worker(tmp_path, github.api_url, app_key)
    server, thread, url = start_asgi(create_app(AppSettings(webhook_secret=SECRET), worker.queue, worker))
    try:
        yield url, worker
    finally:
        stop_asgi(server, thread)


@pytest.fixture
def post(app: tuple[str, Worker]) -> Post:
    def _post(event: str, payload: dict[str, Any] | bytes, *, headers: dict[str, Any] | None = None) -> httpx.Response:
        body = payload if isinstance(payload, bytes) else encode(payload)
        sent: dict[str, Any] = {"X-GitHub-Event": event, "X-GitHub-Delivery": str(uuid.uuid4()),
                                "Content-Type": "application/json",
                                "X-Hub-Signature-256": signature_for(SECRET, body), **(headers or {})}
        return httpx.post(f"{app[0]}/webhook", content=body, headers=sent, timeout=30)

    return _post


def assert_still_serving(app: tuple[str, Worker]) -> None:
    assert httpx.get(f"{app[0]}/healthz", timeout=10).json()["ok"] is True
    assert app[1].queue.jobs() == []


# -- repository names ------------------------------------------------------------------------------

@pytest.mark.parametrize("slug", ["../../x", "acme/..", "acme/shop/../../x", "-acme/shop", "ac--me/shop", "acme/",
                                  "a" * 40 + "/shop", "acme/" + "s" * 101, "acme/sh op", "acme/shöp"])
def test_a_signed_webhook_with_a_bad_repository_name_is_refused(
    post: Post, app: tuple[str, Worker], sentinel: Path, slug: str
) -> None:
    response = post("issues", _with(OPENED, "repository.full_name", slug))
    assert response.status_code == 422
    assert "repository.full_name" in response.json()["error"]
    assert (sentinel / "keep.txt").read_text() == "precious\n"
    assert_still_serving(app)


def test_a_queued_job_with_a_traversing_name_fails_without_touching_anything(
    tmp_path: Path, github: FakeGitHub, app_key: tuple[str, str], sentinel: Path
) -> None:
    # as a job written to a shared queue by another (older) server would be
    worker = make_worker(tmp_path, github.api_url, app_key)
    queued = worker.queue.enqueue(repo="../../x", issue=7, installation_id=INSTALLATION)
    assert queued is not None

    worker.run_next()

    job = worker.queue.get(queued.id)
    assert job is not None and job.status == "failed"
    assert "'../../x'" in job.message and "not a GitHub account name" in job.message
    assert (sentinel / "keep.txt").read_text() == "precious\n"
    assert github.seen == []  # not even a token was asked for


def test_a_symlink_in_the_workdir_does_not_lead_a_clone_outside(
    tmp_path: Path, github: FakeGitHub, app_key: tuple[str, str], shop: Path
) -> None:
    outside = tmp_path / "outside"
    (outside / "shop" / "issue-7").mkdir(parents=True)
    (outside / "shop" / "issue-7" / "keep.txt").write_text("precious\n")
    worker = make_worker(tmp_path, github.api_url, app_key)
    worker.workdir.mkdir(parents=True)
    (worker.workdir / "acme").symlink_to(outside)
    queued = worker.queue.enqueue(repo=SLUG, issue=7, installation_id=INSTALLATION)
    assert queued is not None

    worker.run_next()

    job = worker.queue.get(queued.id)
    assert job is not None and job.status == "failed" and "outside the work directory" in job.message
    assert (outside / "shop" / "issue-7" / "keep.txt").read_text() == "precious\n"


# -- malformed payloads and headers ----------------------------------------------------------------

def _with(payload: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A copy of `payload` with the field at dotted `path` set to `value` (or removed, for ...)."""
    copy = json.loads(json.dumps(payload))
    *parents, last = path.split(".")
    target = copy
    for name in parents:
        target = target[name]
    if value is ...:
        del target[last]
    else:
        target[last] = value
    return copy


OPENED = issues_event("opened", labels=["loop"])
COMMENT = comment_event("/loop fix")


@pytest.mark.parametrize(("event", "payload", "field"), [
    ("issues", _with(OPENED, "issue.labels", None), "issue.labels"),
    ("issues", _with(OPENED, "issue.labels", [{"name": None}]), "issue.labels[0].name"),
    ("issues", _with(OPENED, "issue.labels", "loop"), "issue.labels"),
    ("issues", _with(OPENED, "issue.number", 10**30), "issue.number"),
    ("issues", _with(OPENED, "issue.number", 2**63), "issue.number"),
    ("issues", _with(OPENED, "issue.number", -7), "issue.number"),
    ("issues", _with(OPENED, "issue.number", 0), "issue.number"),
    ("issues", _with(OPENED, "issue.number", "7"), "issue.number"),
    ("issues", _with(OPENED, "issue.number", 7.5), "issue.number"),
    ("issues", _with(OPENED, "issue.number", True), "issue.number"),
    ("issues", _with(OPENED, "issue.number", ...), "issue.number"),
    ("issues", _with(OPENED, "issue", None), "issue"),
    ("issues", _with(OPENED, "repository", ...), "repository"),
    ("issues", _with(OPENED, "repository.full_name", ["acme", "shop"]), "repository.full_name"),
    ("issues", _with(OPENED, "action", ...), "action"),
    ("issues", _with(OPENED, "action", {"a": 1}), "action"),
    ("issues", _with(OPENED, "installation.id", "4242"), "installation.id"),
    ("issues", _with(OPENED, "installation.id", 10**40), "installation.id"),
    ("issues", _with(issues_event("labeled", labels=["loop"], label="loop"), "label", "loop"), "label"),
    ("issue_comment", _with(COMMENT, "comment", ...), "comment"),
    ("issue_comment", _with(COMMENT, "comment.body", 42), "comment.body"),
    ("issue_comment", _with(COMMENT, "comment.user", "hubot"), "comment.user"),
    ("issue_comment", _with(COMMENT, "issue.number", -1), "issue.number"),
])
def test_a_malformed_payload_is_a_422_naming_the_field(
    post: Post, app: tuple[str, Worker], event: str, payload: dict[str, Any], field: str
) -> None:
    response = post(event, payload)
    assert response.status_code == 422, response.text
    assert f"`{field}`" in response.json()["error"]
    assert_still_serving(app)


def _nested(levels: int) -> bytes:
    return b'{"action": "opened", "deep": ' + b"[" * levels + b"]" * levels + b"}"


@pytest.mark.parametrize(("body", "status", "reason"), [
    (_nested(100), 400, "nests deeper"),
    (_nested(200_000), 400, "nests deeper"),
    (b"\xff\xfe not utf-8", 400, "not JSON"),
    (b"[1, 2]", 400, "not a JSON object"),
    (b'"just a string"', 400, "not a JSON object"),
    (b"", 400, "not JSON"),
    (b'{"action": "opened", "pad": "' + b"x" * (1024 * 1024) + b'"}', 413, "larger than"),
])
def test_bodies_that_are_no_event_get_a_4xx(
    post: Post, app: tuple[str, Worker], body: bytes, status: int, reason: str
) -> None:
    response = post("issues", body)
    assert response.status_code == status, response.text
    assert reason in response.json()["error"]
    assert_still_serving(app)


@pytest.mark.parametrize(("headers", "status"), [
    ({"X-Hub-Signature-256": "sha256=é".encode("latin-1")}, 401),
    ({"X-Hub-Signature-256": "sha256=✓".encode()}, 401),
    ({"X-Hub-Signature-256": "sha256=zz"}, 401),
    ({"X-Hub-Signature-256": "sha256"}, 401),
    ({"X-Hub-Signature-256": ""}, 401),
    ({"X-GitHub-Delivery": "dé".encode("latin-1")}, 400),
    ({"X-GitHub-Delivery": "d" * 500}, 400),
    ({"X-GitHub-Event": "iss\xfcues".encode("latin-1")}, 202),
])
def test_odd_headers_get_a_4xx_or_are_ignored(
    post: Post, app: tuple[str, Worker], headers: dict[str, Any], status: int
) -> None:
    response = post("issues", OPENED, headers=headers)
    assert response.status_code == status, response.text
    assert response.json()
    assert_still_serving(app)


def test_text_that_is_not_unicode_is_a_422_and_an_ascii_json_answer(post: Post, app: tuple[str, Worker]) -> None:
    payload = encode(comment_event("/loop fix", association="NONE", login="x")).replace(b'"x"', b'"\\ud800\\u00e9"')
    response = post("issue_comment", payload)
    assert response.status_code == 422
    assert response.content.isascii() and "`comment.user.login`" in response.json()["error"]
    assert_still_serving(app)


def test_a_rejected_delivery_can_be_redelivered_once_fixed(post: Post, app: tuple[str, Worker]) -> None:
    delivery = str(uuid.uuid4())
    bad = post("issues", _with(OPENED, "issue.labels", None), headers={"X-GitHub-Delivery": delivery})
    good = post("issues", OPENED, headers={"X-GitHub-Delivery": delivery})
    assert (bad.status_code, good.status_code) == (422, 202)
    assert "queued" in good.json()


# -- GitHub unreachable at the end -----------------------------------------------------------------

class GoesAwayAtTheEnd:
    """A real, small run: reads the issue, then GitHub goes down before its final status comment."""

    def __init__(self, github: FakeGitHub):
        self.github = github

    def __call__(self, repo: Path, issue: str, *, forge: GitHubForge, cancel: threading.Event, **_: Any) -> Outcome:
        the_issue = forge.get_issue(int(issue))
        self.github.stop()
        forge.comment(the_issue, "loop finished: see the pull request")
        return Outcome(run_id="r-gone", status="published")


@pytest.mark.parametrize("token_lifetime", [3600.0, 60.0], ids=["token-cached", "token-needs-renewal"])
def test_a_job_whose_github_goes_away_at_the_end_ends_failed_with_the_reason(
    tmp_path: Path, github: FakeGitHub, app_key: tuple[str, str], shop: Path, token_lifetime: float
) -> None:
    github.token_lifetime = token_lifetime
    worker = make_worker(tmp_path, github.api_url, app_key, run=GoesAwayAtTheEnd(github))
    queued = worker.queue.enqueue(repo=SLUG, issue=7, installation_id=INSTALLATION)
    assert queued is not None

    worker.run_next()

    job = worker.queue.get(queued.id)
    assert job is not None and job.status == "failed", job
    assert "cannot reach GitHub" in job.message
    assert not any(token in job.message for token in github.tokens)


def test_a_job_whose_github_is_unreachable_from_the_start_ends_failed(
    tmp_path: Path, app_key: tuple[str, str]
) -> None:
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    api_url = f"http://127.0.0.1:{closed.getsockname()[1]}/api/v3"
    closed.close()
    worker = make_worker(tmp_path, api_url, app_key)
    queued = worker.queue.enqueue(repo=SLUG, issue=7, installation_id=INSTALLATION)
    assert queued is not None

    worker.run_next()

    job: Job | None = worker.queue.get(queued.id)
    assert job is not None and job.status == "failed", job
    assert "cannot reach GitHub" in job.message
