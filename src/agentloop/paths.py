"""Where `loop` keeps things for a target repository. Nothing is written to the user's working tree
except the git-ignored `.loop/runs/` (excluded through `.git/info/exclude`)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from agentloop.errors import RepoError


def repo_root(start: Path) -> Path:
    """The top of the git working tree holding `start`."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--show-toplevel"], cwd=start, capture_output=True, text=True, check=True
        )
    except (subprocess.CalledProcessError, FileNotFoundError, NotADirectoryError):
        raise RepoError(f"{start}: not a git repository; run `git init` or cd to your repository") from None
    return Path(out.stdout.strip()).resolve()


def git_common_dir(repo: Path) -> Path:
    out = subprocess.run(
        ["git", "rev-parse", "--git-common-dir"], cwd=repo, capture_output=True, text=True, check=True
    )
    path = Path(out.stdout.strip())
    return (path if path.is_absolute() else repo / path).resolve()


def state_dir(repo: Path) -> Path:
    """Sandboxes, baseline and worktrees: `$LOOP_STATE_DIR` or `<git-common-dir>/loop`."""
    override = os.environ.get("LOOP_STATE_DIR")
    path = Path(override) if override else git_common_dir(repo) / "loop"
    path.mkdir(parents=True, exist_ok=True)
    return path


def runs_dir(repo: Path) -> Path:
    """Run records: `$LOOP_RUNS_DIR` or `<repo>/.loop/runs` (git-ignored locally)."""
    override = os.environ.get("LOOP_RUNS_DIR")
    if override:
        path = Path(override).resolve()
    else:
        path = repo / ".loop" / "runs"
        _exclude(repo, ".loop/runs/")
    path.mkdir(parents=True, exist_ok=True)
    return path


def worktrees_dir(repo: Path) -> Path:
    path = state_dir(repo) / "worktrees"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _exclude(repo: Path, pattern: str) -> None:
    exclude = git_common_dir(repo) / "info" / "exclude"
    exclude.parent.mkdir(parents=True, exist_ok=True)
    existing = exclude.read_text(encoding="utf-8") if exclude.exists() else ""
    if pattern not in existing.splitlines():
        exclude.write_text(existing.rstrip("\n") + ("\n" if existing else "") + pattern + "\n", encoding="utf-8")
