"""`loop sandbox gc` on what runs leave behind: real repositories, worktrees and branches made by loop's own
git helpers, run records written through the record API, the App's clones made by `git clone`, base
results computed by the real base results cache. Only the age of things is moved, through gc's `now`."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from looptest import MakeRepo, git

from agentloop import git as loop_git
from agentloop.app.queue import JobQueue
from agentloop.cleanup import DAY
from agentloop.cleanup.collect import collect
from agentloop.config import load_config
from agentloop.confine import Confinement
from agentloop.forge.local import LocalForge
from agentloop.loop.nodes.intake import branch_name
from agentloop.paths import runs_dir, state_dir, worktrees_dir
from agentloop.results import Issue
from agentloop.runs.folder import RunFolder, RunSummary
from agentloop.validation.base_results import CACHE_DIR, OLD_CACHE_DIR, full_base_runs

CONFIG = {"services": {}, "retention": {"days": 14}}


def loop(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agentloop.cli.main", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120, check=False, env={**os.environ, "COLUMNS": "250"})


@pytest.fixture
def live_pid() -> Iterator[int]:
    holder = subprocess.Popen(["sleep", "120"])
    yield holder.pid
    holder.kill()
    holder.wait()


@pytest.fixture
def dead_pid() -> int:
    gone = subprocess.Popen(["true"])
    gone.wait()
    return gone.pid


def make_run(repo: Path, run_id: str, *, status: str, pid: int | None = None, days_ago: float = 0.0,
             pull_request: str | None = None, message: str = "", worktree: str | None = None) -> Path:
    """A run as `loop fix` leaves it: its worktree on its branch (intake) and its run.json (the record API)."""
    path = worktrees_dir(repo) / run_id
    branch = branch_name(1, run_id)
    base = git(repo, "rev-parse", "main").strip()
    loop_git.add_worktree(loop_git.open_repo(repo), path, branch=branch, commit=base)
    ended = time.time() - days_ago * DAY
    RunFolder(runs_dir(repo), run_id).save_summary(RunSummary(
        id=run_id, issue=1, repo=str(repo), branch=branch, worktree=worktree or str(path), status=status,  # type: ignore[arg-type]
        pid=pid, started_at=ended - 60, ended_at=None if status == "running" else ended,
        pull_request=pull_request, message=message))
    return path


def branches(repo: Path) -> set[str]:
    return set(git(repo, "for-each-ref", "--format=%(refname:short)", "refs/heads/").split())


def test_gc_removes_what_failed_killed_and_published_runs_left_and_keeps_a_running_run(
        make_repo: MakeRepo, live_pid: int, dead_pid: int) -> None:
    repo = make_repo({"a.py": "x = 1\n"}, CONFIG)
    failed = make_run(repo, "r-failed", status="failed")
    errored = make_run(repo, "r-error", status="error")
    killed = make_run(repo, "r-killed", status="running", pid=dead_pid)
    stopped = make_run(repo, "r-stopped", status="interrupted", message="stopped; `loop resume r-stopped` continues")
    running = make_run(repo, "r-running", status="running", pid=live_pid)
    (running / "work.py").write_text("unsaved = True\n")  # what a running agent is editing
    published = make_run(repo, "r-published", status="published")
    pull = LocalForge(repo).publish(worktree=loop_git.Worktree(repo, published), branch=branch_name(1, "r-published"),
                                    title="t", body="b", draft=False, issue=Issue(number=1, title="t"))
    RunFolder(runs_dir(repo), "r-published").update_summary(pull_request=pull.url)

    result = loop("sandbox", "gc", "--repo", str(repo), cwd=repo)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    for path in (failed, errored, killed, stopped, published):
        assert not path.exists()
    assert f"removed worktree {failed} (failed run r-failed)" in lines
    assert (f"removed worktree {killed} (killed run r-killed: its process {dead_pid} is gone; "
            "`loop resume` cannot continue it once its worktree is gone)") in lines
    assert "removed branch loop/1-r-error (errored run r-error)" in lines
    assert branches(repo) == {"main", "loop/1-r-running", "loop/1-r-published"}
    assert any(line.startswith("kept branch loop/1-r-published (pull request open: local #1") for line in lines)
    # the running run: worktree with its edit, branch and record untouched
    assert (running / "work.py").read_text() == "unsaved = True\n"
    assert f"kept worktree {running} (running as pid {live_pid})" in lines
    assert loop_git.find_worktree(repo, running) is not None
    # within the retention every record stays
    assert sorted(p.name for p in runs_dir(repo).iterdir()) == sorted(
        ["r-failed", "r-error", "r-killed", "r-stopped", "r-running", "r-published"])

    again = loop("sandbox", "gc", "--repo", str(repo), cwd=repo)
    assert again.returncode == 0 and "nothing to remove" in again.stdout


def test_dry_run_lists_and_removes_nothing(make_repo: MakeRepo) -> None:
    repo = make_repo({"a.py": "x = 1\n"}, CONFIG)
    failed = make_run(repo, "r-failed", status="failed")
    old = make_run(repo, "r-old", status="failed", days_ago=30)
    result = loop("sandbox", "gc", "--dry-run", "--json", "--repo", str(repo), cwd=repo)
    assert result.returncode == 0, result.stderr
    items = json.loads(result.stdout)
    gone = {(item["kind"], item["what"]) for item in items if item["action"] == "would remove"}
    assert gone == {("worktree", str(failed)), ("branch", "loop/1-r-failed"), ("worktree", str(old)),
                    ("branch", "loop/1-r-old"), ("record", str(runs_dir(repo) / "r-old"))}
    assert all("retention of 14 days" in item["why"] for item in items if "r-old" in item["what"])
    assert failed.is_dir() and old.is_dir() and (runs_dir(repo) / "r-old" / "run.json").is_file()
    assert branches(repo) == {"main", "loop/1-r-failed", "loop/1-r-old"}


def test_retention_removes_old_records_and_a_github_pull_requests_branch_only_after_it(make_repo: MakeRepo,
                                                                                        live_pid: int) -> None:
    repo = make_repo({"a.py": "x = 1\n"}, {**CONFIG, "forge": {"kind": "github", "repo": "acme/shop"}})
    url = "https://github.com/acme/shop/pull/"
    make_run(repo, "r-recent-pr", status="published", days_ago=2, pull_request=url + "5")
    make_run(repo, "r-old-pr", status="published", days_ago=20, pull_request=url + "4")
    make_run(repo, "r-old-failed", status="failed", days_ago=20)
    old_running = make_run(repo, "r-old-running", status="running", pid=live_pid, days_ago=40)
    items = collect(repo, load_config(repo), None, dry_run=False)
    assert branches(repo) == {"main", "loop/1-r-recent-pr", "loop/1-r-old-running"}
    assert sorted(p.name for p in runs_dir(repo).iterdir()) == ["r-old-running", "r-recent-pr"]
    kept = [item.why for item in items if item.action == "kept" and item.what == "loop/1-r-recent-pr"]
    assert kept == [f"pull request {url}5; kept until the retention of 14 days has passed"]
    # a run still going is never touched, however old
    assert old_running.is_dir() and loop_git.find_worktree(repo, old_running) is not None
    # the next day's gc, 13 days on: the recent pull request's branch and record go too
    collect(repo, load_config(repo), None, dry_run=False, now=time.time() + 13 * DAY)
    assert branches(repo) == {"main", "loop/1-r-old-running"}
    assert [p.name for p in runs_dir(repo).iterdir()] == ["r-old-running"]


def test_a_run_paused_for_review_waits_until_the_retention(make_repo: MakeRepo) -> None:
    repo = make_repo({"a.py": "x = 1\n"}, CONFIG)
    paused = make_run(repo, "r-review", status="interrupted",
                      message="waiting before publish: `loop resume r-review` continues")
    collect(repo, load_config(repo), None, dry_run=False)
    assert paused.is_dir() and "loop/1-r-review" in branches(repo)
    collect(repo, load_config(repo), None, dry_run=False, now=time.time() + 15 * DAY)
    assert not paused.exists() and "loop/1-r-review" not in branches(repo)


def test_a_worktree_whose_sandbox_is_still_up_is_kept(make_repo: MakeRepo) -> None:
    from agentloop.cleanup import Collector
    from agentloop.cleanup.runs import collect_runs

    repo = make_repo({"a.py": "x = 1\n"}, CONFIG)
    kept = make_run(repo, "r-kept", status="failed")
    out = Collector(dry_run=False)
    collect_runs(repo, load_config(repo), out, now=time.time(), sandboxes={"r-kept"})
    assert kept.is_dir() and any("its sandbox r-kept is up" in item.why for item in out.items)
    assert "loop/1-r-kept" in branches(repo)


def test_gc_never_deletes_what_a_record_points_at_outside_loops_directories(make_repo: MakeRepo,
                                                                             tmp_path: Path) -> None:
    repo = make_repo({"a.py": "x = 1\n"}, CONFIG)
    outside = tmp_path / "x"
    outside.mkdir()
    (outside / "precious.txt").write_text("keep me\n")
    make_run(repo, "r-at-repo", status="failed", days_ago=30, worktree=str(repo))
    make_run(repo, "r-at-tmp", status="failed", days_ago=30, worktree=str(outside))
    # a record that claims the user's branch
    RunFolder(runs_dir(repo), "r-main").save_summary(RunSummary(
        id="r-main", issue=1, repo=str(repo), branch="main", status="failed", started_at=time.time() - 40 * DAY,
        ended_at=time.time() - 40 * DAY))
    # another repository's old run in a shared LOOP_RUNS_DIR: not this repository's gc to remove
    RunFolder(runs_dir(repo), "r-other").save_summary(RunSummary(
        id="r-other", issue=1, repo=str(tmp_path / "other"), status="failed", started_at=time.time() - 40 * DAY,
        ended_at=time.time() - 40 * DAY))
    # loop's own worktree path replaced by a link into the user's repository
    (worktrees_dir(repo) / "r-link").symlink_to(repo)
    RunFolder(runs_dir(repo), "r-link").save_summary(RunSummary(id="r-link", issue=1, repo=str(repo), status="error"))

    result = loop("sandbox", "gc", "--repo", str(repo), cwd=repo)
    assert result.returncode == 0, result.stderr
    assert (repo / "a.py").read_text() == "x = 1\n" and (repo / "loop.yaml").is_file()
    assert (outside / "precious.txt").read_text() == "keep me\n"
    assert "main" in branches(repo) and git(repo, "rev-parse", "--abbrev-ref", "HEAD").strip() == "main"
    assert not (worktrees_dir(repo) / "r-link").is_symlink()  # only the link went
    assert (runs_dir(repo) / "r-other" / "run.json").is_file()
    out = " ".join(result.stdout.split())
    assert f"kept worktree {repo} (run r-at-repo's record names it" in out
    assert f"kept worktree {outside} (run r-at-tmp's record names it" in out
    assert "kept branch main (run r-main's record names it" in out
    # loop's own worktrees of those runs did go
    assert not (worktrees_dir(repo) / "r-at-repo").exists() and not (worktrees_dir(repo) / "r-at-tmp").exists()


def test_a_branch_checked_out_by_the_user_is_kept_with_gits_reason(make_repo: MakeRepo) -> None:
    repo = make_repo({"a.py": "x = 1\n"}, CONFIG)
    make_run(repo, "r-mine", status="failed")
    loop_git.command(["worktree", "remove", "--force", str(worktrees_dir(repo) / "r-mine")], cwd=repo)
    git(repo, "checkout", "-q", "loop/1-r-mine")
    items = collect(repo, load_config(repo), None, dry_run=False)
    assert "loop/1-r-mine" in branches(repo)
    assert [item.action for item in items if item.what == "loop/1-r-mine"] == ["kept"]


def test_an_old_record_with_float_times_and_no_branch_still_loads_and_is_collected(make_repo: MakeRepo) -> None:
    repo = make_repo({"a.py": "x = 1\n"}, CONFIG)
    base = git(repo, "rev-parse", "main").strip()
    loop_git.add_worktree(loop_git.open_repo(repo), worktrees_dir(repo) / "r-20250101-abc123",
                          branch="loop/3-r-20250101-abc123", commit=base)
    folder = runs_dir(repo) / "r-20250101-abc123"
    folder.mkdir(parents=True)
    # as loop wrote run.json before times were ISO and the branch was named from the start
    (folder / "run.json").write_text(json.dumps({
        "id": "r-20250101-abc123", "issue": 3, "issue_title": "old", "repo": str(repo), "branch": "", "model": "m",
        "status": "failed", "iterations": 2, "pull_request": None, "started_at": 1735725600.25,
        "ended_at": 1735725700.5, "cost_usd": 0.1, "tokens": 10, "message": "", "pid": 1}))
    listed = loop("runs", "--json", "id,branch,started_at,ended_at,duration", "--repo", str(repo), cwd=repo)
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout) == [{"id": "r-20250101-abc123", "branch": "", "started_at": "2025-01-01T10:00:00Z",
                                          "ended_at": "2025-01-01T10:01:40Z", "duration": 100.2}]
    result = loop("sandbox", "gc", "--repo", str(repo), cwd=repo)
    assert "removed branch loop/3-r-20250101-abc123" in result.stdout
    assert "removed record" in result.stdout and not folder.exists()  # ended in 2025: past the retention


def _commit(repo: Path, message: str) -> str:
    (repo / "tests" / "test_n.py").write_text(f"def test_n():\n    assert '{message}'\n")
    git(repo, "commit", "-qam", message)
    return git(repo, "rev-parse", "HEAD").strip()


def test_base_results_are_pruned_by_age_and_count_never_the_current_base_or_a_busy_one(
        make_repo: MakeRepo, tmp_path: Path) -> None:
    config = {**CONFIG, "validate": [{"suite": "unit", "run": "python3 -m pytest -q tests"}],
              "retention": {"days": 14, "base_results": 2}}
    repo = make_repo({"tests/test_n.py": "def test_n():\n    pass\n"}, config)
    loaded = load_config(repo)
    commits = [git(repo, "rev-parse", "HEAD").strip(), _commit(repo, "two"), _commit(repo, "three")]
    for commit in commits:
        full = full_base_runs(loaded.suites, repo=repo, base_commit=commit, sandbox=None,
                              confinement=Confinement(loaded.policy), out_dir=tmp_path / "out" / commit)
        assert full["unit"].source.error is None, full["unit"].result.output_tail
    cache = state_dir(repo) / CACHE_DIR
    first, second, current = (cache / commit for commit in commits)

    items = collect(repo, loaded, None, dry_run=False)
    # the current base and the newest other one stay; the oldest is beyond the count
    assert sorted(p.name for p in cache.iterdir()) == sorted([current.name, second.name])
    assert [(item.what, item.why) for item in items if item.action == "removed"] == [
        (str(first), f"base commit {first.name[:12]} is beyond the newest 2 kept by retention.base_results")]

    lock = next(second.glob("*.lock"))
    with open(lock, "a+b") as held:  # a validation computing that entry right now
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        items = collect(repo, loaded, None, dry_run=False, now=time.time() + 20 * DAY)
    assert second.is_dir() and [item.why for item in items if item.what == str(second)] == [
        "a validation is computing it now"]
    collect(repo, loaded, None, dry_run=False, now=time.time() + 20 * DAY)
    assert [p.name for p in cache.iterdir()] == [current.name]


def test_the_cache_older_versions_kept_as_baseline_results_is_removed_whole(make_repo: MakeRepo, tmp_path: Path) -> None:
    config = {**CONFIG, "validate": [{"suite": "unit", "run": "python3 -m pytest -q tests"}]}
    repo = make_repo({"tests/test_n.py": "def test_n():\n    pass\n"}, config)
    loaded = load_config(repo)
    commits = [git(repo, "rev-parse", "HEAD").strip(), _commit(repo, "two")]
    for commit in commits:
        full_base_runs(loaded.suites, repo=repo, base_commit=commit, sandbox=None,
                       confinement=Confinement(loaded.policy), out_dir=tmp_path / "out" / commit)
    # the same layout under the name older versions gave it: an old base's entry and the current base's
    old, cache = state_dir(repo) / OLD_CACHE_DIR, state_dir(repo) / CACHE_DIR
    old.mkdir()
    first, current = (cache / commit for commit in commits)
    os.rename(first, old / first.name)
    os.rename(current, old / current.name)
    full_base_runs(loaded.suites, repo=repo, base_commit=commits[1], sandbox=None,
                   confinement=Confinement(loaded.policy), out_dir=tmp_path / "out" / "again")

    with open(next((old / current.name).glob("*.lock")), "a+b") as held:  # an older loop computing it now
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        items = collect(repo, loaded, None, dry_run=False)
    removed = [(item.kind, item.what, item.why) for item in items if item.action == "removed"]
    why = f"base commit {first.name[:12]} in baseline-results/, the cache of an older version of loop (now base-results/)"
    assert removed == [("base-results", str(old / first.name), why)]
    assert [item.why for item in items if item.what == str(old / current.name)] == ["a validation is computing it now"]
    assert [p.name for p in cache.iterdir()] == [current.name]  # the new cache's entry of the current base stays

    result = loop("sandbox", "gc", "--repo", str(repo), cwd=repo)
    assert f"removed base-results {old / current.name} (base commit {current.name[:12]} in baseline-results/" in result.stdout
    assert not old.exists() and [p.name for p in cache.iterdir()] == [current.name]


def _clone(source: Path, workdir: Path, issue: int) -> Path:
    path = workdir / "repos" / "acme" / "shop" / f"issue-{issue}"
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["git", "clone", "-q", str(source), str(path)], check=True)
    return path


def test_the_apps_idle_clones_go_but_not_one_with_a_job_or_a_running_run(make_repo: MakeRepo, tmp_path: Path,
                                                                        live_pid: int) -> None:
    source = make_repo({"a.py": "x = 1\n"}, CONFIG)
    workdir = tmp_path / "serve"
    idle, queued, busy = (_clone(source, workdir, n) for n in (1, 2, 3))
    queue = JobQueue.open(workdir / "queue.sqlite3")
    job = queue.enqueue(repo="acme/shop", issue=2, installation_id=1)
    assert job is not None
    RunFolder(runs_dir(busy), "r-busy").save_summary(RunSummary(id="r-busy", issue=3, repo=str(busy), pid=live_pid))

    fresh = collect(None, None, None, dry_run=False, app_workdir=workdir)
    assert not [item for item in fresh if item.action == "removed"] and idle.is_dir()  # used just now
    items = collect(None, None, None, dry_run=False, app_workdir=workdir, now=time.time() + 15 * DAY)
    assert not idle.exists() and queued.is_dir() and busy.is_dir()
    why = {item.what: item.why for item in items}
    assert why[str(queued)] == f"job {job.id} for acme/shop#2 is queued"
    assert why[str(busy)] == "run r-busy in it is running"
    assert why[str(idle)].startswith("acme/shop#1: no job queued or running, unused for 15 days")


def test_clones_without_a_queue_are_kept_and_gc_runs_outside_a_repository(make_repo: MakeRepo,
                                                                          tmp_path: Path) -> None:
    source = make_repo({"a.py": "x = 1\n"}, CONFIG)
    workdir = tmp_path / "serve"
    clone = _clone(source, workdir, 1)
    elsewhere = tmp_path / "not-a-repo"
    elsewhere.mkdir()
    result = loop("sandbox", "gc", "--app-workdir", str(workdir), cwd=elsewhere)
    assert result.returncode == 0, result.stderr
    assert "no job queue at" in result.stdout and "--queue" in result.stdout and clone.is_dir()
    wrong = loop("sandbox", "gc", "--app-workdir", str(elsewhere), cwd=elsewhere)
    assert wrong.returncode == 2 and "no `repos` folder" in wrong.stderr and "Traceback" not in wrong.stderr
    plain = loop("sandbox", "gc", cwd=elsewhere)
    assert plain.returncode == 2 and "not a git repository" in plain.stderr
