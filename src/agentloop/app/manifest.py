"""Setting the App up: the GitHub App manifest `loop serve` needs, and the manifest flow's code exchange.

GitHub's manifest flow: a form POSTs the manifest (JSON) to github.com/settings/apps/new (or an
organization's), the person names and creates the App, GitHub redirects to `redirect_url?code=...`, and
`POST /app-manifests/{code}/conversions` (no authentication; the code lives an hour and works once) answers
the App's id, private key (pem) and webhook secret. The exchange writes them to files only the user can
read and never returns or logs the secrets themselves.
"""

from __future__ import annotations

import html
import json
import os
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
from pydantic import BaseModel

from agentloop.errors import ConfigError, LoopError

# What the App does with each: comments and labels on issues; draft pull requests and their updates;
# the `loop / validation` check run; pushing the run's branch; metadata is required by every App.
PERMISSIONS: dict[str, str] = {
    "issues": "write",
    "pull_requests": "write",
    "checks": "write",
    "contents": "write",
    "metadata": "read",
}
# Issues opened or labelled, `/loop` comments, pull requests closed or merged, reviews asking for changes.
EVENTS: tuple[str, ...] = ("issues", "issue_comment", "pull_request", "pull_request_review")
DEFAULT_NAME = "loop"
_NAME_LIMIT = 34  # GitHub refuses App names longer than this
_CODE = re.compile(r"[A-Za-z0-9_-]{1,200}")


class ManifestError(LoopError):
    """GitHub refused the manifest code exchange."""


def public_url(value: str, what: str = "--url") -> str:
    """The server's public base URL, checked: https (or http to a loopback host), a host, no query."""
    text = value.strip().rstrip("/")
    parts = urlsplit(text)
    example = "e.g. https://loop.example.com"
    if parts.scheme not in ("https", "http") or not parts.hostname or any(c.isspace() for c in text):
        raise ConfigError(f"{what} {value!r}: not an http(s) URL with a host; give the address GitHub "
                          f"can reach loop serve at, {example}")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ConfigError(f"{what} {value!r}: carries a query, fragment or credentials; give only the base "
                          f"address, {example}")
    if parts.scheme == "http" and parts.hostname not in ("localhost", "127.0.0.1", "::1"):
        raise ConfigError(f"{what} {value!r}: plain http would carry every webhook unencrypted over the "
                          f"network; use https:// (http only for localhost), {example}")
    return text


def app_name(value: str) -> str:
    name = value.strip()
    if not name or len(name) > _NAME_LIMIT:
        raise ConfigError(f"--name {value!r}: give an App name of 1 to {_NAME_LIMIT} characters "
                          "(it must be unique on GitHub)")
    return name


def build_manifest(url: str, *, name: str = DEFAULT_NAME, redirect_url: str | None = None) -> dict[str, Any]:
    """The manifest for an App whose `loop serve` is reachable at `url` (webhooks at `url`/webhook).

    `redirect_url` is where GitHub sends the browser with `?code=...` once the App is created (default: `url`;
    loop serve answers no page there, the code is read from the address bar)."""
    base = public_url(url)
    return {
        "name": app_name(name),
        "url": base,
        "description": "Resolves labelled issues with a validated pull request (loop serve).",
        "hook_attributes": {"url": f"{base}/webhook", "active": True},
        "redirect_url": public_url(redirect_url, "--redirect-url") if redirect_url else base,
        "public": False,
        "default_permissions": dict(PERMISSIONS),
        "default_events": list(EVENTS),
    }


def creation_url(org: str | None = None, github_url: str = "https://github.com") -> str:
    base = public_url(github_url, "--github-url")
    if org is None:
        return f"{base}/settings/apps/new"
    if not re.fullmatch(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,38})", org):
        raise ConfigError(f"--org {org!r}: not a GitHub organization name")
    return f"{base}/organizations/{org}/settings/apps/new"


def manifest_form(manifest: dict[str, Any], action: str) -> str:
    """A page that POSTs the manifest to GitHub (the flow takes a form POST, not a link): open it, press the button."""
    value = html.escape(json.dumps(manifest), quote=True)
    return (
        "<!doctype html>\n<meta charset=\"utf-8\"><title>Create the loop GitHub App</title>\n"
        f"<form action=\"{html.escape(action, quote=True)}\" method=\"post\">\n"
        f"<input type=\"hidden\" name=\"manifest\" value=\"{value}\">\n"
        "<button type=\"submit\">Create the GitHub App</button>\n</form>\n"
    )


