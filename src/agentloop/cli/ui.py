"""`loop ui`: the run pages of this repository on http://127.0.0.1:PORT/ui/, for the person at this machine
(no token needed from loopback; the server never listens on another interface)."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated

import typer
from starlette.applications import Starlette
from starlette.responses import RedirectResponse
from starlette.routing import Mount, Route

from agentloop.errors import ConfigError
from agentloop.pages.web import PagesSettings, create_pages_app
from agentloop.paths import repo_root, runs_dir
from agentloop.run_links import MOUNT, SECRET_ENV, pages_secret

log = logging.getLogger(__name__)
HOST = "127.0.0.1"


def ui_app(runs_root: Path, secret: bytes | None = None) -> Starlette:
    """The pages of `runs_root` at /ui, local: loopback requests need no token."""
    # a key of this process alone unless LOOP_PAGES_SECRET is set: it signs the forms' tokens
    key = secret or pages_secret() or secrets.token_bytes(32)
    pages = create_pages_app(PagesSettings(roots=lambda: [runs_root], secret=key, local=True))
    return Starlette(routes=[Route("/", lambda request: RedirectResponse(f"{MOUNT}/")), Mount(MOUNT, pages)])


def app_pages(repos: Path, env: Mapping[str, str]) -> Starlette:
    """The pages `loop serve` mounts at /ui: every repository's runs under its workdir (`<owner>/<name>/runs`),
    each page opened only with a token (`agentloop.run_links`)."""
    key = pages_secret(env)
    if key is None:
        raise ConfigError(f"{SECRET_ENV} or GITHUB_WEBHOOK_SECRET must be set to sign the run pages' links")
    return create_pages_app(PagesSettings(roots=lambda: sorted(repos.glob("*/*/runs")), secret=key))


def ui(
    port: Annotated[int, typer.Option(help="Port to listen on (127.0.0.1 only).")] = 8765,
    repo: Annotated[Path, typer.Option("--repo", help="The target repository (default: the current directory).")] = Path("."),
) -> None:
    """Browse this repository's runs: http://127.0.0.1:PORT/ui/."""
    import uvicorn

    app = ui_app(runs_dir(repo_root(repo)))
    typer.echo(f"loop ui: http://{HOST}:{port}{MOUNT}/", err=True)
    uvicorn.run(app, host=HOST, port=port, log_level="warning", access_log=False)
