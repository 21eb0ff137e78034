"""A tiny three-service shop in a temp git repo, run as real processes on loopback.

web -> orders -> inventory: each service calls the next through the router address it gets in
DOWNSTREAM_URL and passes on the routing headers (baggage, tracestate, x-loop-route, cookie), as an
instrumented service would. orders keeps items in SQLite (LOOP_DB_PATH).
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from agentloop import git
from agentloop.config import LoopConfig, parse_config
from agentloop.sandbox.local import process
from agentloop.sandbox.local.backend import LocalSandboxBackend

APP = '''
import json, os, sqlite3, sys, urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

NAME = os.environ["LOOP_SERVICE"]
VERSION = "base"
PROPAGATE = ("baggage", "tracestate", "x-loop-route", "cookie")


def db():
    conn = sqlite3.connect(os.environ["LOOP_DB_PATH"])
    conn.execute("create table if not exists items (name text)")
    return conn


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are separate writes

    def log_message(self, fmt, *args):
        print(NAME, self.command, self.path, flush=True)

    def reply(self, status, payload):
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path == "/healthz":
            return self.reply(200, {"ok": True})
        if self.path == "/items":
            with db() as conn:
                return self.reply(200, [row[0] for row in conn.execute("select name from items")])
        downstream = None
        if os.environ.get("DOWNSTREAM_URL"):
            headers = {h: self.headers[h] for h in PROPAGATE if self.headers.get(h)}
            request = urllib.request.Request(os.environ["DOWNSTREAM_URL"] + "/call", headers=headers)
            with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(request, timeout=5) as resp:
                downstream = json.loads(resp.read())
        self.reply(200, {"service": NAME, "version": VERSION, "downstream": downstream})

    def do_POST(self):
        name = self.rfile.read(int(self.headers["Content-Length"])).decode()
        with db() as conn:
            conn.execute("insert into items values (?)", (name,))
        self.reply(201, {"added": name})


print(NAME, "listening on", sys.argv[2], flush=True)
ThreadingHTTPServer(("127.0.0.1", int(sys.argv[2])), Handler).serve_forever()
'''


def _write_shop(root: Path) -> None:
    python = sys.executable
    services = {
        "web": {"env": {"DOWNSTREAM_URL": "{services.orders.url}"}},
        "orders": {"env": {"DOWNSTREAM_URL": "{services.inventory.url}"}, "database": {"path": "data/orders.db"}},
        "inventory": {},
    }
    config: dict[str, object] = {"base_branch": "main", "services": {}}
    for name, extra in services.items():
        (root / "services" / name).mkdir(parents=True)
        (root / "services" / name / "app.py").write_text(APP)
        config["services"][name] = {  # type: ignore[index]
            "path": f"services/{name}", "run": f"{python} services/{name}/app.py --port {{port}}",
            "health": "/healthz", "ready_timeout": 15, **extra,
        }
    (root / "data").mkdir()
    with sqlite3.connect(root / "data" / "orders.db") as conn:
        conn.execute("create table items (name text)")
        conn.execute("insert into items values ('seed')")
    conn.close()
    (root / "loop.yaml").write_text(yaml.safe_dump(config))


def _git(root: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=root, check=True, capture_output=True)


@pytest.fixture(scope="session")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("shop")
    _write_shop(root)
    _git(root, "init", "-q", "-b", "main")
    _git(root, "-c", "user.name=t", "-c", "user.email=t@t", "add", ".")
    _git(root, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "shop")
    return root


@pytest.fixture(scope="session")
def shop_config(shop: Path) -> LoopConfig:
    return parse_config(yaml.safe_load((shop / "loop.yaml").read_text()), shop / "loop.yaml")


@pytest.fixture(scope="session")
def state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("state")


@pytest.fixture(scope="session")
def backend(shop: Path, shop_config: LoopConfig, state: Path) -> Iterator[LocalSandboxBackend]:
    """One shared baseline for the session; torn down at the end, leaving no process of ours."""
    sandboxes = LocalSandboxBackend(shop, shop_config, state)
    sandboxes.baseline_up()
    yield sandboxes
    sandboxes.baseline_down()
    assert process.tagged_processes(sandboxes.registry.path) == []


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(trust_env=False, timeout=10) as http:
        yield http


@pytest.fixture
def fork_tree(shop: Path, tmp_path: Path) -> Callable[..., Path]:
    """A worktree of the shop on its own branch with `edits` ({relative file: (old, new)}) applied."""
    made: list[Path] = []

    def make(label: str, edits: dict[str, tuple[str, str]]) -> Path:
        path = git.add_worktree(git.open_repo(shop), tmp_path / label, branch=f"t/{tmp_path.name}/{label}", commit="main")
        for relative, (old, new) in edits.items():
            target = path / relative
            target.write_text(target.read_text().replace(old, new))
        made.append(path)
        return path

    yield make  # type: ignore[misc]
    for path in made:
        git.remove_worktree(git.open_repo(shop), path)
