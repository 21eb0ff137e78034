"""A fork is told which sandbox it is and its route key, under loop's names and Signadot's, so code
instrumented for Signadot runs unchanged; the baseline is told neither. Seen from inside a real service
(it answers with its environment) started by the local backend, reached through the router."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from agentloop.config import parse_config
from agentloop.sandbox.local import process
from agentloop.sandbox.local.backend import LocalSandboxBackend

APP = '''
import json, os, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SHOWN = ("LOOP_SANDBOX", "LOOP_ROUTE_KEY", "SIGNADOT_SANDBOX_NAME", "SIGNADOT_SANDBOX_ROUTING_KEY", "LOOP_SERVICE")


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({name: os.environ.get(name) for name in SHOWN}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt, *args):
        pass


ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
'''
SIGNADOT = ("LOOP_SANDBOX", "LOOP_ROUTE_KEY", "SIGNADOT_SANDBOX_NAME", "SIGNADOT_SANDBOX_ROUTING_KEY")


def _git(root: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=root, check=True,
                   capture_output=True)


@pytest.fixture(scope="module")
def echo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalSandboxBackend, Path]]:
    root = tmp_path_factory.mktemp("echo")
    (root / "echo").mkdir()
    (root / "echo" / "app.py").write_text(APP)
    config = {"base_branch": "main", "services": {"echo": {
        "path": "echo", "run": f"{sys.executable} echo/app.py {{port}}", "health": "/", "ready_timeout": 15}}}
    (root / "loop.yaml").write_text(yaml.safe_dump(config))
    _git(root, "init", "-q", "-b", "main")
    _git(root, "add", ".")
    _git(root, "commit", "-q", "-m", "echo")
    worktree = tmp_path_factory.mktemp("echo-fork") / "tree"
    _git(root, "worktree", "add", "-q", "-b", "fork", str(worktree))
    backend = LocalSandboxBackend(root, parse_config(config, root / "loop.yaml"),
                                  tmp_path_factory.mktemp("echo-state"))
    backend.baseline_up()
    try:
        yield backend, worktree
    finally:
        for info in backend.list():
            backend.remove(info.name)
        backend.baseline_down()
        assert process.tagged_processes(backend.registry.path) == []


def test_a_fork_sees_its_sandbox_and_route_key_and_the_baseline_does_not(
        echo: tuple[LocalSandboxBackend, Path]) -> None:
    backend, worktree = echo
    info = backend.create("fix-7", {"echo": worktree})
    url = info.service_urls["echo"]
    with httpx.Client(trust_env=False, timeout=30) as client:
        fork = client.get(url, headers={"baggage": f"sd-routing-key =\t{info.route_key};p=1"}).json()
        baseline = client.get(url).json()

    assert fork["SIGNADOT_SANDBOX_ROUTING_KEY"] == fork["LOOP_ROUTE_KEY"] == info.route_key
    assert fork["SIGNADOT_SANDBOX_NAME"] == fork["LOOP_SANDBOX"] == "fix-7"
    assert baseline["LOOP_SERVICE"] == "echo", "the baseline answered"
    assert {name: baseline[name] for name in SIGNADOT} == dict.fromkeys(SIGNADOT)
