"""Each side effect carries its run and step, and a repeat of the step finds it: the forges' part of
resuming without posting, pushing or opening anything twice (the whole of it, with real kills, is
tests/forge/test_kill_side_effects.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from looptest import MakeRepo, git

from agentloop.forge.base import Step
from agentloop.forge.github import GitHubForge
from agentloop.forge.local import LocalForge
from agentloop.git import Worktree
from agentloop.paths import state_dir

from .conftest import SLUG
from .fake_github import FakeGitHub


def _forge(github: FakeGitHub) -> GitHubForge:
    return GitHubForge(SLUG, api_url=github.api_url, token=github.token, backoff=0)


def _branch(tmp_path: Path, forge: GitHubForge, branch: str) -> Worktree:
    work = tmp_path / "work"
    forge.git(["clone", "--quiet", forge.clone_url(), str(work)])
    git(work, "checkout", "-q", "-b", branch)
    (work / "app.py").write_text("def total(a, b):\n    return a + b\n", encoding="utf-8")
    git(work, "commit", "-qam", "fix total")
    return Worktree(work, work)


def _pushes(github: FakeGitHub) -> int:
    return sum(1 for seen in github.seen if seen.method == "POST" and seen.path.endswith("/git-receive-pack"))


@pytest.mark.parametrize("run", ["r-1 --> <script>", "", "../x", "r 1"])
def test_a_step_that_could_break_out_of_its_marker_is_refused(run: str) -> None:
    with pytest.raises(ValueError, match="letters, digits"):
        Step(run, "publish", 1)


def test_a_push_already_on_github_is_not_pushed_again(github: FakeGitHub, shop: Path, tmp_path: Path) -> None:
    forge = _forge(github)
    worktree = _branch(tmp_path, forge, "loop/7-r1")
    forge.push(worktree, "loop/7-r1")
    _forge(github).push(worktree, "loop/7-r1")  # a resumed run, in a new process
    assert _pushes(github) == 1
    (worktree.path / "more.py").write_text("x = 1\n")
    git(worktree.path, "add", "more.py")
    git(worktree.path, "commit", "-qm", "more")
    forge.push(worktree, "loop/7-r1")  # a new commit is pushed
    assert _pushes(github) == 2 and github.branch_sha(SLUG, "loop/7-r1") == git(worktree.path, "rev-parse", "HEAD").strip()


def test_a_closed_pull_request_of_the_branch_is_found_not_opened_again(
    github: FakeGitHub, shop: Path, tmp_path: Path
) -> None:
    forge = _forge(github)
    issue = forge.get_issue(7)
    worktree = _branch(tmp_path, forge, "loop/7-r1")
    step = Step("r1", "publish", 2)
    pull = forge.publish(worktree=worktree, branch="loop/7-r1", title="t", body="evidence", draft=False, issue=issue,
                         step=step)
    assert github.repos[SLUG].pulls[0]["body"].startswith("<!-- loop:run=r1 step=publish:2 -->\nevidence")
    github.repos[SLUG].pulls[0]["state"] = "closed"  # someone closed it before the run was resumed
    again = _forge(github).publish(worktree=worktree, branch="loop/7-r1", title="t", body="evidence", draft=False,
                                   issue=issue, step=step)
    assert again.number == pull.number and len(github.repos[SLUG].pulls) == 1


def test_the_runs_status_comment_is_edited_by_each_step_and_a_repeated_step_changes_nothing(
    github: FakeGitHub, shop: Path
) -> None:
    issue = _forge(github).get_issue(7)
    _forge(github).comment(issue, "working", step=Step("r1", "intake"))
    _forge(github).comment(issue, "working", step=Step("r1", "intake"))  # intake again, after a kill
    _forge(github).comment(issue, "published", step=Step("r1", "publish", 1))
    _forge(github).comment(issue, "published", step=Step("r1", "publish", 1))
    _forge(github).comment(issue, "working", step=Step("r2", "intake"))  # another run: its own comment
    first, second = github.comments_on(SLUG, 7)
    assert "step=publish:1 -->\npublished" in first["body"] and first["edits"] == 1
    assert "loop:run=r2 step=intake:0" in second["body"] and second["edits"] == 0
    assert _forge(github).get_issue(7).comments == []  # loop's own comments are not issue text


def test_local_comments_one_per_step_and_the_pull_request_body_carries_its_step(make_repo: MakeRepo) -> None:
    repo = make_repo({".loop/issues/7.md": "# broken\n"}, None)
    forge = LocalForge(repo)
    issue = forge.get_issue(7)
    for _ in range(2):  # the second time is a resumed run repeating the steps
        forge.comment(issue, "working", step=Step("r1", "intake"))
        forge.comment(issue, "published", step=Step("r1", "publish", 1))
    text = (state_dir(repo) / "comments" / "7.md").read_text()
    assert text.count("working") == 1 and text.count("published") == 1
    git(repo, "branch", "loop/7-r1")
    pull = forge.publish(worktree=Worktree(repo, repo), branch="loop/7-r1", title="t", body="evidence", draft=False,
                         issue=issue, step=Step("r1", "publish", 1))
    assert Path(pull.url.removeprefix("file://")).read_text().startswith("<!-- loop:run=r1 step=publish:1 -->")
    assert forge.find_pull_request("loop/7-r1") == pull
    assert sorted(p.name for p in (state_dir(repo) / "pulls").iterdir()) == ["1.json", "1.md"]  # no claim left
