"""`loop sandbox ...`: the shared baseline and per-run sandboxes from the command line.

Sandboxes and baselines made here belong to no process: they live until `rm`, `baseline down` or
their TTL (`gc`). Errors print one line, `error: ...`, to stderr and exit with code 2.
`--backend` on every command overrides `loop.yaml`'s `sandbox.backend` for that command.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from agentloop import paths
from agentloop.cli import sandbox_dry_run as dry
from agentloop.config import LoopConfig, load_config
from agentloop.errors import LoopError
from agentloop.results import SandboxInfo
from agentloop.sandbox.base import Detachable, Plannable, SandboxBackend
from agentloop.sandbox.factory import open_backend

app = typer.Typer(help="Sandboxes: a shared baseline plus per-run forks of the changed services.", no_args_is_help=True)
baseline_app = typer.Typer(help="The shared baseline: every service at the base branch.", no_args_is_help=True)
app.add_typer(baseline_app, name="baseline")

Repo = Annotated[Path, typer.Option("--repo", help="The target repository (default: the current directory).")]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
BackendName = Annotated[str | None, typer.Option(
    "--backend", help="local or kubernetes; overrides loop.yaml's sandbox.backend.")]
_BACKENDS = ("local", "kubernetes")
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


@contextmanager
def _errors() -> Iterator[None]:
    try:
        yield
    except LoopError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


def _config(repo: Path, backend: str | None) -> tuple[Path, LoopConfig]:
    root = paths.repo_root(repo)
    config = load_config(root)
    if backend is not None:
        if backend not in _BACKENDS:
            raise LoopError(f"--backend {backend!r}: use one of {', '.join(_BACKENDS)}")
        config = config.model_copy(update={"sandbox": config.sandbox.model_copy(update={"backend": backend})})
    return root, config


def _open(repo: Path, backend_name: str | None = None) -> SandboxBackend:
    root, config = _config(repo, backend_name)
    backend = open_backend(root, config)
    if isinstance(backend, Detachable):
        backend.detach()  # outlives this command; see the module docstring
    return backend


def _parse_time(option: str, value: str | None) -> float | None:
    if value is None:
        return None
    if duration := _DURATION.fullmatch(value.strip()):
        return time.time() - float(duration.group(1)) * _SECONDS[duration.group(2)]
    try:
        return float(value)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(value).timestamp()
    except ValueError:
        raise LoopError(
            f"{option} {value!r}: use an ISO time (2026-01-02T10:00), seconds since the epoch, or an age like 10m"
        ) from None


def _parse_forks(forks: list[str], repo: Path) -> dict[str, Path]:
    parsed: dict[str, Path] = {}
    for item in forks:
        service, _, path = item.partition("=")
        if not service:
            raise LoopError(f"--fork {item!r}: expected SERVICE or SERVICE=PATH")
        source = Path(path).expanduser().resolve() if path else paths.repo_root(repo)
        if not source.is_dir():
            raise LoopError(f"--fork {item!r}: {source} is not a directory; give a worktree of the repository")
        parsed[service] = source
    return parsed


def _print_sandboxes(sandboxes: list[SandboxInfo], as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps([box.model_dump(mode="json") for box in sandboxes], indent=2))
        return
    table = Table("name", "route key", "forks", "expires")
    table.add_column("link", overflow="fold")
    for box in sandboxes:
        expires = datetime.fromtimestamp(box.expires_at).isoformat(timespec="seconds") if box.expires_at else ""
        table.add_row(box.name, box.route_key, ", ".join(box.forks) or "-", expires, box.link or "")
    Console().print(table)


@baseline_app.command("up")
def baseline_up(repo: Repo = Path("."), backend_name: BackendName = None) -> None:
    """Start every service from the base branch, with the router, unless it is already up."""
    with _errors():
        backend = _open(repo, backend_name)
        started = backend.baseline_up()
        typer.echo("baseline started" if started else "baseline already up")
        _print_status(backend.baseline_status(), False)


@baseline_app.command("down")
def baseline_down(repo: Repo = Path("."), backend_name: BackendName = None) -> None:
    """Stop the baseline, its router and every sandbox on it."""
    with _errors():
        backend = _open(repo, backend_name)
        backend.baseline_down()
        if backend.name == "kubernetes":
            typer.echo("the Kubernetes baseline is shared and not loop's to stop; nothing was changed")
        else:
            typer.echo("baseline down")


@baseline_app.command("status")
def baseline_status(repo: Repo = Path("."), as_json: AsJson = False, backend_name: BackendName = None) -> None:
    """Whether the baseline is up, and each service's stable address."""
    with _errors():
        _print_status(_open(repo, backend_name).baseline_status(), as_json)


def _print_status(status: dict[str, Any], as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(status, indent=2))
        return
    if status.get("backend") == "kubernetes":
        _print_cluster_status(status)
        return
    if not status.get("up"):
        typer.echo("baseline: down")
        return
    typer.echo(f"baseline: up at {str(status.get('commit', ''))[:12]}")
    table = Table("service", "address", "upstream", "pid", "alive")
    for name, entry in (status.get("services") or {}).items():
        table.add_row(name, str(entry.get("url", "")), str(entry.get("upstream", "")), str(entry.get("pid", "")),
                      "yes" if entry.get("alive") else "NO")
    Console().print(table)


