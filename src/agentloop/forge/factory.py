"""Pick the forge for a repository: GitHub when configured (or `origin` is on GitHub), else local."""

from __future__ import annotations

from pathlib import Path

from agentloop.config import LoopConfig
from agentloop.forge.base import Forge
from agentloop.forge.local import LocalForge


def open_forge(repo: Path, config: LoopConfig) -> Forge:
    if config.forge.kind == "github":
        from agentloop.forge.github import GitHubForge

        return GitHubForge.from_repo(repo, config)
    return LocalForge(repo)
