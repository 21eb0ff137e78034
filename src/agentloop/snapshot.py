"""Snapshots of a worktree's files as git tree objects, without touching its index or branch.

Used to redo an interrupted edit from exactly where it started. Git runs through `agentloop.git`, so a
worktree whose `.git` was replaced stops the run instead of running the replacement's config."""

from __future__ import annotations

import tempfile
from pathlib import Path

from agentloop import git


def _git(worktree: git.Worktree, *args: str, index: str | None = None) -> str:
    return git.run(worktree, *args, env={"GIT_INDEX_FILE": index} if index else None).stdout


def _files(worktree: git.Worktree) -> set[str]:
    return {name for name in git.ls_files(worktree) if (worktree.path / name).exists()}


def snapshot_tree(worktree: git.Worktree) -> str:
    """The tree object of every tracked and untracked (not ignored) file, as it is on disk now."""
    with tempfile.TemporaryDirectory() as tmp:
        index = str(Path(tmp) / "index")
        _git(worktree, "add", "--all", ".", index=index)
        return _git(worktree, "write-tree", index=index).strip()


def restore_tree(worktree: git.Worktree, tree: str) -> None:
    """Make the worktree's files exactly those of `tree` (ignored files are left alone)."""
    wanted = set(_git(worktree, "ls-tree", "-r", "-z", "--name-only", tree).split("\0")) - {""}
    for name in _files(worktree) - wanted:
        (worktree.path / name).unlink()
    with tempfile.TemporaryDirectory() as tmp:
        index = str(Path(tmp) / "index")
        _git(worktree, "read-tree", tree, index=index)
        _git(worktree, "checkout-index", "--all", "--force", index=index)
