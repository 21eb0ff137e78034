"""Snapshots of a worktree's files as git tree objects, without touching its index or branch.

Used to redo an interrupted edit from exactly where it started."""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path


def _git(worktree: Path, *args: str, index: str | None = None) -> str:
    env = dict(os.environ)
    if index:
        env["GIT_INDEX_FILE"] = index
    out = subprocess.run(["git", *args], cwd=worktree, env=env, capture_output=True, text=True, check=True)
    return out.stdout


def _files(worktree: Path) -> set[str]:
    listed = _git(worktree, "ls-files", "-z", "--cached", "--others", "--exclude-standard")
    return {name for name in listed.split("\0") if name and (worktree / name).exists()}


def snapshot_tree(worktree: Path) -> str:
    """The tree object of every tracked and untracked (not ignored) file, as it is on disk now."""
    with tempfile.TemporaryDirectory() as tmp:
        index = str(Path(tmp) / "index")
        _git(worktree, "add", "--all", ".", index=index)
        return _git(worktree, "write-tree", index=index).strip()


def restore_tree(worktree: Path, tree: str) -> None:
    """Make the worktree's files exactly those of `tree` (ignored files are left alone)."""
    wanted = set(_git(worktree, "ls-tree", "-r", "-z", "--name-only", tree).split("\0")) - {""}
    for name in _files(worktree) - wanted:
        (worktree / name).unlink()
    with tempfile.TemporaryDirectory() as tmp:
        index = str(Path(tmp) / "index")
        _git(worktree, "read-tree", tree, index=index)
        _git(worktree, "checkout-index", "--all", "--force", index=index)