def _print_cluster_status(status: dict[str, Any]) -> None:
    services: dict[str, dict[str, Any]] = status.get("services") or {}
    ready = all(entry.get("available") for entry in services.values())
    typer.echo(f"baseline: {'up' if ready else 'NOT all available'} in namespace {status.get('namespace')} "
               f"(context {status.get('context') or 'default'}, routing {status.get('routing')})")
    table = Table("service", "deployment", "available", "image")
    for name, entry in services.items():
        table.add_row(name, str(entry.get("deployment") or "-"), "yes" if entry.get("available") else "NO",
                      str(entry.get("image") or ""))
    Console().print(table)


@app.command("create")
def create(
    name: str,
    fork: Annotated[list[str], typer.Option("--fork", help="SERVICE or SERVICE=PATH (a worktree); repeatable.")],
    repo: Repo = Path("."),
    as_json: AsJson = False,
    backend_name: BackendName = None,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="Print what would be applied (kubernetes) or started (local); change nothing.")] = False,
    output: Annotated[str | None, typer.Option("-o", "--output", help="yaml or json.")] = None,
) -> None:
    """Create sandbox NAME forking the given services; everything else is served by the baseline."""
    with _errors():
        chosen = dry.check_format(output) if output is not None else None
        forks = _parse_forks(fork, repo)
        if dry_run:
            typer.echo(_dry_run(repo, backend_name, name, forks, chosen or "yaml"), nl=False)
            return
        backend = _open(repo, backend_name)
        if backend.baseline_up():
            typer.echo("baseline started", err=True)
        info = backend.create(name, forks)
        if chosen == "yaml":
            typer.echo(dry.render([info.model_dump(mode="json")], "yaml"), nl=False)
        else:
            _print_sandboxes([info], as_json or chosen == "json")


def _dry_run(repo: Path, backend_name: str | None, name: str, forks: dict[str, Path],
             output: dry.OutputFormat) -> str:
    root, config = _config(repo, backend_name)
    backend = open_backend(root, config)
    if not isinstance(backend, Plannable):
        raise LoopError(f"--dry-run: the {backend.name} backend cannot plan; "
                        "use --backend local or --backend kubernetes")
    return dry.render(dry.masked_objects(backend.plan(name, forks)), output)


@app.command("ls")
def list_sandboxes(repo: Repo = Path("."), as_json: AsJson = False, backend_name: BackendName = None) -> None:
    """List the sandboxes."""
    with _errors():
        _print_sandboxes(_open(repo, backend_name).list(), as_json)


@app.command("logs")
def logs(
    name: str,
    service: str,
    repo: Repo = Path("."),
    since: Annotated[str | None, typer.Option(help="ISO time, epoch seconds or an age (30s, 10m, 2h).")] = None,
    until: Annotated[str | None, typer.Option(help="ISO time, epoch seconds or an age (30s, 10m, 2h).")] = None,
    backend_name: BackendName = None,
) -> None:
    """A service's log in sandbox NAME (`baseline` for the baseline; SERVICE `router` for the router)."""
    with _errors():
        text = _open(repo, backend_name).logs(name, service, since=_parse_time("--since", since), until=_parse_time("--until", until))
        typer.echo(text, nl=False)


@app.command("rm")
def remove(name: str, repo: Repo = Path("."), backend_name: BackendName = None) -> None:
    """Remove sandbox NAME and stop its forks."""
    with _errors():
        backend = _open(repo, backend_name)
        if backend.get(name) is None:
            raise LoopError(f"no sandbox named {name!r}; see `loop sandbox ls`")
        backend.remove(name)
        typer.echo(f"removed {name}")


@app.command("gc")
def gc(
    repo: Repo = Path("."),
    as_json: AsJson = False,
    backend_name: BackendName = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List what would be removed; remove nothing.")] = False,
    app_workdir: Annotated[Path | None, typer.Option(
        "--app-workdir", help="The GitHub App's --workdir: also remove its stale worktrees and idle clones.")] = None,
    queue: Annotated[str | None, typer.Option(
        help="With --app-workdir: the App's --queue when it is not the workdir's queue.sqlite3.")] = None,
) -> None:
    """Remove expired sandboxes, the worktrees and branches of finished runs (failed, killed, published:
    not running ones; an open pull request's branch stays), and what is older than loop.yaml's
    `retention`: run records, the App's idle clones, base results (cached base runs)."""
    from agentloop.cleanup.collect import collect

    with _errors():
        try:
            root: Path | None = paths.repo_root(repo)
        except LoopError:
            if app_workdir is None:
                raise
            root = None  # the App's server: only its clones
        config, backend = (_config(repo, backend_name)[1], _open(repo, backend_name)) \
            if root is not None else (None, None)
        items = collect(root, config, backend, dry_run=dry_run, app_workdir=app_workdir, queue=queue)
        if as_json:
            typer.echo(json.dumps([item.as_json() for item in items], indent=2))
            return
        for item in items:
            typer.echo(item.line())
        if not any(item.action != "kept" for item in items):
            typer.echo("nothing to remove")
