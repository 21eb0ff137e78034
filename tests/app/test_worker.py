"""Webhook -> queue -> worker -> pull request, over real HTTP on loopback: the App server (uvicorn),
the loopback GitHub (REST + `git http-backend`), App auth by a JWT signed with a key made at test time.

Most tests inject a tiny real run function through the worker's seam (it edits, commits and publishes
through the real GitHubForge); `test_e2e_real_runner` drives `agentloop.loop.runner.fix` itself."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from forge.conftest import SLUG
from forge.fake_github import FakeGitHub, start_asgi, stop_asgi
from forge.payloads import encode, issues_event
from looptest import MakeRepo, git
from pydantic import BaseModel

from agentloop.app.auth import AppAuth
from agentloop.app.queue import Job, JobQueue
from agentloop.app.server import AppSettings, create_app, signature_for
from agentloop.app.worker import Worker
from agentloop.forge.base import Step
from agentloop.forge.github import STATUS_MARKER, GitHubForge
from agentloop.git import Worktree
from agentloop.results import PullRequest

SECRET = "webhook-secret-for-tests"


class Outcome(BaseModel):
    run_id: str
    status: str
    pull_request: PullRequest | None = None
    message: str = ""


class TinyRun:
    """A real, small stand-in for the runner: fixes app.py on a branch and publishes through the forge."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Path, str]] = []

    def fix(self, repo: Path, issue: str, *, model: str | None, forge: GitHubForge,
            cancel: threading.Event, progress: Callable[[dict[str, Any]], None],
            runs_root: Path | None = None) -> Outcome:
        self.calls.append(("fix", repo, issue))
        run_id = f"r-tiny-{len(self.calls)}"
        progress({"run_id": run_id, "kind": "node"})
        the_issue = forge.get_issue(int(issue))
        forge.comment(the_issue, "working", step=Step(run_id, "intake"))
        branch = f"loop/{issue}-{run_id}"
        git(repo, "checkout", "-q", "-b", branch)
        (repo / "app.py").write_text("def total(a, b):\n    return a + b\n", encoding="utf-8")
        git(repo, "commit", "-qam", "fix total")
        pull = forge.publish(worktree=Worktree(repo, repo), branch=branch, title=the_issue.title, body="all green",
                             draft=False, issue=the_issue)
        forge.comment(the_issue, f"opened {pull.url}", step=Step(run_id, "publish", 1))
        return Outcome(run_id=run_id, status="published", pull_request=pull)

    def resume(self, repo: Path, run_id: str, *, forge: GitHubForge, cancel: threading.Event,
               progress: Callable[[dict[str, Any]], None], runs_root: Path | None = None) -> Outcome:
        self.calls.append(("resume", repo, run_id))
        return Outcome(run_id=run_id, status="failed", message="resumed and stopped")


class App:
    def __init__(self, url: str, queue: JobQueue, worker: Worker):
        self.url, self.queue, self.worker = url, queue, worker

    def open_issue(self, number: int = 7) -> Job:
        body = encode(issues_event("opened", number=number, labels=["loop"]))
        response = httpx.post(f"{self.url}/webhook", content=body, timeout=10, headers={
            "X-GitHub-Event": "issues", "X-GitHub-Delivery": str(uuid.uuid4()),
            "X-Hub-Signature-256": signature_for(SECRET, body)})
        assert response.status_code == 202, response.text
        job = self.queue.get(response.json()["queued"])
        assert job is not None
        return job

    def wait(self, job: Job, timeout: float = 240.0) -> Job:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            current = self.queue.get(job.id)
            if current is not None and current.status not in ("queued", "running"):
                return current
            time.sleep(0.05)
        raise AssertionError(f"job {job.id} still {self.queue.get(job.id)} after {timeout}s")


def make_worker(github: FakeGitHub, tmp_path: Path, app_key: tuple[str, str], run: TinyRun | None = None,
                owner: str = "server-1", **kwargs: Any) -> Worker:
    auth = AppAuth(github.app_id, app_key[0], api_url=github.api_url)
    run = run or TinyRun()
    return Worker(JobQueue.open(tmp_path / "queue.sqlite3"), workdir=tmp_path / "work", api_url=github.api_url,
                  tokens=auth.token_for, run_fix=run.fix, run_resume=run.resume, owner=owner,
                  poll_seconds=0.05, forge_options={"backoff": 0}, **kwargs)


@pytest.fixture
def serve(github: FakeGitHub, tmp_path: Path, app_key: tuple[str, str]) -> Iterator[Callable[..., App]]:
    running: list[Any] = []

    def _serve(worker: Worker | None = None, run: TinyRun | None = None) -> App:
        worker = worker or make_worker(github, tmp_path, app_key, run)
        server, thread, url = start_asgi(create_app(AppSettings(webhook_secret=SECRET), worker.queue, worker))
        running.append((server, thread))
        return App(url, worker.queue, worker)

    yield _serve
    for server, thread in running:
        stop_asgi(server, thread)


