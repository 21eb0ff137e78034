"""Run pages over real HTTP on loopback: `loop ui` as a real process (local, no token) and the App's server
with the pages mounted at /ui (tokens), against a real run paused by `--review`."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from forge.fake_github import start_asgi, stop_asgi
from looptest import MakeRepo
from run_pages_helpers import HOSTILE_LOG, HOSTILE_TEST, HOSTILE_TITLE, loop_ui, review_run, wait_for

from agentloop.app.queue import JobQueue
from agentloop.app.server import AppSettings, create_app
from agentloop.pages.web import PagesSettings, create_pages_app
from agentloop.run_links import ALL_RUNS, make_token, run_page_url

SECRET = b"pages-test-secret"


def _form_token(html: str) -> str:
    match = re.search(r'name="token" value="([^"]+)"', html)
    assert match, "the page has no approve form"
    return match.group(1)


def _status(run_dir: Path) -> str:
    return str(json.loads((run_dir / "run.json").read_text())["status"])


def _assert_no_markup_from_the_run(html: str) -> None:
    """The hostile texts are shown, as text: escaped, never as a tag."""
    assert "<script" not in html.lower()
    assert "&lt;script&gt;" in html


def test_loop_ui_lists_the_run_and_shows_its_timeline_diff_tests_and_logs_escaped(
        make_repo: MakeRepo, tmp_path: Path) -> None:
    repo, outcome = review_run(make_repo, tmp_path)
    with loop_ui(repo) as base:
        listing = httpx.get(f"{base}/ui/", timeout=30)
        assert listing.status_code == 200
        assert outcome.run_id in listing.text and "interrupted" in listing.text
        assert "add() subtracts &lt;script&gt;alert(&#x27;title&#x27;)&lt;/script&gt;" in listing.text
        _assert_no_markup_from_the_run(listing.text)

        page = httpx.get(f"{base}/ui/runs/{outcome.run_id}", timeout=30)
    assert page.status_code == 200
    html = page.text
    _assert_no_markup_from_the_run(html)
    assert "script-src" not in page.headers["content-security-policy"]  # default-src 'none': no script runs
    # the timeline: an SVG with a bar per step, rows for the model, the tests and the base run
    svg = re.search(r"<svg[^>]*class=\"timeline\".*?</svg>", html, re.DOTALL)
    assert svg, "no timeline chart"
    for row in ("model (", "agent tools (", "tests (", "base run &amp; comparison ("):
        assert row in svg.group(0), row
    assert svg.group(0).count('class="segment"') >= 6
    # both iterations, each with its diff, its test results (the hostile name escaped) and its log
    assert 'id="iteration-1"' in html and 'id="iteration-2"' in html
    assert '<span class="add">+    return a * b</span>' in html and '<span class="add">+    return a + b</span>' in html
    assert html.count("test_add[&lt;script&gt;alert(&#x27;test&#x27;)&lt;/script&gt;]") >= 2
    assert "AssertionError: &lt;script&gt;alert(&#x27;log&#x27;)&lt;/script&gt;" in html
    assert HOSTILE_TEST not in html and HOSTILE_LOG not in html and HOSTILE_TITLE not in html
    assert "Approve and publish" in html and "no evidence yet" in html


def test_approving_a_review_run_from_loop_ui_publishes_it(make_repo: MakeRepo, tmp_path: Path) -> None:
    repo, outcome = review_run(make_repo, tmp_path)
    with loop_ui(repo) as base:
        page = httpx.get(f"{base}/ui/runs/{outcome.run_id}", timeout=30).text
        answer = httpx.post(f"{base}/ui/runs/{outcome.run_id}/approve", data={"token": _form_token(page)},
                            timeout=30)
        assert answer.status_code == 303 and answer.headers["location"] == f"/ui/runs/{outcome.run_id}"
        after = httpx.get(f"{base}/ui/runs/{outcome.run_id}", timeout=30).text
        assert "Approved by the local user" in after and "Approve and publish" not in after

        wait_for(lambda: _status(outcome.run_dir) in ("published", "failed", "error"), "the approved run to end")
        assert _status(outcome.run_dir) == "published", (outcome.run_dir / "logs" / "approval.log").read_text()
        published = httpx.get(f"{base}/ui/runs/{outcome.run_id}", timeout=60).text
        again = httpx.post(f"{base}/ui/runs/{outcome.run_id}/approve", data={"token": _form_token(page)}, timeout=30)
    assert "Approved by the local user: published" in published
    assert "pulls/1.md" in published  # the local forge's pull request
    assert "✓ verified" in published  # `loop verify` of the published record, on the page
    assert again.status_code == 409  # answered once
    assert (repo / ".git" / "loop" / "pulls" / "1.md").is_file()


def test_loop_ui_refuses_a_post_without_its_form_and_a_foreign_host(make_repo: MakeRepo, tmp_path: Path) -> None:
    repo, outcome = review_run(make_repo, tmp_path)
    approve = f"/ui/runs/{outcome.run_id}/approve"
    with loop_ui(repo) as base:
        page = httpx.get(f"{base}/ui/runs/{outcome.run_id}", timeout=30).text
        other_run = make_token(b"not this server's key", outcome.run_id)
        refused = [
            httpx.post(base + approve, timeout=30),  # no token: a form posted from anywhere
            httpx.post(base + approve, data={"token": other_run}, timeout=30),  # signed with another key
            httpx.post(base + approve, data={"token": _form_token(page)}, headers={"origin": "https://evil.example"},
                       timeout=30),
        ]
        rebound = httpx.get(f"{base}/ui/runs/{outcome.run_id}", headers={"host": "evil.example"}, timeout=30)
    assert [r.status_code for r in refused] == [403, 403, 403]
    assert rebound.status_code == 403  # a name rebound to 127.0.0.1 is not "local"
    assert _status(outcome.run_dir) == "interrupted"
    assert not (outcome.run_dir / "logs" / "approval.json").exists()


@pytest.fixture
def app_url(tmp_path: Path, make_repo: MakeRepo) -> Iterator[tuple[str, Path, str]]:
    """The App's server (webhooks and all) with the pages at /ui over the run; (base URL, run dir, run id)."""
    _, outcome = review_run(make_repo, tmp_path)
    pages = create_pages_app(PagesSettings(roots=lambda: [outcome.run_dir.parent], secret=SECRET))
    app = create_app(AppSettings(webhook_secret="hook"), JobQueue.open(tmp_path / "queue.sqlite3"), pages=pages)
    server, thread, url = start_asgi(app)
    try:
        yield url, outcome.run_dir, outcome.run_id
    finally:
        stop_asgi(server, thread)


