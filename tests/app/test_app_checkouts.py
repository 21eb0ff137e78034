"""The App's checkouts: one clone per repository, fetched (not cloned) for each job, a worktree per job
removed when the job ends, a lock so that two jobs of one repository never fetch at once; and
`loop sandbox gc --app-workdir` on that layout. Real git, the loopback GitHub, the real worker."""

from __future__ import annotations

import fcntl
import os
import subprocess
import threading
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from forge.conftest import SLUG
from forge.fake_github import FakeGitHub
from looptest import create, git, replace, write_cassette
from pydantic import BaseModel

from agentloop.agent.models import end_of_life_dates
from agentloop.app.auth import AppAuth
from agentloop.app.checkout import RepoDirs, locked
from agentloop.app.queue import Job, JobQueue
from agentloop.app.worker import Worker
from agentloop.cleanup import DAY
from agentloop.cleanup.collect import collect
from agentloop.forge.github import GitHubForge
from agentloop.runs.folder import RunSummary


class Outcome(BaseModel):
    run_id: str
    status: str
    pull_request: None = None
    message: str = ""


class Looks:
    """A run that only looks at the checkout it was given: where it is and which commit it holds."""

    def __init__(self) -> None:
        self.seen: list[tuple[Path, str]] = []

    def __call__(self, repo: Path, issue: str, *, forge: GitHubForge, runs_root: Path | None = None,
                 **_: Any) -> Outcome:
        self.seen.append((repo, git(repo, "rev-parse", "HEAD").strip()))
        return Outcome(run_id=f"r-look-{len(self.seen)}", status="failed", message="looked")


def _worker(github: FakeGitHub, serve: Path, app_key: tuple[str, str], run: Callable[..., Any], **kwargs: Any) -> Worker:
    auth = AppAuth(github.app_id, app_key[0], api_url=github.api_url)
    return Worker(JobQueue.open(serve / "queue.sqlite3"), workdir=serve / "repos", api_url=github.api_url,
                  tokens=auth.token_for, run_fix=run, run_resume=run, owner="server-checkouts", poll_seconds=0.05,
                  forge_options={"backoff": 0}, **kwargs)


def _job(worker: Worker, issue: int) -> Job:
    job = worker.queue.enqueue(repo=SLUG, issue=issue, installation_id=4242)
    assert job is not None
    return job


def _worktrees(clone: Path) -> list[str]:
    listed = git(clone, "worktree", "list", "--porcelain")
    return [line.split(" ", 1)[1] for line in listed.splitlines() if line.startswith("worktree ")]


def _fetches(github: FakeGitHub) -> int:
    return sum(1 for seen in github.seen if seen.path.endswith("/git-upload-pack"))


def test_one_clone_per_repository_is_fetched_for_each_job_and_each_job_has_its_own_worktree(
    github: FakeGitHub, shop: Path, tmp_path: Path, app_key: tuple[str, str]
) -> None:
    run = Looks()
    worker = _worker(github, tmp_path / "serve", app_key, run)
    dirs = RepoDirs(tmp_path / "serve" / "repos" / "acme" / "shop")
    first = _job(worker, 7)
    worker.run_next()
    (dirs.git / "kept-by-fetch").write_text("a new clone would not have this\n")

    # the repository moves on; a job for another issue starts from where it is now
    git(shop, "commit", "-q", "--allow-empty", "-m", "upstream moved")
    git(shop, "push", "-q", str(github.repos[SLUG].bare), "main")
    github.add_issue(SLUG, 8, "another", labels=("loop",))
    second = _job(worker, 8)
    worker.run_next()

    (path_1, head_1), (path_2, head_2) = run.seen
    assert (path_1, path_2) == (dirs.job(first.id), dirs.job(second.id))
    assert head_1 != head_2 == github.branch_sha(SLUG, "main")
    assert (dirs.git / "kept-by-fetch").is_file(), "the repository was cloned again"
    assert sorted(p.name for p in dirs.root.iterdir()) == ["git", "jobs"]
    assert not path_1.exists() and not path_2.exists() and _worktrees(dirs.git) == [str(dirs.git)]
    assert [worker.queue.get(j.id).status for j in (first, second)] == ["failed", "failed"]  # type: ignore[union-attr]


