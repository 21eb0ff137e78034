"""`loop app manifest`: the GitHub App manifest (what the App asks GitHub for) and the manifest code exchange.

Run through the real command line; the exchange talks to the loopback GitHub, extended here with
`POST /app-manifests/{code}/conversions`, and what it writes is fed to `loop serve`'s own configuration."""

from __future__ import annotations

import json
import signal
import stat
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import httpx
import pytest
from forge.fake_github import FakeGitHub, start_asgi, stop_asgi
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from agentloop.app.queue import JobQueue
from agentloop.app.server import AppSettings, create_app, signature_for
from agentloop.cli.main import main
from agentloop.cli.serve import build_app

SECRET = "0123456789abcdef0123456789abcdef01234567"
PUBLIC = "https://loop.example.com"


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str


Cli = Callable[..., Result]


@pytest.fixture
def cli(capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Cli:
    """`loop app manifest ARGS` through the entry point, with `env` added; exit code and output."""
    monkeypatch.delenv("LOOP_PUBLIC_URL", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.chdir(tmp_path)

    def run(*args: str, env: dict[str, str] | None = None) -> Result:
        for name, value in (env or {}).items():
            monkeypatch.setenv(name, value)
        sigterm = signal.getsignal(signal.SIGTERM)  # main() installs its own
        capfd.readouterr()
        try:
            with pytest.raises(SystemExit) as exited:
                main(["app", "manifest", *args])
        finally:
            signal.signal(signal.SIGTERM, sigterm)
        out, err = capfd.readouterr()
        code = exited.value.code
        return Result(code if isinstance(code, int) else int(code is not None), out, err)

    return run


def manifest_of(result: Result) -> dict[str, Any]:
    assert result.code == 0, result.stderr
    document = json.loads(result.stdout)
    assert isinstance(document, dict)
    return document


def one_line_error(result: Result, *needles: str) -> str:
    assert result.code == 2, result
    assert "Traceback" not in result.stdout + result.stderr
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


# -- the manifest ---------------------------------------------------------------------------------------


def test_manifest_asks_for_the_permissions_and_events_the_app_uses(cli: Cli) -> None:
    manifest = manifest_of(cli("--url", PUBLIC + "/"))
    assert manifest["hook_attributes"]["url"] == f"{PUBLIC}/webhook"
    assert manifest["hook_attributes"].get("active", True) is True
    assert manifest["url"] == PUBLIC and manifest["redirect_url"] == PUBLIC
    assert manifest["public"] is False and manifest["name"] == "loop"
    assert manifest["default_permissions"] == {
        "issues": "write", "pull_requests": "write", "checks": "write", "contents": "write", "metadata": "read",
    }
    assert sorted(manifest["default_events"]) == ["issue_comment", "issues", "pull_request", "pull_request_review"]


def test_url_name_and_redirect_come_from_the_options_or_loop_public_url(cli: Cli) -> None:
    manifest = manifest_of(cli("--name", "acme-loop", "--redirect-url", "https://setup.example.com/done",
                               env={"LOOP_PUBLIC_URL": "https://hooks.example.com/loop"}))
    assert manifest["name"] == "acme-loop"
    assert manifest["hook_attributes"]["url"] == "https://hooks.example.com/loop/webhook"
    assert manifest["redirect_url"] == "https://setup.example.com/done"


@pytest.mark.parametrize("url", ["ftp://loop.example.com", "loop.example.com", "https://", "https://exa mple.com",
                                 "http://loop.example.com", "https://loop.example.com/?x=1",
                                 "https://user:pw@loop.example.com"])
def test_a_bad_url_is_a_one_line_error_naming_it(cli: Cli, url: str) -> None:
    one_line_error(cli("--url", url), "--url", repr(url))


def test_no_url_at_all_says_what_to_set(cli: Cli) -> None:
    one_line_error(cli(), "--url", "LOOP_PUBLIC_URL")


def test_a_too_long_name_is_refused(cli: Cli) -> None:
    one_line_error(cli("--url", PUBLIC, "--name", "x" * 35), "--name")


class _Form(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.action = ""
        self.method = ""
        self.fields: dict[str, str] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {name: value or "" for name, value in attrs}
        if tag == "form":
            self.action, self.method = values["action"], values["method"]
        if tag == "input":
            self.fields[values["name"]] = values["value"]


def test_the_form_posts_the_same_manifest_to_the_organizations_new_app_page(cli: Cli, tmp_path: Path) -> None:
    page = tmp_path / "create-app.html"
    result = cli("--url", PUBLIC, "--name", 'quote"s & <tags>', "--form", str(page), "--org", "acme")
    form = _Form()
    form.feed(page.read_text(encoding="utf-8"))
    assert form.action == "https://github.com/organizations/acme/settings/apps/new" and form.method == "post"
    assert json.loads(form.fields["manifest"]) == manifest_of(result)
    assert json.loads(form.fields["manifest"])["name"] == 'quote"s & <tags>'


def test_every_event_the_server_acts_on_is_subscribed(tmp_path: Path) -> None:
    """What `loop serve` does not answer with "not one loop acts on" is exactly the manifest's events
    (installation events reach every App unasked, ping is not an event one subscribes to)."""
    from agentloop.app.manifest import EVENTS, PERMISSIONS

    candidates = ["issues", "issue_comment", "pull_request", "pull_request_review", "pull_request_review_comment",
                  "pull_request_review_thread", "check_run", "check_suite", "push", "status", "label",
                  "workflow_run", "create", "delete", "repository", "member"]
    queue = JobQueue.open(tmp_path / "queue.sqlite3")
    server, thread, url = start_asgi(create_app(AppSettings(webhook_secret=SECRET, max_body=64 * 1024), queue))
    acted_on = []
    try:
        for event in candidates:
            body = b"{}"
            answer = httpx.post(f"{url}/webhook", content=body, timeout=10, headers={
                "X-GitHub-Event": event, "X-GitHub-Delivery": str(uuid.uuid4()),
                "X-Hub-Signature-256": signature_for(SECRET, body), "Content-Type": "application/json"})
            if "is not one loop acts on" not in answer.text:
                acted_on.append(event)
    finally:
        stop_asgi(server, thread)
    # nothing the server acts on goes unsubscribed, and nothing is subscribed that it ignores
    assert sorted(acted_on) == sorted(EVENTS), f"loop serve acts on {acted_on}, the manifest subscribes {EVENTS}"
    # GitHub only delivers an event to an App holding its permission
    assert PERMISSIONS["issues"] == "write" and PERMISSIONS["pull_requests"] == "write"


# -- the code exchange ------------------------------------------------------------------------------------


class ManifestGitHub(FakeGitHub):
    """The loopback GitHub with the manifest flow's conversion endpoint: each code works once."""

    def __init__(self, root: Path, **kwargs: Any) -> None:
        super().__init__(root, **kwargs)
        self.conversions: dict[str, dict[str, Any]] = {}

    def _app(self) -> Any:
        app = super()._app()
        app.router.routes.insert(0, Route("/api/v3/app-manifests/{code}/conversions", self._convert,
                                          methods=["POST"]))
        return app

    async def _convert(self, request: Request) -> Response:
        failed = await self._record(request)
        if failed is not None:
            return failed
        answer = self.conversions.pop(request.path_params["code"], None)
        if answer is None:
            return JSONResponse({"message": "Not Found"}, status_code=404)
        return JSONResponse(answer, status_code=201)


@pytest.fixture
def manifest_github(tmp_path: Path, app_key: tuple[str, str]) -> Iterator[ManifestGitHub]:
    server = ManifestGitHub(tmp_path / "github", app_public_key=app_key[1], app_id="777").start()
    server.conversions["c0de-1"] = {
        "id": 777, "slug": "acme-loop", "name": "acme-loop", "html_url": f"{server.base}/apps/acme-loop",
        "pem": app_key[0], "webhook_secret": SECRET, "client_id": "Iv1.abc", "client_secret": "cs_" + "9" * 40,
        "owner": {"login": "acme"}, "external_url": PUBLIC,
    }
    try:
        yield server
    finally:
        server.stop()


def test_the_exchange_writes_the_key_0600_prints_no_secret_and_loop_serve_starts_from_it(
        cli: Cli, manifest_github: ManifestGitHub, app_key: tuple[str, str], tmp_path: Path) -> None:
    out = tmp_path / "app"
    result = cli("--exchange", "c0de-1", "--out", str(out), env={"GITHUB_API_URL": manifest_github.api_url})
    assert result.code == 0, result.stderr
    printed = result.stdout + result.stderr
    for secret in (SECRET, "cs_" + "9" * 40, "PRIVATE KEY", app_key[0].splitlines()[1]):
        assert secret not in printed
    key, env_file = out / "app.private-key.pem", out / "app.env"
    assert "acme-loop" in printed and "777" in printed and str(env_file) in " ".join(printed.split())
    for path in (key, env_file):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert stat.S_IMODE(out.stat().st_mode) == 0o700
    assert key.read_text() == app_key[0]
    env = dict(line.split("=", 1) for line in env_file.read_text().splitlines())
    assert env["GITHUB_APP_ID"] == "777" and env["GITHUB_WEBHOOK_SECRET"] == SECRET
    assert env["GITHUB_APP_PRIVATE_KEY"] == str(key.resolve())
    assert env["GITHUB_API_URL"] == manifest_github.api_url
    assert env["LOOP_PUBLIC_URL"] == PUBLIC  # the run pages' links
    assert "cs_" not in env_file.read_text()  # the client secret is for OAuth, which loop does not use
    # what the exchange wrote is everything `loop serve` needs from GitHub
    served = build_app(env=env, workers=0, workdir=tmp_path / "serve")
    assert served is not None


def test_a_used_or_expired_code_is_one_line_and_writes_nothing(
        cli: Cli, manifest_github: ManifestGitHub, tmp_path: Path) -> None:
    env = {"GITHUB_API_URL": manifest_github.api_url}
    out = tmp_path / "app"
    assert cli("--exchange", "c0de-1", "--out", str(out), env=env).code == 0
    one_line_error(cli("--exchange", "c0de-1", "--out", str(tmp_path / "again"), env=env), "works once")
    assert not (tmp_path / "again").exists()


def test_existing_files_are_refused_before_the_code_is_spent(
        cli: Cli, manifest_github: ManifestGitHub, tmp_path: Path) -> None:
    out = tmp_path / "app"
    out.mkdir()
    (out / "app.env").write_text("GITHUB_APP_ID=1\n")
    one_line_error(cli("--exchange", "c0de-1", "--out", str(out), env={"GITHUB_API_URL": manifest_github.api_url}),
                   str(out / "app.env"))
    assert "c0de-1" in manifest_github.conversions  # not spent
    assert not any("app-manifests" in seen.path for seen in manifest_github.seen)


@pytest.mark.parametrize("code", ["../../user", "a b", ""])
def test_a_code_that_is_not_one_is_refused_without_asking_github(
        cli: Cli, manifest_github: ManifestGitHub, code: str) -> None:
    one_line_error(cli("--exchange", code, env={"GITHUB_API_URL": manifest_github.api_url}), "--exchange")
    assert manifest_github.seen == []


def test_the_installed_command_prints_the_manifest(tmp_path: Path) -> None:
    loop = Path(sys.executable).with_name("loop")
    done = subprocess.run([str(loop), "app", "manifest", "--url", PUBLIC], capture_output=True, text=True,
                          timeout=60, check=False, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["hook_attributes"]["url"] == f"{PUBLIC}/webhook"
