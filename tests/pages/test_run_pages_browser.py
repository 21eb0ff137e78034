"""The run pages in a real browser: Debian's chromium, headless, driven over the DevTools protocol (the
`websockets` client already installed; nothing is downloaded at run time). Skipped where chromium is not
installed (`apt-get install chromium`)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from forge.fake_github import start_asgi, stop_asgi
from looptest import MakeRepo
from run_pages_helpers import loop_ui, review_run, wait_for

from agentloop.pages.web import PagesSettings, create_pages_app
from agentloop.run_links import make_token

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install "
                                "chromium); the browser tests use the system browser and download none")
websockets_sync = pytest.importorskip("websockets.sync.client", reason="the websockets client is not installed")


class Browser:
    """One headless chromium tab: navigate, evaluate, click."""

    def __init__(self, socket: Any):
        self.socket = socket
        self.counter = 0
        self.dialogs: list[str] = []  # an alert() would land here: it must never happen

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.counter += 1
        self.socket.send(json.dumps({"id": self.counter, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.recv(timeout=60))
            if message.get("method") == "Page.javascriptDialogOpening":
                self.dialogs.append(message["params"].get("message", ""))
                self.socket.send(json.dumps({"id": 0, "method": "Page.handleJavaScriptDialog",
                                             "params": {"accept": True}}))
            if message.get("id") == self.counter:
                assert "error" not in message, message
                return dict(message.get("result") or {})

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return result.get("result", {}).get("value")

    def open(self, url: str) -> None:
        self.call("Page.navigate", url=url)
        self.settle()

    def settle(self) -> None:
        time.sleep(0.3)  # let a navigation begin before asking whether it finished
        wait_for(lambda: self.evaluate("document.readyState") == "complete", "the page to load", 60)

    def text(self) -> str:
        return str(self.evaluate("document.body ? document.body.innerText : ''"))


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Browser]:
    assert CHROMIUM is not None
    process = subprocess.Popen(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--remote-debugging-port=0",
         f"--user-data-dir={tmp_path / 'chromium-profile'}", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        endpoint = _devtools_endpoint(process)
        targets = httpx.get(f"http://{endpoint}/json/list", timeout=30).json()
        page = next(t for t in targets if t.get("type") == "page")
        with websockets_sync.connect(page["webSocketDebuggerUrl"], max_size=None) as socket:
            tab = Browser(socket)
            tab.call("Page.enable")
            yield tab
    finally:
        process.terminate()
        process.wait(30)


def _devtools_endpoint(process: subprocess.Popen[str]) -> str:
    assert process.stderr is not None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        match = re.search(r"DevTools listening on ws://([^/]+)/", line)
        if match:
            return match.group(1)
        if not line and process.poll() is not None:
            break
    raise AssertionError("chromium did not start its DevTools endpoint")


@contextmanager
def _token_server(run_dir: Path) -> Iterator[str]:
    secret = b"browser-test-secret"
    app = create_pages_app(PagesSettings(roots=lambda: [run_dir.parent], secret=secret))
    server, thread, url = start_asgi(app)
    try:
        yield url + "|" + make_token(secret, run_dir.name)
    finally:
        stop_asgi(server, thread)


def test_a_person_opens_a_run_sees_its_timeline_and_diff_approves_it_and_sees_it_publish(
        browser: Browser, make_repo: MakeRepo, tmp_path: Path) -> None:
    repo, outcome = review_run(make_repo, tmp_path)
    with loop_ui(repo) as base:
        browser.open(f"{base}/ui/")
        assert outcome.run_id in browser.text()
        assert "<script>alert('title')</script>" in browser.text()  # shown as text
        browser.evaluate(f"document.querySelector('a[href$=\"/runs/{outcome.run_id}\"]').click()")
        browser.settle()
        assert browser.evaluate("location.pathname") == f"/ui/runs/{outcome.run_id}"
        assert browser.evaluate("document.querySelectorAll('svg.timeline rect.segment').length") >= 6
        text = browser.text()
        assert "+    return a + b" in text and "Where the time went" in text
        assert browser.evaluate("document.querySelectorAll('script').length") == 0

        browser.evaluate("document.querySelector('button[value=approve]').click()")
        browser.settle()
        assert "Approved by the local user" in browser.text()
        wait_for(lambda: json.loads((outcome.run_dir / "run.json").read_text())["status"] != "interrupted"
                 and json.loads((outcome.run_dir / "run.json").read_text())["status"] != "running", "the publish")
        browser.open(f"{base}/ui/runs/{outcome.run_id}")
        assert "Approved by the local user: published" in browser.text()
    assert browser.dialogs == []  # no hostile script ran


def test_a_page_without_its_token_is_refused_in_the_browser(
        browser: Browser, make_repo: MakeRepo, tmp_path: Path) -> None:
    _, outcome = review_run(make_repo, tmp_path)
    with _token_server(outcome.run_dir) as served:
        url, token = served.split("|")
        browser.open(f"{url}/runs/{outcome.run_id}")
        assert "Not allowed" in browser.text() and "+    return a + b" not in browser.text()
        browser.open(f"{url}/runs/{outcome.run_id}?token={token}")
        assert "+    return a + b" in browser.text()
