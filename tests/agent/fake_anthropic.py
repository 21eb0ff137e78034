"""A Messages-API server on loopback for tests: real HTTP on 127.0.0.1, the real JSON shapes.

The Anthropic API cannot be reached from the tests, so the real `anthropic` client talks to this
server instead (through `ANTHROPIC_BASE_URL`). It answers `POST /v1/messages` from a script: each
entry is either a response object (sent with 200) or an `Failure` (429 rate_limit_error, 529
overloaded_error, 500 api_error..., with a retry-after header). It keeps every request it received.
`GET /v1/models/{id}` answers from `models` (id -> lifecycle): 200 with a model object for a known id,
404 not_found_error otherwise; the ids asked for are kept in `model_lookups`.
"""

from __future__ import annotations

import itertools
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote

from agentloop.config import DEFAULT_MODEL

_ids = itertools.count(1)
# what the Models API knows by default: the current models, and one retired but still catalogued
KNOWN_MODELS = {"claude-opus-5-5": "active", "claude-sonnet-5-5": "active", "claude-haiku-5-5": "active",
                "claude-sonnet-4-5": "retired"}
_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 429: "rate_limit_error",
                500: "api_error", 529: "overloaded_error"}


@dataclass
class Failure:
    status: int
    retry_after: str | None = "0"


def text(value: str) -> dict[str, Any]:
    return {"type": "text", "text": value}


def tool_use(name: str, tool_input: Any) -> dict[str, Any]:
    return {"type": "tool_use", "id": f"toolu_{next(_ids):04d}", "name": name, "input": tool_input}


def message(*content: dict[str, Any], stop_reason: str | None = None, input_tokens: int = 100,
            output_tokens: int = 50, model: str = DEFAULT_MODEL) -> dict[str, Any]:
    """A Messages API response object as /v1/messages returns it."""
    if stop_reason is None:
        stop_reason = "tool_use" if any(block["type"] == "tool_use" for block in content) else "end_turn"
    return {
        "id": f"msg_{next(_ids):06d}", "type": "message", "role": "assistant", "model": model,
        "content": list(content), "stop_reason": stop_reason, "stop_sequence": None,
        "usage": {"input_tokens": input_tokens, "output_tokens": output_tokens,
                  "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0},
    }


@dataclass
class FakeAnthropic:
    script: list[dict[str, Any] | Failure] = field(default_factory=list)
    requests: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    url: str = ""
    models: dict[str, str] = field(default_factory=lambda: dict(KNOWN_MODELS))
    reject_key: bool = False  # answer the Models API with 401 authentication_error
    model_lookups: list[str] = field(default_factory=list)

    def add(self, *entries: dict[str, Any] | Failure) -> None:
        self.script.extend(entries)

    def user_texts(self, index: int) -> str:
        """Every text the client sent in request `index` (prompts and tool results), joined."""
        parts: list[str] = []
        for msg in self.requests[index]["messages"]:
            content = msg["content"]
            blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content
            for block in blocks:
                if block.get("type") == "text":
                    parts.append(block["text"])
                elif block.get("type") == "tool_result":
                    parts.append(str(block.get("content")))
        return "\n".join(parts)

    def tool_results(self, index: int) -> list[dict[str, Any]]:
        last = self.requests[index]["messages"][-1]["content"]
        return [b for b in last if isinstance(b, dict) and b.get("type") == "tool_result"]


def _handler(fake: FakeAnthropic, lock: threading.Lock) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
            pass

        def _send(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("request-id", f"req_{next(_ids)}")
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            path = self.path.split("?")[0]
            if not path.startswith("/v1/models/"):
                self._send(404, {"type": "error", "error": {"type": "not_found_error", "message": self.path}})
                return
            model = unquote(path.removeprefix("/v1/models/"))
            with lock:
                fake.model_lookups.append(model)
                lifecycle = fake.models.get(model)
            if fake.reject_key:
                self._send(401, {"type": "error", "error": {"type": "authentication_error", "message": "invalid x-api-key"}})
            elif lifecycle is None:
                self._send(404, {"type": "error", "error": {"type": "not_found_error", "message": f"model: {model}"}})
            else:
                self._send(200, {"type": "model", "id": model, "display_name": model, "lifecycle": lifecycle,
                                 "created_at": "2026-06-01T00:00:00Z"})

        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("content-length", "0")))
            if self.path.split("?")[0] != "/v1/messages":
                self._send(404, {"type": "error", "error": {"type": "not_found_error", "message": self.path}})
                return
            with lock:
                fake.requests.append(json.loads(raw))
                fake.headers.append({k.lower(): v for k, v in self.headers.items()})
                entry = fake.script.pop(0) if fake.script else None
            if entry is None:
                self._send(500, {"type": "error", "error": {"type": "api_error", "message": "script exhausted"}})
            elif isinstance(entry, Failure):
                headers = {"retry-after": entry.retry_after} if entry.retry_after is not None else {}
                kind = _ERROR_TYPES.get(entry.status, "api_error")
                self._send(entry.status, {"type": "error", "error": {"type": kind, "message": f"scripted {kind}"}},
                           headers)
            else:
                self._send(200, entry)

    return Handler


def serve() -> Iterator[FakeAnthropic]:
    """Start the server on a free loopback port; yields the fake; stops it afterwards."""
    fake = FakeAnthropic()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(fake, threading.Lock()))
    fake.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