def test_signed_issue_opening_ends_in_a_pull_request(
    serve: Callable[..., App], github: FakeGitHub, shop: Path, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    caplog.set_level(logging.DEBUG)
    run = TinyRun()
    app = serve(run=run)
    job = app.wait(app.open_issue())
    assert job.status == "published", job.message
    [pull] = github.repos[SLUG].pulls
    assert job.pull_request_url == pull["html_url"] and job.run_id == "r-tiny-1"
    assert pull["body"].rstrip().endswith("Fixes #7")
    assert "return a + b" in git(github.repos[SLUG].bare, "show", f"{pull['head']['ref']}:app.py")
    # one status comment, edited from "working" to the PR link
    [status] = github.comments_on(SLUG, 7)
    assert STATUS_MARKER in status["body"] and pull["html_url"] in status["body"] and status["edits"] == 1
    # the App authenticated with an installation token, which reached no log, comment, clone or /runs
    assert github.issued_tokens == 1
    token = next(t for t in github.tokens if "installation" in t)
    runs = httpx.get(f"{app.url}/runs", timeout=5).text
    clone_config = (tmp_path / "work" / "acme" / "shop" / "git" / "config").read_text()
    for text in (caplog.text, status["body"], pull["body"], runs, clone_config):
        assert token not in text


def test_repo_without_loop_yaml_gets_a_comment_saying_what_to_add(
    serve: Callable[..., App], github: FakeGitHub, make_repo: MakeRepo
) -> None:
    github.add_repo(SLUG, make_repo({"README.md": "hi\n"}, None, name="bare-source"))
    github.add_issue(SLUG, 7, "broken", labels=("loop",))
    run = TinyRun()
    app = serve(run=run)
    job = app.wait(app.open_issue())
    assert job.status == "failed" and "loop.yaml" in job.message
    [comment] = github.comments_on(SLUG, 7)
    assert "no `loop.yaml`" in comment["body"] and "/loop retry" in comment["body"]
    assert run.calls == []


def test_restart_resumes_a_job_killed_mid_run_and_runs_the_queued_one(
    serve: Callable[..., App], github: FakeGitHub, shop: Path, tmp_path: Path, app_key: tuple[str, str]
) -> None:
    github.add_issue(SLUG, 8, "another", labels=("loop",))
    queue = JobQueue.open(tmp_path / "queue.sqlite3")
    # The previous server took issue 7, got as far as a checkpointed run, and was killed;
    # issue 8 was still waiting in the queue.
    killed = queue.enqueue(repo=SLUG, issue=7, installation_id=4242)
    waiting = queue.enqueue(repo=SLUG, issue=8, installation_id=4242)
    assert killed is not None and waiting is not None
    queue.claim("server-1")
    queue.set_run_id(killed.id, "r-20260101-abc123")

    run = TinyRun()
    app = serve(worker=make_worker(github, tmp_path, app_key, run, owner="server-1"))
    resumed, fresh = app.wait(killed), app.wait(waiting)
    assert ("resume", tmp_path / "work" / "acme" / "shop" / "jobs" / str(killed.id), "r-20260101-abc123") in run.calls
    assert resumed.status == "failed" and resumed.attempts == 2
    assert fresh.status == "published" and fresh.pull_request_url


def test_e2e_real_runner(
    serve: Callable[..., App], github: FakeGitHub, make_repo: MakeRepo, tmp_path: Path, app_key: tuple[str, str]
) -> None:
    runner = pytest.importorskip("agentloop.loop.runner")
    from looptest import create, replace, write_cassette

    files = {"calc.py": "def add(a, b):\n    return a - b\n",
             "tests/test_calc.py": "def test_nothing():\n    assert True\n"}
    config = {"services": {}, "validate": [{"suite": "unit", "run": "python3 -m pytest -q tests"}],
              "agent": {"max_iterations": 2}, "forge": {"kind": "github", "repo": SLUG}}
    github.add_repo(SLUG, make_repo(files, config, name="calc-source"))
    github.add_issue(SLUG, 7, "add() subtracts", "add(2, 3) returns -1", labels=("loop",))
    cassette = write_cassette(tmp_path / "c.json", [[
        create("tests/test_add.py", "from calc import add\n\n\ndef test_add():\n    assert add(2, 3) == 5\n"),
        replace("calc.py", "return a - b", "return a + b"),
    ]])
    worker = make_worker(github, tmp_path, app_key, owner="server-e2e", model=f"replay:{cassette}")
    worker.run_fix, worker.run_resume = runner.fix, runner.resume
    app = serve(worker=worker)
    job = app.wait(app.open_issue(), timeout=120)
    assert job.status == "published", job.message
    [pull] = github.repos[SLUG].pulls
    assert pull["html_url"] == job.pull_request_url and "Fixes #7" in pull["body"]
    assert "return a + b" in git(github.repos[SLUG].bare, "show", f"{pull['head']['ref']}:calc.py")
    [status] = github.comments_on(SLUG, 7)
    assert pull["html_url"] in status["body"]