def test_two_jobs_of_one_repository_never_fetch_at_once(
    github: FakeGitHub, shop: Path, tmp_path: Path, app_key: tuple[str, str]
) -> None:
    run = Looks()
    worker = _worker(github, tmp_path / "serve", app_key, run)
    dirs = RepoDirs(tmp_path / "serve" / "repos" / "acme" / "shop")
    job = _job(worker, 7)
    with locked(dirs):  # another job of acme/shop is fetching
        runner = threading.Thread(target=worker.run_next)
        runner.start()
        deadline = time.monotonic() + 30
        while worker.queue.get(job.id).status != "running":  # type: ignore[union-attr]
            assert time.monotonic() < deadline, "the job was never claimed"
            time.sleep(0.05)
        fetched_before = _fetches(github)
        time.sleep(1.0)  # room for a fetch that does not wait for the lock
        assert _fetches(github) == fetched_before and runner.is_alive() and run.seen == []
    runner.join(60)
    assert not runner.is_alive() and len(run.seen) == 1 and _fetches(github) > fetched_before


def _refused_model(kind: str) -> str:
    if kind == "not-claude":
        return "gpt-4o"
    past = [model for model, ends in end_of_life_dates().items() if ends is not None and ends <= date.today()]
    assert past, "the SDK's deprecation table has no model past its end of life to test with"
    return past[0]


@pytest.mark.parametrize("kind", ["not-claude", "retired"])
def test_a_job_whose_model_the_preflight_refuses_posts_nothing_on_the_issue(
    github: FakeGitHub, shop: Path, tmp_path: Path, app_key: tuple[str, str], kind: str
) -> None:
    from agentloop.loop.runner import fix, resume

    model = _refused_model(kind)
    worker = _worker(github, tmp_path / "serve", app_key, fix, model=model)
    worker.run_resume = resume
    job = _job(worker, 7)
    worker.run_next()

    done = worker.queue.get(job.id)
    assert done is not None and done.status == "failed" and model in done.message
    assert github.comments_on(SLUG, 7) == [], "a run that never started commented on the issue"
    assert not [s for s in github.seen if s.method in ("POST", "PATCH") and "/comments" in s.path]
    dirs = RepoDirs(tmp_path / "serve" / "repos" / "acme" / "shop")
    assert not dirs.job(job.id).exists() and git(dirs.git, "branch", "--list", "loop/*").strip() == ""


def test_a_real_run_keeps_its_record_and_leaves_no_worktree(
    github: FakeGitHub, make_repo: Any, tmp_path: Path, app_key: tuple[str, str]
) -> None:
    from agentloop.loop.runner import fix, resume

    files = {"calc.py": "def add(a, b):\n    return a - b\n", "tests/test_calc.py": "def test_nothing():\n    pass\n"}
    config = {"services": {}, "validate": [{"suite": "unit", "run": "python3 -m pytest -q tests"}],
              "agent": {"max_iterations": 1}, "forge": {"kind": "github", "repo": SLUG}}
    github.add_repo(SLUG, make_repo(files, config, name="calc-source"))
    github.add_issue(SLUG, 7, "add() subtracts", labels=("loop",))
    cassette = write_cassette(tmp_path / "c.json", [[
        create("tests/test_add.py", "from calc import add\n\n\ndef test_add():\n    assert add(2, 3) == 5\n"),
        replace("calc.py", "return a - b", "return a + b"),
    ]])
    worker = _worker(github, tmp_path / "serve", app_key, fix, model=f"replay:{cassette}")
    worker.run_resume = resume
    job = _job(worker, 7)
    worker.run_next()

    done = worker.queue.get(job.id)
    assert done is not None and done.status == "published" and done.run_id, done
    dirs = RepoDirs(tmp_path / "serve" / "repos" / "acme" / "shop")
    assert (dirs.runs / done.run_id / "evidence.json").is_file()
    assert _worktrees(dirs.git) == [str(dirs.git)], "a job or run worktree outlived the job"
    assert not dirs.job(job.id).exists() and not dirs.run_worktree(done.run_id).exists()
    [status] = github.comments_on(SLUG, 7)
    # edited twice: when the draft opened after the first deploy (its link), and at publish
    assert f"loop:run={done.run_id} step=publish:1" in status["body"] and status["edits"] == 2


def _stale_layout(github: FakeGitHub, tmp_path: Path, app_key: tuple[str, str]) -> tuple[Worker, RepoDirs]:
    worker = _worker(github, tmp_path / "serve", app_key, Looks())
    _job(worker, 7)
    worker.run_next()  # makes the clone
    return worker, RepoDirs(tmp_path / "serve" / "repos" / "acme" / "shop")


