"""Helpers for the batch tests: a small real system (a web service on loopback) and `loop batch` as a
real subprocess."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
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


class Barrier:
    """A meeting point on loopback for the suites of several runs: each sandbox's test arrives with its
    route key and waits (bounded) until `runs` have arrived. Over HTTP, since confined suites share no
    writable directory but do share the machine's loopback."""

    def __init__(self) -> None:
        self.arrived: set[str] = set()
        barrier = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                barrier.arrived.add(self.path.rsplit("/", 1)[-1])
                self._answer()

            def do_GET(self) -> None:
                self._answer()

            def _answer(self) -> None:
                body = str(len(barrier.arrived)).encode()
                self.send_response(200)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def web_test(path: str, expected: dict[str, str], barrier: Barrier | None = None, runs: int = 0) -> str:
    """A test the agent writes: wait (bounded) until `runs` sandboxes reached validate, so their forks are
    up at the same time, then check what this run's route key is served."""
    return f'''import json, os, time, urllib.request

import pytest


@pytest.fixture(autouse=True)
def _together():
    key = os.environ.get("LOOP_ROUTE_KEY")
    if key and {runs}:  # the base run arrives with a key of its own and does not wait long
        barrier = {barrier.url if barrier else ""!r}
        urllib.request.urlopen(urllib.request.Request(barrier + "/arrive/" + key, method="POST")).read()
        deadline = time.monotonic() + 30
        while int(urllib.request.urlopen(barrier + "/count").read()) < {runs} and time.monotonic() < deadline:
            time.sleep(0.05)


def _get(path):
    request = urllib.request.Request(os.environ["LOOP_URL_WEB"] + path, headers=json.loads(os.environ["LOOP_ROUTING_HEADERS"]))
    return urllib.request.urlopen(request).read().decode()


def {path}():
    assert {{p: _get(p) for p in {sorted(expected)!r}}} == {expected!r}
'''


def hold_conftest(hold: Path) -> str:
    """A conftest that waits while `hold` exists; its directory must be in `policy.readable`."""
    return f"import os, time\nwhile os.path.exists({str(hold)!r}):\n    time.sleep(0.05)\n"


def make_system(make_repo: MakeRepo, issues: dict[int, str], suite: str = "python3 -m pytest -q tests",
                readable: Path | None = None) -> Path:
    files = {"web/app.py": WEB_APP, "tests/__init__.py": ""}
    files |= {f".loop/issues/{n}.md": f"# {title}\n" for n, title in issues.items()}
    return make_repo(files, {
        "services": {"web": {"path": "web", "run": "python3 web/app.py --port {port}", "health": "/healthz"}},
        "validate": [{"suite": "all", "run": suite, "sandbox": True}],
        "agent": {"max_iterations": 2},
        "policy": {"readable": [str(readable)] if readable else []},
    })


def loop(repo: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agentloop.cli.main", *args, "--repo", str(repo)], cwd=repo,
                          capture_output=True, text=True, timeout=timeout, check=False)


def start_loop(repo: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "agentloop.cli.main", *args, "--repo", str(repo)], cwd=repo,
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
        output, _ = proc.communicate(timeout=180)  # a clean stop under a loaded machine, not a speed measure
        return output
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def wait_until(check: Any, proc: subprocess.Popen[str], timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert proc.poll() is None, proc.communicate()[0]
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.1)
