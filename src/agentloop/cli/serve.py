"""`loop serve`: run the GitHub App -- the webhook endpoint, the durable queue and the worker processes.

Configuration by environment: GITHUB_APP_ID, GITHUB_APP_PRIVATE_KEY (PEM or path),
GITHUB_WEBHOOK_SECRET, GITHUB_API_URL (GitHub Enterprise Server), LOOP_MODEL.
"""

from __future__ import annotations

import gc
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated

import typer
from starlette.applications import Starlette

from agentloop.app.auth import AppAuth, load_private_key
from agentloop.app.pool import WorkerPool
from agentloop.app.queue import JobQueue
from agentloop.app.server import MAX_BODY, AppSettings, create_app
from agentloop.app.worker import default_owner
from agentloop.errors import ConfigError

log = logging.getLogger(__name__)


def default_workdir() -> Path:
    base = os.environ.get("LOOP_STATE_DIR") or os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local/state")
    return Path(base) / "loop" / "serve"


def _require(env: Mapping[str, str], name: str, what: str) -> str:
    value = env.get(name, "").strip()
    if not value:
        raise ConfigError(f"{name} is not set; {what} (see README 'GitHub App')")
    return value


def build_app(
    *,
    queue: str | None = None,
    workers: int = 1,
    label: str = "loop",
    workdir: Path | None = None,
    model: str | None = None,
    env: Mapping[str, str] | None = None,
) -> Starlette:
    """The App's ASGI application from options and environment; raises ConfigError naming what to set.

    Its lifespan starts `workers` worker processes (`agentloop.app.pool`) that run the jobs."""
    source = os.environ if env is None else env
    app_id = _require(source, "GITHUB_APP_ID", "set it to the App ID from the App's settings page")
    key = load_private_key(_require(source, "GITHUB_APP_PRIVATE_KEY", "set it to the App's private key (PEM or path)"))
    secret = _require(source, "GITHUB_WEBHOOK_SECRET", "set it to the webhook secret you gave GitHub")
    api_url = (source.get("GITHUB_API_URL") or "https://api.github.com").strip().rstrip("/")
    if not api_url.startswith(("https://", "http://")) or any(c.isspace() for c in api_url):
        raise ConfigError(f"GITHUB_API_URL={api_url!r}: not an http(s) URL; e.g. https://github.example.com/api/v3")
    work = (workdir or default_workdir()).expanduser().resolve()
    if work.exists() and not work.is_dir():
        raise ConfigError(f"--workdir {work}: is a file; give a directory for clones and the queue")
    jobs = JobQueue.open(queue or work / "queue.sqlite3")
    AppAuth(app_id, key, api_url=api_url)  # refuses a bad id or key now, not in every worker later
    repos = work / "repos"
    pool = WorkerPool(
        queue=jobs.target, workdir=repos, owner=default_owner(repos), count=workers, api_url=api_url,
        model=model or source.get("LOOP_MODEL") or None, jobs=jobs,
        env={**os.environ, "GITHUB_APP_ID": app_id, "GITHUB_APP_PRIVATE_KEY": key},
    )
    from agentloop.cli.ui import app_pages  # the run pages at /ui, opened with a token (README "Run pages")

    return create_app(AppSettings(webhook_secret=secret, label=label, max_body=MAX_BODY), jobs, pool,
                      pages=app_pages(repos, source))


def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8080,
    queue: Annotated[
        str | None, typer.Option(help="SQLite file or postgresql:// URL (share one URL between servers).")
    ] = None,
    workers: Annotated[int, typer.Option(
        min=0, help="Worker processes, each running one job at a time (0: only answer webhooks and queue)."
    )] = 1,
    label: Annotated[str, typer.Option(help="Issue label that starts a run.")] = "loop",
    workdir: Annotated[Path | None, typer.Option(help="Where clones and the default queue live.")] = None,
    model: Annotated[str | None, typer.Option(help="Model for every run (default: LOOP_MODEL or loop.yaml).")] = None,
) -> None:
    """Run the GitHub App: webhooks in (POST /webhook), runs out; GET /healthz and GET /runs."""
    import uvicorn

    app = build_app(queue=queue, workers=workers, label=label, workdir=workdir, model=model)
    # What is loaded by now lives as long as the server: a full garbage collection walking it took 80 ms,
    # a stall for every answer in flight. Frozen, collections only look at what requests leave behind.
    gc.collect()
    gc.freeze()
    log.info("loop serve listening on http://%s:%s", host, port)
    # one line per delivery is logged by the handler itself; uvicorn's access line would double it
    uvicorn.run(app, host=host, port=port, log_level="info", access_log=False)


def main() -> None:
    """`python -m agentloop.cli.serve` (the same as `loop serve`)."""
    typer.run(serve)


if __name__ == "__main__":
    main()
