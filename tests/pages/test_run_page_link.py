"""The pull request links the run's page: a published run's body carries a signed link that opens that run's
page on the server named by LOOP_PUBLIC_URL, and no other run's."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlparse

import httpx
import pytest
from forge.fake_github import start_asgi, stop_asgi
from looptest import MakeRepo, create, replace, write_cassette
from run_pages_helpers import CONFIG

from agentloop.app.queue import JobQueue
from agentloop.app.server import AppSettings, create_app
from agentloop.loop.runner import fix
from agentloop.pages.web import PagesSettings, create_pages_app

SECRET = "link-test-secret"
FILES = {"calc.py": "def add(a, b):\n    return a - b\n", "tests/test_calc.py": "def test_nothing():\n    assert True\n",
         ".loop/issues/1.md": "# add() subtracts\n\nadd(2, 3) returns -1 instead of 5.\n"}


def test_a_published_pull_request_links_its_run_page(make_repo: MakeRepo, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    repo = make_repo(FILES, CONFIG)
    cassette = write_cassette(tmp_path / "cassette.json", [[
        create("tests/test_add.py", "from calc import add\n\n\ndef test_add():\n    assert add(2, 3) == 5\n"),
        replace("calc.py", "return a - b", "return a + b")]])
    runs_root = repo / ".loop" / "runs"
    pages = create_pages_app(PagesSettings(roots=lambda: [runs_root], secret=SECRET.encode()))
    app = create_app(AppSettings(webhook_secret="hook"), JobQueue.open(tmp_path / "queue.sqlite3"), pages=pages)
    server, thread, url = start_asgi(app)  # `loop serve`: the pages at /ui, where the link points
    try:
        monkeypatch.setenv("LOOP_PUBLIC_URL", url)
        monkeypatch.setenv("LOOP_PAGES_SECRET", SECRET)
        outcome = fix(repo, "1", model=f"replay:{cassette}")
        assert outcome.status == "published" and outcome.pull_request is not None, outcome.message
        body = Path(urlparse(outcome.pull_request.url).path).read_text(encoding="utf-8")
        found = re.search(r"\*\*Run page:\*\* (\S+)", body)
        assert found is not None, body
        link = found.group(1)
        page = httpx.get(link, timeout=60)
        assert page.status_code == 200 and outcome.run_id in page.text
        other = httpx.get(link.replace(outcome.run_id, "r-20260101-000000"), timeout=60)
        assert other.status_code in (403, 404)  # the token opens this run's page only
    finally:
        stop_asgi(server, thread)


def test_without_a_public_url_the_body_has_no_run_page(make_repo: MakeRepo, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LOOP_PUBLIC_URL", raising=False)
    monkeypatch.setenv("LOOP_PAGES_SECRET", SECRET)
    repo = make_repo(FILES, CONFIG)
    cassette = write_cassette(tmp_path / "cassette.json", [[
        create("tests/test_add.py", "from calc import add\n\n\ndef test_add():\n    assert add(2, 3) == 5\n"),
        replace("calc.py", "return a - b", "return a + b")]])
    outcome = fix(repo, "1", model=f"replay:{cassette}")
    assert outcome.status == "published" and outcome.pull_request is not None, outcome.message
    assert "Run page:" not in Path(urlparse(outcome.pull_request.url).path).read_text(encoding="utf-8")
