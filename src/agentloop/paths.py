"""Where `loop` keeps things for a target repository. Nothing is written to the user's working tree
except the git-ignored `.loop/runs/` (excluded through `.git/info/exclude`)."""

from __future__ import annotations

import os
from pathlib import Path

from agentloop import git
from agentloop.errors import RepoError


def repo_root(start: Path) -> Path:
    """The top of the git working tree holding `start`."""
    try:  # through loop's git: an inherited GIT_DIR (loop started from a hook) must not redirect it
        out = git.command(["rev-parse", "--show-toplevel"], cwd=start)
    except RepoError:
        raise RepoError(f"{start}: not a git repository; run `git init` or cd to your repository") from None
    return Path(out.stdout.strip()).resolve()


def git_common_dir(repo: Path) -> Path:
    return git.common_dir(repo)


def state_dir(repo: Path) -> Path:
    """Sandboxes, baseline and worktrees: `$LOOP_STATE_DIR` or `<git-common-dir>/loop`."""
    override = os.environ.get("LOOP_STATE_DIR")
    path = Path(override) if override else git_common_dir(repo) / "loop"
    return _directory(path, "LOOP_STATE_DIR" if override else None)


def runs_dir(repo: Path) -> Path:
    """Run records: `$LOOP_RUNS_DIR` or `<repo>/.loop/runs` (git-ignored locally)."""
    override = os.environ.get("LOOP_RUNS_DIR")
    if override:
        path = Path(override).resolve()
    else:
        path = repo / ".loop" / "runs"
        _exclude(repo, ".loop/runs/")
    return _directory(path, "LOOP_RUNS_DIR" if override else None)


def _directory(path: Path, variable: str | None) -> Path:
    """`path`, made if missing; a file or an unwritable place there is a one-line error naming the setting."""
    where = f"{variable}={path}" if variable else str(path)
    fix = f"point {variable} at a directory" if variable else "move what is there away"
    if path.exists() and not path.is_dir():
        raise RepoError(f"{where}: is a file, not a directory; {fix}")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RepoError(f"{where}: cannot make the directory ({exc.strerror or type(exc).__name__}); {fix}") from None
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
