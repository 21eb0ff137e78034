"""Cassettes: the model's answers written down (`--record FILE`) and played back (`--model replay:FILE`).

Format (version 1), shared with the demo's scripted transcript::

    {"version": 1, "model": "<model id or 'scripted'>",
     "responses": [<Messages API response objects exactly as /v1/messages returns them>]}

Replay hands back the responses in order, one per model call, whatever the request, so a run is
reproducible without a model.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ValidationError

from agentloop.agent.base import ModelClient, Seekable
from agentloop.errors import ModelError

REPLAY_PREFIX = "replay:"


class Cassette(BaseModel):
    version: Literal[1] = 1
    model: str = "scripted"
    responses: list[dict[str, Any]]


def _check_response(path: Path, index: int, response: dict[str, Any]) -> None:
    if response.get("type") != "message" or not isinstance(response.get("content"), list):
        raise ModelError(
            f"{path}: responses[{index}] is not a Messages API message (needs type 'message' and a "
            "content list); re-record the cassette with --record"
        )


def load_cassette(path: Path) -> Cassette:
    """Read and check a cassette; every problem is a ModelError naming the file."""
    if not path.is_file():
        raise ModelError(f"{path}: cassette not found; check the path given to --model replay:FILE")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"{path}: not a JSON cassette ({exc}); re-record it with --record") from None
    try:
        cassette = Cassette.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or "(top level)"
        raise ModelError(f"{path}: field `{field}`: {first['msg']} (a cassette is "
                         '{"version": 1, "model": ..., "responses": [...]})') from None
    for index, response in enumerate(cassette.responses):
        _check_response(path, index, response)
    return cassette


class ReplayModel:
    """Plays a cassette back, one response per call; running out is a ModelError naming the file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._cassette = load_cassette(path)
        self.model = self._cassette.model
        self._next = 0

    def seek(self, position: int) -> None:
        """Continue from response `position` (the model calls a resumed run has already made)."""
        self._next = max(0, position)

    def create(self, request: dict[str, Any]) -> dict[str, Any]:
        if self._next >= len(self._cassette.responses):
            raise ModelError(
                f"{self.path}: cassette ran out after {len(self._cassette.responses)} responses; the run asked "
                "for more model calls than were recorded (re-record it with --record)"
            )
        response = self._cassette.responses[self._next]
        self._next += 1
        return response


class RecordingModel:
    """Wraps a model client and writes every response it returns to a cassette, flushed each time."""

    def __init__(self, inner: ModelClient, path: Path) -> None:
        self._inner = inner
        self.path = path
        self.model = inner.model
        # Appending to an existing cassette lets a resumed run keep what it recorded before it stopped.
        self._cassette = load_cassette(path) if path.is_file() else Cassette(model=inner.model, responses=[])
        path.parent.mkdir(parents=True, exist_ok=True)
        self._write()

    def seek(self, position: int) -> None:
        """Forget responses past `position`: they belong to an interrupted edit that is being redone."""
        if isinstance(self._inner, Seekable):
            self._inner.seek(position)
        del self._cassette.responses[position:]
        self._write()

    def create(self, request: dict[str, Any]) -> dict[str, Any]:
        response = self._inner.create(request)
        self._cassette.responses.append(response)
        self._write()
        return response

    def _write(self) -> None:
        # Written whole and renamed into place, so a killed run leaves a valid cassette behind.
        tmp = self.path.with_name(self.path.name + ".tmp")
        with tmp.open("w", encoding="utf-8") as handle:
            json.dump(self._cassette.model_dump(mode="json"), handle, indent=1)
            handle.flush()
            os.fsync(handle.fileno())
        tmp.replace(self.path)
