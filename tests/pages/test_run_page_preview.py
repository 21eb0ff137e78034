"""A published run whose sandbox is kept for its review (the real graph, the local backend, a real web
service; only the model is scripted): its page says the sandbox is up until when, and the preview proxies the
fork -- not the baseline -- through the pages, safely; once the pull request is closed the page says gone."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
from forge.fake_github import start_asgi, stop_asgi
from looptest import MakeRepo, create, replace, write_cassette
from test_graph import WEB_APP, WEB_TEST

from agentloop.config import load_config
from agentloop.loop.review_sandbox import remove_review_sandbox
from agentloop.loop.runner import fix
from agentloop.pages.preview import sandbox_state
from agentloop.pages.web import PagesSettings, create_pages_app
from agentloop.paths import runs_dir
from agentloop.run_links import make_token
from agentloop.sandbox.factory import open_backend

SECRET = b"preview-test-secret"


def _published_web_run(make_repo: MakeRepo, tmp_path: Path) -> tuple[Path, str]:
    repo = make_repo(
        {"web/app.py": WEB_APP, "tests/__init__.py": "", ".loop/issues/2.md": "# /hello should say hello\n"},
        {"services": {"web": {"path": "web", "run": "python3 web/app.py --port {port}", "health": "/healthz",
                              "ready_timeout": 10}},
         "validate": [{"suite": "integration", "run": "python3 -m pytest -q tests", "sandbox": True}],
         "agent": {"max_iterations": 2}, "sandbox": {"review_ttl_hours": 1}},
    )
    cassette = write_cassette(tmp_path / "c.json", [
        [create("tests/test_web.py", WEB_TEST), replace("web/app.py", 'b"hi"', 'b"hello"')],
    ])
    outcome = fix(repo, "2", model=f"replay:{cassette}")
    assert outcome.status == "published", outcome.message
    return repo, outcome.run_id


def test_a_kept_sandbox_is_shown_up_previewed_through_its_fork_and_then_gone(
        make_repo: MakeRepo, tmp_path: Path) -> None:
    repo, run_id = _published_web_run(make_repo, tmp_path)
    backend = open_backend(repo, load_config(repo))
    kept = backend.get(run_id)
    assert kept is not None and time.time() + 3000 < kept.expires_at < time.time() + 3700
    token = make_token(SECRET, run_id)
    other = make_token(SECRET, "some-other-run")
    app = create_pages_app(PagesSettings(roots=lambda: [runs_dir(repo)], secret=SECRET))
    local_app = create_pages_app(PagesSettings(roots=lambda: [runs_dir(repo)], secret=SECRET, local=True))
    server, thread, url = start_asgi(app)
    local_server, local_thread, local_url = start_asgi(local_app)
    try:
        page_url = f"{url}/runs/{run_id}"
        page = httpx.get(page_url, params={"token": token}, timeout=30)
        assert page.status_code == 200
        expiry = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(kept.expires_at))
        assert "sandbox: <b>up</b>" in page.text and f"until {expiry} UTC" in page.text
        assert kept.route_key in page.text and "forks web" in page.text
        assert f'href="/runs/{run_id}/preview/web/?token={token}"' in page.text

        # the baseline still says "hi"; through the preview, the run's fork says "hello"
        assert httpx.get(kept.service_urls["web"] + "/hello", timeout=30).content == b"hi"
        preview = f"{url}/runs/{run_id}/preview/web"
        answer = httpx.get(f"{preview}/hello", params={"token": token}, timeout=30)
        assert answer.status_code == 200 and answer.content == b"hello"
        # a previewed page runs in an opaque origin, with the pages' strict headers
        assert "sandbox" in answer.headers["content-security-policy"]
        assert "default-src 'none'" in answer.headers["content-security-policy"]
        assert answer.headers["x-content-type-options"] == "nosniff" and answer.headers["cache-control"] == "no-store"
        head = httpx.head(f"{preview}/hello", params={"token": token}, timeout=30)
        # HEAD goes through as HEAD (this service's handler has none: its own 501 comes back, bodiless)
        assert head.status_code == 501 and head.content == b""
        assert httpx.post(f"{preview}/hello", params={"token": token}, timeout=30).status_code == 405
        # `loop ui` on loopback: the person at the machine needs no token
        assert httpx.get(f"{local_url}/runs/{run_id}/preview/web/hello", timeout=30).content == b"hello"

        # no token, another run's token, a service the sandbox does not have, a path leaving the service
        assert httpx.get(f"{preview}/hello", timeout=30).status_code == 403
        assert httpx.get(f"{preview}/hello", params={"token": other}, timeout=30).status_code == 403
        assert httpx.get(f"{url}/runs/{run_id}/preview/db/hello", params={"token": token},
                         timeout=30).status_code == 404
        escaped = httpx.get(f"{preview}/%2e%2e/%2e%2e/hello", params={"token": token}, timeout=30)
        assert escaped.status_code == 404 and "the path leaves it" in escaped.text
        # an absolute URL in the path is a path on the service (which has no such page), never another host
        absolute = httpx.get(f"{preview}/http://127.0.0.1:1/hello", params={"token": token}, timeout=30)
        assert absolute.status_code == 404 and absolute.content == b""

        # a preview is a use: a review sandbox close to its end lives another review period (1 h here)
        backend.extend(run_id, time.time() + 600)
        httpx.get(f"{preview}/hello", params={"token": token}, timeout=30)
        refreshed = backend.get(run_id)
        assert refreshed is not None and refreshed.expires_at > time.time() + 3000

        # the pull request is closed: the sandbox goes, and the page and the preview say so
        assert remove_review_sandbox(repo, run_id) is True
        gone = httpx.get(page_url, params={"token": token}, timeout=30)
        assert gone.status_code == 200 and "sandbox: <b>gone</b>" in gone.text and "/preview/" not in gone.text
        assert httpx.get(f"{preview}/hello", params={"token": token}, timeout=30).status_code == 410

        # a backend that cannot be read is "unknown", with the reason, not an error page
        (repo / "loop.yaml").write_text("services: [not, a, mapping\n")
        unknown = httpx.get(page_url, params={"token": token}, timeout=30)
        assert unknown.status_code == 200 and "sandbox: <b>unknown</b>" in unknown.text
    finally:
        stop_asgi(server, thread)
        stop_asgi(local_server, local_thread)


def test_a_repository_without_services_has_no_sandbox(make_repo: MakeRepo) -> None:
    repo = make_repo({"calc.py": "x = 1\n"}, {"services": {}, "validate": [{"suite": "unit", "run": "true"}]})
    state = sandbox_state(repo, "any-run")
    assert state.state == "none" and state.reason == "no sandbox (no services)"
