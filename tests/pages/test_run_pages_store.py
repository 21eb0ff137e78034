"""Runs known only from the shared store (LOOP_DATABASE_URL, the real PostgreSQL on 127.0.0.1:5432): a run
that ran on another machine is listed and has a page, from its summary and events."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from forge.fake_github import start_asgi, stop_asgi

from agentloop.pages.web import PagesSettings, create_pages_app
from agentloop.run_links import ALL_RUNS, make_token
from agentloop.runs.folder import RunSummary
from agentloop.runs.store import RunStore

PG_SERVER = "postgresql://postgres@127.0.0.1:5432/test"
SECRET = b"store-pages-secret"


@pytest.fixture
def database_url(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    psycopg = pytest.importorskip("psycopg")
    try:
        admin = psycopg.connect(PG_SERVER, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        pytest.skip(f"PostgreSQL at {PG_SERVER} unreachable: {exc}")
    schema = f"loop_pages_{secrets.token_hex(4)}"
    admin.execute(f"CREATE SCHEMA {schema}")
    url = f"{PG_SERVER}?options=-csearch_path%3D{schema}"
    monkeypatch.setenv("LOOP_DATABASE_URL", url)
    try:
        yield url
    finally:
        admin.execute(f"DROP SCHEMA {schema} CASCADE")
        admin.close()


def test_a_run_from_another_machine_is_listed_and_shown_from_the_store(database_url: str, tmp_path: Path) -> None:
    store = RunStore(database_url)
    summary = RunSummary(id="r-elsewhere-1", issue=7, issue_title="<script>alert('store')</script>", repo="/elsewhere",
                         status="failed", iterations=1, started_at=1000.0, ended_at=1030.0)
    store.save_summary(summary.model_dump(mode="json"))
    for node, start, duration in (("intake", 1000.0, 1.0), ("edit", 1001.0, 12.0), ("validate", 1013.0, 9.0)):
        store.add_event(summary.id, {"time": start, "node": node, "event": "start", "iteration": 1})
        store.add_event(summary.id, {"time": start + duration, "node": node, "event": "end", "iteration": 1,
                                     "duration": duration, "outcome": "ok"})
    empty = tmp_path / "runs-here"
    empty.mkdir()
    server, thread, url = start_asgi(create_pages_app(PagesSettings(roots=lambda: [empty], secret=SECRET)))
    try:
        listing = httpx.get(f"{url}/", params={"token": make_token(SECRET, ALL_RUNS)}, timeout=30)
        page = httpx.get(f"{url}/runs/{summary.id}", params={"token": make_token(SECRET, summary.id)}, timeout=30)
        unknown = httpx.get(f"{url}/runs/r-nowhere", params={"token": make_token(SECRET, "r-nowhere")}, timeout=30)
    finally:
        stop_asgi(server, thread)
    assert listing.status_code == 200 and summary.id in listing.text
    assert "&lt;script&gt;alert(&#x27;store&#x27;)&lt;/script&gt;" in listing.text and "<script" not in listing.text
    assert page.status_code == 200 and "<script" not in page.text
    assert "edit #1 (model and tools, not split): 12.00s" in page.text  # the timeline, from the store's events
    assert "on the machine that ran it" in page.text
    assert unknown.status_code == 404
    assert not (empty / summary.id).exists()  # showing a run makes no folder for it
