"""Git operations through gitpython: worktrees, diffs, commits. The user's checkout is never edited."""

from __future__ import annotations

from pathlib import Path

import git

from agentloop.errors import RepoError


def open_repo(path: Path) -> git.Repo:
    try:
        return git.Repo(path)
    except (git.InvalidGitRepositoryError, git.NoSuchPathError):
        raise RepoError(f"{path}: not a git repository; run `git init` or cd to your repository") from None


def ensure_clean(repo: git.Repo) -> None:
    """Refuse a dirty checkout: the run's base must be a commit the user can see."""
    if not repo.head.is_valid():
        raise RepoError(f"{repo.working_tree_dir}: no commits yet; commit your code first")
    if repo.is_dirty(untracked_files=False):
        diffs = [*repo.index.diff(None), *repo.index.diff("HEAD")]
        changed = [item.a_path for item in diffs if item.a_path]
        names = ", ".join(sorted(set(changed))[:5])
        raise RepoError(f"{repo.working_tree_dir}: uncommitted changes ({names}); commit or stash them first")


def resolve_base(repo: git.Repo, base_branch: str) -> str:
    for ref in (base_branch, f"origin/{base_branch}"):
        try:
            return str(repo.commit(ref).hexsha)
        except (git.BadName, ValueError):
            continue
    raise RepoError(f"base branch {base_branch!r} not found; set `base_branch` in loop.yaml")


def add_worktree(repo: git.Repo, path: Path, *, branch: str | None, commit: str) -> Path:
    """A worktree at `path` on a new `branch` (or detached when branch is None) at `commit`."""
    if path.exists() and (path / ".git").exists():
        return path
    args = ["add", "--force"]
    args += ["-B", branch] if branch else ["--detach"]
    repo.git.worktree(*args, str(path), commit)
    return path


def remove_worktree(repo: git.Repo, path: Path) -> None:
    if path.exists():
        repo.git.worktree("remove", "--force", str(path))
    repo.git.worktree("prune")


def diff(worktree: Path, base: str) -> str:
    """The worktree's whole change against `base`, new files included."""
    wt = git.Repo(worktree)
    wt.git.add("--all", "--intent-to-add")
    return str(wt.git.diff(base, "--binary"))


def changed_files(worktree: Path, base: str) -> list[str]:
    wt = git.Repo(worktree)
    wt.git.add("--all", "--intent-to-add")
    names = wt.git.diff(base, "--name-only")
    return [name for name in str(names).splitlines() if name]


def commit_all(worktree: Path, message: str) -> str:
    """Commit everything in the worktree (one commit per published run); return the head sha."""
    wt = git.Repo(worktree)
    wt.git.add("--all")
    if wt.is_dirty(index=True, working_tree=False):
        wt.git.commit(
            "-m", message, "--no-verify",
            env={"GIT_AUTHOR_NAME": "loop", "GIT_AUTHOR_EMAIL": "loop@localhost",
                 "GIT_COMMITTER_NAME": "loop", "GIT_COMMITTER_EMAIL": "loop@localhost"},
        )
    return str(wt.head.commit.hexsha)


def head(worktree: Path) -> str:
    return str(git.Repo(worktree).head.commit.hexsha)
