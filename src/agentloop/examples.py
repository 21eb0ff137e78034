"""The bundled example system (`examples/shop`): where it is, and a fresh git repository made from it for
`loop demo` and LangGraph Studio's runs without a repository."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from agentloop.errors import ConfigError


def examples_dir() -> Path:
    """`examples/` of this checkout (LOOP_EXAMPLES overrides, for an installed copy)."""
    override = os.environ.get("LOOP_EXAMPLES")
    path = Path(override) if override else Path(__file__).resolve().parents[2] / "examples"
    if not (path / "shop" / "loop.yaml").is_file():
        raise ConfigError(f"{path}/shop/loop.yaml: the bundled example is missing; set LOOP_EXAMPLES to examples/")
    return path


def make_demo_repo(directory: Path | None) -> Path:
    """Copy the example into a new git repository on branch main with one commit."""
    target = (directory or Path(tempfile.mkdtemp(prefix="loop-demo-"))) / "shop"
    if target.exists():
        raise ConfigError(f"{target} already exists; pick another --dir or remove it")
    shutil.copytree(examples_dir() / "shop", target,
                    ignore=shutil.ignore_patterns("__pycache__", "*.db", ".pytest_cache", ".venv"))
    env = {**os.environ, "GIT_AUTHOR_NAME": "demo", "GIT_AUTHOR_EMAIL": "demo@localhost",
           "GIT_COMMITTER_NAME": "demo", "GIT_COMMITTER_EMAIL": "demo@localhost"}
    for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-q", "-m", "The shop, at its buggy state"]):
        subprocess.run(["git", *args], cwd=target, env=env, check=True, capture_output=True)
    return target
