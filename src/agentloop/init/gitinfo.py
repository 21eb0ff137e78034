"""What the repository's git says about a loop.yaml: the base branch and the forge."""

from __future__ import annotations

import re
from pathlib import Path

from agentloop import git
from agentloop.errors import LoopError
from agentloop.forge.names import split_slug
from agentloop.init.draft import Draft, Noted, one_line

# git@github.com:o/n.git, ssh://git@github.com/o/n, https://github.com/o/n.git, https://user@github.com/o/n
_GITHUB = re.compile(r"(?:git@github\.com:|(?:ssh|https?|git)://(?:[^@/]+@)?github\.com[:/])([^/]+)/([^/]+?)(?:\.git)?/?")
_BRANCH = re.compile(r"[\w./-]{1,200}")


def _git(repo: Path, *args: str) -> str | None:
    try:
        done = git.command(list(args), cwd=repo, check=False, timeout=30)
    except LoopError:
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def fill_from_git(repo: Path, draft: Draft) -> None:
    remote_head = _git(repo, "symbolic-ref", "--quiet", "--short", "refs/remotes/origin/HEAD")
    current = _git(repo, "symbolic-ref", "--quiet", "--short", "HEAD")
    if remote_head and remote_head.startswith("origin/") and _BRANCH.fullmatch(remote_head[7:]):
        draft.base_branch = Noted(remote_head[7:], "origin's default branch (refs/remotes/origin/HEAD)")
    elif current and _BRANCH.fullmatch(current):
        draft.base_branch = Noted(current, "the branch checked out now; origin names no default")
    url = _git(repo, "remote", "get-url", "origin")
    if not url:
        draft.forge_note = "no origin remote: pull requests are written under .loop/ (forge kind local)"
        return
    match = _GITHUB.fullmatch(url)
    if match is None:
        draft.forge_note = "origin is not on github.com: pull requests are written under .loop/ (forge kind local)"
        return
    slug = f"{match.group(1)}/{match.group(2)}"
    try:
        split_slug(slug)
    except LoopError as exc:
        draft.forge_note = one_line(f"origin's GitHub name is not usable ({exc}); forge kind local")
        return
    draft.forge_kind = "github"
    draft.forge_repo = Noted(slug, "the origin remote")
