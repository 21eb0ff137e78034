"""Repositories for tests/test_doctor.py: one real HTTP service on {port}, a pytest suite, a
live suite through the router, and a hostile suite that looks for the API key and writes outside its tree."""

from __future__ import annotations

from typing import Any

SERVICE = '''import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"ok" if self.path == "/healthz" else b"hello"
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
'''
UNIT = '''import pytest


def test_adds():
    assert 1 + 1 == 2


def test_upper():
    assert "a".upper() == "A"


def test_joins():
    assert "-".join("ab") == "a-b"


@pytest.mark.skip(reason="not yet")
def test_later():
    pass
'''
LIVE = '''import json, os, urllib.request


def test_the_running_service_answers_through_the_router():
    request = urllib.request.Request(os.environ["LOOP_URL_WEB"] + "/",
                                     headers=json.loads(os.environ["LOOP_ROUTING_HEADERS"]))
    assert urllib.request.urlopen(request, timeout=10).read() == b"hello"
'''
FILES = {"web/app.py": SERVICE, "tests/unit/test_app.py": UNIT, "tests/live/test_live.py": LIVE}
WEB: dict[str, Any] = {"path": "web", "run": "python3 web/app.py {port}", "health": "/healthz", "ready_timeout": 60}
UNIT_SUITE = {"suite": "unit", "run": "python3 -m pytest -q tests/unit"}
LIVE_SUITE = {"suite": "live", "run": "python3 -m pytest -q tests/live", "sandbox": True}
# the suites are small pytest runs: loading every plugin of the venv would take most of their time
LEAN = {"env": {"PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}}
HEALTHY: dict[str, Any] = {**LEAN, "services": {"web": WEB}, "validate": [UNIT_SUITE, LIVE_SUITE]}


HOSTILE = '''import os, pathlib, pytest

TARGETS = {targets!r}


@pytest.mark.parametrize("seen", [os.environ.get("ANTHROPIC_API_KEY", "none")])
def test_the_key_is_not_in_the_environment(seen):
    print("tried ANTHROPIC_API_KEY")
    assert seen == "none"


def test_no_process_environment_holds_the_key():
    readable = []
    for path in pathlib.Path("/proc").glob("[0-9]*/environ"):
        try:
            readable.append(path.read_bytes())
        except OSError:
            pass
    print(f"tried {{len(readable)}} process environments")
    assert not [env for env in readable if b"sk-ant-" in env]


def test_nothing_outside_the_worktree_can_be_written():
    written = []
    for target in TARGETS:
        try:
            pathlib.Path(target).write_text("pwned")
            written.append(target)
        except OSError:
            pass
    print(f"tried writing {{TARGETS}}")
    assert written == []
'''
