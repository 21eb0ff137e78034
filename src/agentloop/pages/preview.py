"""A run's sandbox on its page: whether it is still up (read from the sandbox backend, never starting
anything), and a preview of its services proxied through the pages.

The proxy only ever reaches the URLs the sandbox itself lists for its services (never one taken from the
request), with the sandbox's routing headers, so the preview shows the run's forks. Of the client's headers
only a few harmless ones go along (no cookie, authorization or hop-by-hop header); the answer is cut at
`MAX_BODY` and comes back with the pages' strict headers plus `sandbox` in its Content-Security-Policy, so
a previewed page's script cannot act as the pages' origin."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import quote

import httpx

from agentloop.config import load_config
from agentloop.errors import LoopError
from agentloop.results import SandboxInfo
from agentloop.sandbox.factory import open_backend

MAX_BODY = 5 * 1024 * 1024
TIMEOUT = 30.0
# what a browser sends that a service may need to answer; everything else (cookies, authorization, the
# hop-by-hop headers, the pages' own Host) stays here
_FORWARDED = ("accept", "accept-language", "user-agent", "if-none-match", "if-modified-since")
_KEPT = ("content-type", "etag", "last-modified", "content-language")

State = Literal["up", "gone", "none", "unknown"]


@dataclass
class SandboxState:
    state: State
    reason: str = ""
    info: SandboxInfo | None = None


@dataclass
class Preview:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


def sandbox_state(repo: Path, run_id: str) -> SandboxState:
    """The run's sandbox as its backend knows it now: a read of the backend's records, nothing started.
    Any error reading it is "unknown", with the reason."""
    try:
        config = load_config(repo)
        if not config.services:
            return SandboxState("none", "no sandbox (no services)")
        info = open_backend(repo, config).get(run_id)
    except (LoopError, OSError, ValueError) as exc:  # the page says why rather than failing
        return SandboxState("unknown", str(exc) or type(exc).__name__)
    if info is None:
        return SandboxState("gone", "the sandbox was removed (pull request closed, expired, or not kept)")
    return SandboxState("up", info=info)


def _clean_path(path: str) -> str | None:
    """The path below a service's entry, or None when it would leave it (`..`, a backslash, a control
    character). Leading slashes are dropped: `//host/x` is a path on the service, not another host."""
    if any(c in path for c in "\\\r\n\0") or any(part in ("..", ".") for part in path.split("/")):
        return None
    return path.lstrip("/")


def upstream_url(info: SandboxInfo, service: str, path: str,
                 query: list[tuple[str, str | int | float | bool | None]]) -> httpx.URL | None:
    """Where a preview of `service`'s `path` goes: that service's entry in the sandbox; None when the
    sandbox has no such service or the path would leave it."""
    entry = info.service_urls.get(service)
    cleaned = _clean_path(path)
    if not entry or cleaned is None:
        return None
    base = httpx.URL(entry)
    prefix = base.path.rstrip("/")
    return base.copy_with(path=f"{prefix}/{cleaned}", query=None).copy_merge_params(query)


def _location(value: str, preview_base: str, token: str | None) -> str | None:
    """A redirect within the service, rewritten to go through the preview; any other is dropped."""
    if not value.startswith("/") or value.startswith("//"):
        return None
    target = f"{preview_base}{value}"
    if token:
        target += ("&" if "?" in value else "?") + f"token={quote(token, safe='')}"
    return target


def fetch_preview(info: SandboxInfo, url: httpx.URL, method: str, client_headers: dict[str, str], *,
                  preview_base: str, token: str | None) -> Preview:
    """`method` `url` with the sandbox's routing headers; the answer cut at MAX_BODY (502 beyond), 504 on
    a timeout, 502 when the service cannot be reached."""
    headers = {name: value for name, value in client_headers.items() if name.lower() in _FORWARDED}
    headers.update(info.routing_headers)
    try:
        with httpx.Client(timeout=TIMEOUT, follow_redirects=False, trust_env=False) as client, \
                client.stream(method, url, headers=headers) as answer:
            body = b""
            for chunk in answer.iter_bytes():
                body += chunk
                if len(body) > MAX_BODY:
                    return Preview(502, f"the preview is larger than {MAX_BODY} bytes".encode())
            kept = {name: answer.headers[name] for name in _KEPT if name in answer.headers}
            location = _location(answer.headers.get("location", ""), preview_base, token)
            if location is not None:
                kept["location"] = location
            return Preview(answer.status_code, body, kept)
    except httpx.TimeoutException:
        return Preview(504, b"the sandbox did not answer in time")
    except httpx.HTTPError as exc:
        return Preview(502, f"the sandbox could not be reached: {type(exc).__name__}".encode())
