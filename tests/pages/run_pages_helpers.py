"""A real run paused by `--review` (the replayed model, real git, a real pytest suite) whose issue title,
test name and log carry hostile HTML, and `loop ui` started as a real process on a loopback port."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
from looptest import MakeRepo, create, replace, write_cassette

from agentloop.loop.runner import RunOutcome, fix

HOSTILE_TITLE = "add() subtracts <script>alert('title')</script>"
HOSTILE_TEST = "<script>alert('test')</script>"
HOSTILE_LOG = "<script>alert('log')</script>"
FILES = {
    "calc.py": "def add(a, b):\n    return a - b\n",
    "tests/test_calc.py": "def test_nothing():\n    assert True\n",
    ".loop/issues/1.md": f"# {HOSTILE_TITLE}\n\nadd(2, 3) returns -1 instead of 5.\n",
}
CONFIG = {"services": {}, "validate": [{"suite": "unit", "run": "python3 -m pytest -q tests"}],
          "agent": {"max_iterations": 3}}
# a parametrized id puts the hostile text in the test's name; the assertion message in its log
TEST_ADD = create("tests/test_add.py", (
    "import pytest\nfrom calc import add\n\n\n"
    f"@pytest.mark.parametrize('label', [{HOSTILE_TEST!r}])\n"
    f"def test_add(label):\n    assert add(2, 3) == 5, {HOSTILE_LOG!r}\n"))


def review_run(make_repo: MakeRepo, tmp_path: Path) -> tuple[Path, RunOutcome]:
    """(repo, outcome): iteration 1 fails (multiplies), iteration 2 passes, then the run waits for review."""
    repo = make_repo(FILES, CONFIG)
    cassette = write_cassette(tmp_path / "cassette.json", [
        [TEST_ADD, replace("calc.py", "return a - b", "return a * b")],
        [replace("calc.py", "return a * b", "return a + b")],
    ])
    outcome = fix(repo, "1", model=f"replay:{cassette}", review=True)
    assert outcome.status == "interrupted", outcome.message
    return repo, outcome


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def loop_ui(repo: Path) -> Iterator[str]:
    """`loop ui --repo REPO` as a real process; yields its base URL once it answers."""
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "agentloop.cli", "ui", "--repo", str(repo), "--port", str(port)],
                               env=dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _answers(base) or process.poll() is not None, "loop ui to start")
        assert process.poll() is None, process.stdout.read().decode() if process.stdout else ""
        yield base
    finally:
        process.terminate()
        process.wait(30)


def _answers(base: str) -> bool:
    try:
        httpx.get(f"{base}/ui/", timeout=5)
    except httpx.TransportError:
        return False
    return True


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what} after {timeout} s")
        time.sleep(0.2)
