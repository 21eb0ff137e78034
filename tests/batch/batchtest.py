"""Helpers for the batch tests: a small real system (a web service on loopback) and `loop batch` as a
real subprocess."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from looptest import MakeRepo

WEB_APP = '''import argparse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ANSWERS = {"/healthz": b"ok", "/hello": b"hi", "/bye": b"bye?", "/ping": b"ping?"}


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        body = ANSWERS.get(self.path)
        self.send_response(200 if body else 404)
        self.end_headers()
        self.wfile.write(body or b"")

    def log_message(self, *args):
        pass


parser = argparse.ArgumentParser()
parser.add_argument("--port", type=int)
ThreadingHTTPServer(("127.0.0.1", parser.parse_args().port), Handler).serve_forever()
'''


def web_test(path: str, expected: dict[str, str], barrier: Path | None = None, runs: int = 0) -> str:
    """A test the agent writes: wait (bounded) until `runs` sandboxes reached validate, so their forks are
    up at the same time, then check what this run's route key is served."""
    return f'''import json, os, time, urllib.request

import pytest


@pytest.fixture(autouse=True)
def _together():
    key = os.environ.get("LOOP_ROUTE_KEY")
    if key and {runs}:  # in a sandbox, not on the baseline
        barrier = {str(barrier)!r}
        os.makedirs(barrier, exist_ok=True)
        open(os.path.join(barrier, key), "w").close()
        deadline = time.monotonic() + 30
        while len(os.listdir(barrier)) < {runs} and time.monotonic() < deadline:
            time.sleep(0.05)


def _get(path):
    request = urllib.request.Request(os.environ["LOOP_URL_WEB"] + path, headers=json.loads(os.environ["LOOP_ROUTING_HEADERS"]))
    return urllib.request.urlopen(request).read().decode()


def {path}():
    assert {{p: _get(p) for p in {sorted(expected)!r}}} == {expected!r}
'''


def make_system(make_repo: MakeRepo, issues: dict[int, str], suite: str = "python3 -m pytest -q tests") -> Path:
    files = {"web/app.py": WEB_APP, "tests/__init__.py": ""}
    files |= {f".loop/issues/{n}.md": f"# {title}\n" for n, title in issues.items()}
    return make_repo(files, {
        "services": {"web": {"path": "web", "run": "python3 web/app.py --port {port}", "health": "/healthz"}},
        "validate": [{"suite": "all", "run": suite, "sandbox": True}],
        "agent": {"max_iterations": 2},
    })


def loop(repo: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agentloop.cli", *args, "--repo", str(repo)], cwd=repo,
                          capture_output=True, text=True, timeout=timeout, check=False)


def start_loop(repo: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "agentloop.cli", *args, "--repo", str(repo)], cwd=repo,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def batch_record(repo: Path) -> dict[str, Any]:
    records = list((repo / ".loop" / "runs").glob("batch-*.json"))
    assert len(records) == 1, records
    data: dict[str, Any] = json.loads(records[0].read_text())
    return data


def ctrl_c_when(check: Any, proc: subprocess.Popen[str]) -> str:
    """Once `check()` holds, SIGINT the `loop` process (a terminal's Ctrl-C) and return its output; a
    process that outlives the test is killed."""
    try:
        wait_until(check, proc)
        os.kill(proc.pid, signal.SIGINT)
        output, _ = proc.communicate(timeout=60)
        return output
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def wait_until(check: Any, proc: subprocess.Popen[str], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert proc.poll() is None, proc.communicate()[0]
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.1)
