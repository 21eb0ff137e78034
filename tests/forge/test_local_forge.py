"""The local forge: pull request numbers are claimed, never reused or shared."""

from __future__ import annotations

from pathlib import Path

from looptest import MakeRepo

from agentloop.forge.local import LocalForge
from agentloop.git import Worktree
from agentloop.results import Issue


def test_pull_request_numbers_are_never_reused(make_repo: MakeRepo) -> None:
    repo = make_repo({"a.txt": "a\n"})
    forge = LocalForge(repo)
    issue = Issue(number=1, title="t")
    first = forge.publish(worktree=Worktree(repo, repo), branch="loop/1-a", title="a", body="A", draft=False, issue=issue)
    second = forge.publish(worktree=Worktree(repo, repo), branch="loop/1-b", title="b", body="B", draft=False, issue=issue)
    again = forge.publish(worktree=Worktree(repo, repo), branch="loop/1-a", title="a", body="A2", draft=False, issue=issue)
    assert (first.number, second.number, again.number) == (1, 2, 1)
    (Path(first.url[len("file://"):])).with_suffix(".json").unlink()  # a pull request removed by hand
    third = forge.publish(worktree=Worktree(repo, repo), branch="loop/1-c", title="c", body="C", draft=False, issue=issue)
    assert third.number == 3
    assert forge.find_pull_request("loop/1-b") == second