def _add_worktree(dirs: RepoDirs, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    git(dirs.git, "worktree", "add", "-q", "--detach", str(path), "main")
    return path


def _record(dirs: RepoDirs, run_id: str, **fields: Any) -> None:
    (dirs.runs / run_id).mkdir(parents=True, exist_ok=True)
    summary = RunSummary(id=run_id, issue=7, repo=str(dirs.job(1)), **fields)
    (dirs.runs / run_id / "run.json").write_text(summary.model_dump_json())


def test_gc_removes_stale_worktrees_now_and_an_idle_repository_after_the_retention(
    github: FakeGitHub, shop: Path, tmp_path: Path, app_key: tuple[str, str]
) -> None:
    worker, dirs = _stale_layout(github, tmp_path, app_key)
    queue = worker.queue
    done = _job(worker, 8)
    queue.claim("server-x")
    queue.finish(done.id, "failed", message="killed before its worktree went")
    left = _add_worktree(dirs, dirs.job(done.id))
    active = _job(worker, 9)
    queue.claim("server-x")
    queue.set_run_id(active.id, "r-active")
    kept = _add_worktree(dirs, dirs.job(active.id))
    _record(dirs, "r-active", pid=os.getpid() + 10**6)  # its process died: a job that is resumed
    active_tree = _add_worktree(dirs, dirs.run_worktree("r-active"))
    _record(dirs, "r-failed", status="failed", ended_at=time.time())
    failed_tree = _add_worktree(dirs, dirs.run_worktree("r-failed"))
    alive = subprocess.Popen(["sleep", "120"])
    try:
        _record(dirs, "r-running", pid=alive.pid)
        running_tree = _add_worktree(dirs, dirs.run_worktree("r-running"))
        items = collect(None, None, None, dry_run=False, app_workdir=tmp_path / "serve")
        why = {item.what: (item.action, item.why) for item in items}
        assert why[str(left)] == ("removed", f"job {done.id} is failed; its worktree was left behind")
        assert why[str(failed_tree)] == ("removed", "failed run r-failed: its job is done")
        assert why[str(kept)] == ("kept", f"job {active.id} for acme/shop#9 is running")
        assert not left.exists() and not failed_tree.exists()
        assert kept.is_dir() and active_tree.is_dir() and running_tree.is_dir()
        assert sorted(_worktrees(dirs.git)) == sorted(map(str, [dirs.git, kept, active_tree, running_tree]))
        later = collect(None, None, None, dry_run=False, app_workdir=tmp_path / "serve", now=time.time() + 30 * DAY)
        assert dirs.git.is_dir(), "a repository with a running job or run went"
        assert ("removed", str(dirs.runs / "r-failed")) in {(i.action, i.what) for i in later}
    finally:
        alive.kill()
        alive.wait()
    queue.finish(active.id, "failed", message="stopped")
    items = collect(None, None, None, dry_run=False, app_workdir=tmp_path / "serve", now=time.time() + 30 * DAY)
    assert not dirs.root.exists()
    assert ("removed", str(dirs.root)) in {(i.action, i.what) for i in items}
    assert next(i.why for i in items if i.what == str(dirs.root)).startswith(
        "acme/shop: no job queued or running, unused for 30 days")


def test_gc_leaves_a_repository_a_job_holds_and_never_follows_a_link_out(
    github: FakeGitHub, shop: Path, tmp_path: Path, app_key: tuple[str, str]
) -> None:
    _, dirs = _stale_layout(github, tmp_path, app_key)
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "keep.txt").write_text("mine\n")
    dirs.jobs.mkdir(exist_ok=True)
    (dirs.jobs / "12345").symlink_to(precious)  # a job worktree that is a link out of the workdir
    with open(dirs.lock, "a+b") as held:  # a job is fetching right now
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        items = collect(None, None, None, dry_run=False, app_workdir=tmp_path / "serve", now=time.time() + 30 * DAY)
    assert [(i.action, i.why) for i in items if i.what == str(dirs.root)] == [
        ("kept", "a job of acme/shop is fetching or cleaning up right now")]
    collect(None, None, None, dry_run=False, app_workdir=tmp_path / "serve", now=time.time() + 30 * DAY)
    assert (precious / "keep.txt").read_text() == "mine\n" and not dirs.root.exists()