def test_the_app_serves_a_run_page_only_with_a_valid_unexpired_token_for_that_run(
        app_url: tuple[str, Path, str]) -> None:
    url, run_dir, run_id = app_url
    page = f"{url}/ui/runs/{run_id}"
    expired = make_token(SECRET, run_id, ttl=60, now=1_000_000)
    answers = {
        "none": httpx.get(page, timeout=30),
        "expired": httpx.get(page, params={"token": expired}, timeout=30),
        "another run": httpx.get(page, params={"token": make_token(SECRET, "r-someone-else")}, timeout=30),
        "another key": httpx.get(page, params={"token": make_token(b"other", run_id)}, timeout=30),
        "garbage": httpx.get(page, params={"token": "<script>"}, timeout=30),
        "list with a run's token": httpx.get(f"{url}/ui/", params={"token": make_token(SECRET, run_id)}, timeout=30),
    }
    assert {name: r.status_code for name, r in answers.items()} == dict.fromkeys(answers, 403)
    assert all("&lt;script&gt;" not in r.text or "Not allowed" in r.text for r in answers.values())
    good = httpx.get(page, params={"token": make_token(SECRET, run_id)}, timeout=30)
    assert good.status_code == 200 and run_id in good.text and "timeline" in good.text
    assert good.headers["referrer-policy"] == "same-origin" and good.headers["cache-control"] == "no-store"
    listing = httpx.get(f"{url}/ui/", params={"token": make_token(SECRET, ALL_RUNS)}, timeout=30)
    assert listing.status_code == 200 and run_id in listing.text
    assert httpx.get(f"{url}/healthz", timeout=30).status_code == 200  # the App's own routes are still there
    # a POST needs the token in its form, for this run
    assert httpx.post(f"{page}/approve", params={"token": make_token(SECRET, run_id)}, timeout=30).status_code == 403
    assert httpx.post(f"{page}/reject", data={"token": expired}, timeout=30).status_code == 403
    assert _status(run_dir) == "interrupted"


def test_run_page_url_opens_the_page_and_its_approve_button_publishes(
        app_url: tuple[str, Path, str]) -> None:
    url, run_dir, run_id = app_url
    env = {"LOOP_PUBLIC_URL": url + "/", "LOOP_PAGES_SECRET": SECRET.decode()}
    link = run_page_url(run_id, env=env)
    assert link is not None and link.startswith(f"{url}/ui/runs/{run_id}?token=")
    assert run_page_url(run_id, env={"LOOP_PAGES_SECRET": "x"}) is None  # nowhere to point
    page = httpx.get(link, timeout=30)
    assert page.status_code == 200 and "Approve and publish" in page.text
    token = _form_token(page.text)
    answer = httpx.post(f"{url}/ui/runs/{run_id}/approve", data={"token": token}, timeout=30)
    assert answer.status_code == 303 and answer.headers["location"].endswith(f"/ui/runs/{run_id}?token={token}")
    wait_for(lambda: _status(run_dir) in ("published", "failed", "error"), "the approved run to end")
    assert _status(run_dir) == "published", (run_dir / "logs" / "approval.log").read_text()
    shown = httpx.get(link, timeout=60).text
    assert "Approved by a holder of the run&#x27;s link: published" in shown


def test_rejecting_a_review_run_ends_it_unpublished(app_url: tuple[str, Path, str]) -> None:
    url, run_dir, run_id = app_url
    token = make_token(SECRET, run_id)
    answer = httpx.post(f"{url}/ui/runs/{run_id}/reject", data={"token": token}, timeout=30)
    assert answer.status_code == 303
    assert _status(run_dir) == "failed"
    shown = httpx.get(f"{url}/ui/runs/{run_id}", params={"token": token}, timeout=30).text
    assert "Rejected by" in shown and "Approve and publish" not in shown
    assert httpx.post(f"{url}/ui/runs/{run_id}/approve", data={"token": token}, timeout=30).status_code == 409
