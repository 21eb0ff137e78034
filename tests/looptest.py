"""Helpers for the tests: git, cassettes written from tool calls."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

GIT_ENV = {
    "GIT_AUTHOR_NAME": "test", "GIT_AUTHOR_EMAIL": "test@localhost",
    "GIT_COMMITTER_NAME": "test", "GIT_COMMITTER_EMAIL": "test@localhost",
}
MakeRepo = Callable[..., Path]


def git(repo: Path, *args: str) -> str:
    out = subprocess.run(["git", *args], cwd=repo, env={**os.environ, **GIT_ENV}, capture_output=True, text=True, check=True)
    return out.stdout


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