class CreatedApp(BaseModel):
    """What the exchange left behind: no secret, only where the secrets were written."""

    id: int
    slug: str
    html_url: str
    key_file: Path
    env_file: Path


def planned_files(directory: Path) -> tuple[Path, Path]:
    return directory / "app.private-key.pem", directory / "app.env"


def exchange_code(code: str, directory: Path, *, api_url: str = "https://api.github.com",
                  transport: httpx.BaseTransport | None = None) -> CreatedApp:
    """Turn the manifest flow's code into the App's credentials, written 0600 under `directory`."""
    if not _CODE.fullmatch(code.strip()):
        raise ConfigError(f"--exchange {code!r}: not a manifest code; copy the `code=` value from the address "
                          "GitHub redirected to after creating the App")
    key_file, env_file = planned_files(directory)
    existing = [str(path) for path in (key_file, env_file) if path.exists()]
    if existing:  # checked before the exchange: the code works once, its answer must not be lost
        raise ConfigError(f"{', '.join(existing)} already exist; move them away or give another --out")
    data = _convert(code.strip(), _api_url(api_url), transport)
    try:
        app_id, slug, pem, secret = int(data["id"]), str(data["slug"]), str(data["pem"]), str(data["webhook_secret"])
    except (KeyError, TypeError, ValueError):
        raise ManifestError("GitHub's manifest conversion answer lacks id, slug, pem or webhook_secret; "
                            "check GITHUB_API_URL points at the GitHub API") from None
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    _write_private(key_file, pem if pem.endswith("\n") else pem + "\n")
    lines = [f"GITHUB_APP_ID={app_id}", f"GITHUB_APP_PRIVATE_KEY={key_file.resolve()}",
             f"GITHUB_WEBHOOK_SECRET={secret}"]
    if api_url.rstrip("/") != "https://api.github.com":
        lines.append(f"GITHUB_API_URL={api_url.rstrip('/')}")
    homepage = str(data.get("external_url") or "")  # the manifest's `url`: where run pages are linked from
    if re.fullmatch(r"https?://[^\s]+", homepage):
        lines.append(f"LOOP_PUBLIC_URL={homepage.rstrip('/')}")
    _write_private(env_file, "\n".join(lines) + "\n")
    return CreatedApp(id=app_id, slug=slug, html_url=str(data.get("html_url") or ""), key_file=key_file,
                      env_file=env_file)


def _api_url(value: str) -> str:
    text = value.strip().rstrip("/")
    if not text.startswith(("https://", "http://")) or any(c.isspace() for c in text):
        raise ConfigError(f"GITHUB_API_URL={value!r}: not an http(s) URL; e.g. https://github.example.com/api/v3")
    return text


def _convert(code: str, api_url: str, transport: httpx.BaseTransport | None) -> dict[str, Any]:
    url = f"{api_url}/app-manifests/{code}/conversions"
    headers = {"Accept": "application/vnd.github+json", "X-GitHub-Api-Version": "2022-11-28"}
    with httpx.Client(transport=transport, timeout=30.0) as client:
        try:
            response = client.post(url, headers=headers)
        except httpx.HTTPError as exc:
            raise ManifestError(f"{api_url}: cannot reach GitHub ({type(exc).__name__}); check GITHUB_API_URL") from None
    if response.status_code == 404:
        raise ManifestError("GitHub does not know this manifest code: it works once and for an hour; "
                            "create the App from the manifest again")
    if response.status_code != 201:
        raise ManifestError(f"GitHub answered {response.status_code} to the manifest code exchange; "
                            "create the App from the manifest again")
    try:
        data = response.json()
    except ValueError:
        data = None
    if not isinstance(data, dict):
        raise ManifestError("GitHub's manifest conversion answer is not a JSON object; check GITHUB_API_URL")
    return data


def _write_private(path: Path, text: str) -> None:
    """Created 0600 from the start (never briefly readable by others), refusing to follow or overwrite."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
