"""The tools one by one: the editor's commands on real files, and `http_request` against a real HTTP
server on loopback standing in for the sandbox router."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from agentloop.agent.editor import Editor
from agentloop.agent.policy import ConfinedShell
from agentloop.agent.tools import ToolBox
from agentloop.config import PolicyConfig


class _Echo(BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        body = json.dumps({"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()}}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def router() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def _toolbox(worktree: Path, sandbox_env: dict[str, str] | None = None) -> ToolBox:
    policy = PolicyConfig(allow_unconfined=True)
    return ToolBox(ConfinedShell(worktree, policy, use_bwrap=False), Editor(worktree, policy.output_limit),
                   sandbox_env=sandbox_env or {})


def test_http_request_reaches_the_sandbox_with_its_routing_headers(worktree: Path, router: str) -> None:
    env = {"LOOP_SANDBOX_URL": router, "LOOP_URL_ORDERS": router + "/orders",
           "LOOP_ROUTING_HEADERS": json.dumps({"baggage": "sd-routing-key=abc123", "x-loop-route": "abc123"})}
    tools = _toolbox(worktree, env)
    assert "http_request" in [t["name"] for t in tools.definitions]
    outcome = tools.run("http_request", {"method": "GET", "url": "/orders/1?x=2", "headers": {"accept": "text/plain"}})
    assert not outcome.is_error and outcome.content.startswith("HTTP 200")
    echoed = json.loads(outcome.content.split("\n\n", 1)[1])
    assert echoed["path"] == "/orders/1?x=2"
    assert echoed["headers"]["baggage"] == "sd-routing-key=abc123" and echoed["headers"]["accept"] == "text/plain"
    elsewhere = tools.run("http_request", {"method": "GET", "url": "http://example.com/"})
    assert elsewhere.is_error and "not a sandbox URL" in elsewhere.content


def test_without_a_sandbox_there_is_no_http_tool(worktree: Path) -> None:
    tools = _toolbox(worktree)
    assert [t["name"] for t in tools.definitions] == ["str_replace_based_edit_tool", "bash"]
    assert tools.run("http_request", {"method": "GET", "url": "/"}).is_error


def test_editor_view_insert_and_listing(worktree: Path) -> None:
    tools = _toolbox(worktree)
    edit = "str_replace_based_edit_tool"
    app = "services/orders/app.py"
    assert tools.run(edit, {"command": "view", "path": app, "view_range": [2, -1]}).content == \
        "     2\t    return sum(prices) - 1"
    inserted = tools.run(edit, {"command": "insert", "path": app, "insert_line": 0, "insert_text": "# orders"})
    assert not inserted.is_error
    assert (worktree / app).read_text().splitlines()[0] == "# orders"
    listing = tools.run(edit, {"command": "view", "path": "/repo"}).content
    assert "/repo/services/orders/" in listing.splitlines() and "/repo/README.md" in listing.splitlines()
    twice = tools.run(edit, {"command": "create", "path": "dup.txt", "file_text": "a\na\n"})
    assert not twice.is_error
    ambiguous = tools.run(edit, {"command": "str_replace", "path": "dup.txt", "old_str": "a", "new_str": "b"})
    assert ambiguous.is_error and "2 times" in ambiguous.content
    assert tools.run(edit, {"command": "view", "path": "missing.py"}).is_error
    assert tools.run("bash", {"restart": True}).is_error is False


def test_the_model_sees_secret_shaped_code_as_it_is_but_never_a_secret_value(
        worktree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORDERS_DB_PASSWORD", "correct-horse-battery")
    code = 'api_key = os.environ["ORDERS_KEY"]\npassword = "hardcoded-in-tests"\nDSN = "correct-horse-battery"\n'
    (worktree / "settings.py").write_text(code)
    tools = _toolbox(worktree)
    shown = tools.run("str_replace_based_edit_tool", {"command": "view", "path": "settings.py"}).content
    assert 'api_key = os.environ["ORDERS_KEY"]' in shown and 'password = "hardcoded-in-tests"' in shown
    assert "correct-horse-battery" not in shown and "[REDACTED]" in shown
    replaced = tools.run("str_replace_based_edit_tool", {"command": "str_replace", "path": "settings.py",
                                                         "old_str": 'password = "hardcoded-in-tests"',
                                                         "new_str": 'password = os.environ["PW"]'})
    assert not replaced.is_error
