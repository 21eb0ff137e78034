"""Fixtures shared by every test: real git repositories in temp dirs, an isolated environment."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

GIT_ENV = {
    "GIT_AUTHOR_NAME": "test", "GIT_AUTHOR_EMAIL": "test@localhost",
    "GIT_COMMITTER_NAME": "test", "GIT_COMMITTER_EMAIL": "test@localhost",
}


def git(repo: Path, *args: str) -> str:
    out = subprocess.run(["git", *args], cwd=repo, env={**os.environ, **GIT_ENV}, capture_output=True, text=True, check=True)
    return out.stdout


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test sees the developer's keys or loop settings."""
    for name in ("ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL", "LOOP_MODEL", "LOOP_RUNS_DIR", "LOOP_STATE_DIR",
                 "GITHUB_TOKEN", "GITHUB_API_URL"):
        monkeypatch.delenv(name, raising=False)
    for name, value in GIT_ENV.items():
        monkeypatch.setenv(name, value)


MakeRepo = Callable[..., Path]


@pytest.fixture
def make_repo(tmp_path: Path) -> Iterator[MakeRepo]:
    """make_repo(files={path: text}, config={...}) -> a git repo on branch main with one commit."""
    made: list[Path] = []

    def _make(files: dict[str, str], config: dict[str, Any] | None = None, name: str = "repo") -> Path:
        repo = tmp_path / name
        repo.mkdir()
        for rel, text in files.items():
            path = repo / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
        if config is not None:
            (repo / "loop.yaml").write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
        git(repo, "init", "-q", "-b", "main")
        git(repo, "add", "-A")
        git(repo, "commit", "-q", "-m", "initial")
        made.append(repo)
        return repo

    yield _make


def write_cassette(path: Path, turns: list[list[dict[str, Any]]]) -> Path:
    """A cassette from edit turns; each turn is a list of tool calls, closed by an end_turn message."""
    responses: list[dict[str, Any]] = []
    counter = 0
    for turn in turns:
        for call in turn:
            counter += 1
            responses.append(_message(counter, [{"type": "tool_use", "id": f"toolu_{counter:04d}", **call}], "tool_use"))
        counter += 1
        responses.append(_message(counter, [{"type": "text", "text": f"Done with turn {len(responses)}."}], "end_turn"))
    path.write_text(json.dumps({"version": 1, "model": "scripted", "responses": responses}), encoding="utf-8")
    return path


def _message(n: int, content: list[dict[str, Any]], stop: str) -> dict[str, Any]:
    return {
        "id": f"msg_{n:04d}", "type": "message", "role": "assistant", "model": "scripted", "content": content,
        "stop_reason": stop, "stop_sequence": None,
        "usage": {"input_tokens": 1000, "output_tokens": 100, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0},
    }


def create(path: str, text: str) -> dict[str, Any]:
    return {"name": "str_replace_based_edit_tool", "input": {"command": "create", "path": path, "file_text": text}}


def replace(path: str, old: str, new: str) -> dict[str, Any]:
    return {"name": "str_replace_based_edit_tool", "input": {"command": "str_replace", "path": path, "old_str": old, "new_str": new}}


def bash(command: str) -> dict[str, Any]:
    return {"name": "bash", "input": {"command": command}}
