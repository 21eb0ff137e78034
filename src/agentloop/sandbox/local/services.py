"""Turning a `loop.yaml` service into a running process: placeholders, env, database branch, health.

A service's `run` and `env` values may use `{port}` (the port it must listen on), `{database}` (its
own SQLite copy) and `{services.NAME.url}` (NAME's stable router address, so calls between services go
through the router and keep their route key), or its parts `{services.NAME.host}` and `{services.NAME.port}`
for a service that takes them separately. The command runs with cwd = the source root (the
worktree root, not the service's `path`), confined (`agentloop.confine`), with an environment built from
nothing: PATH, HOME, locale, what the service's `env` gives, LOOP_SERVICE, PORT, with a database
LOOP_DB_PATH and, for a fork, its sandbox and route key (LOOP_SANDBOX, LOOP_ROUTE_KEY and Signadot's
SIGNADOT_SANDBOX_NAME, SIGNADOT_SANDBOX_ROUTING_KEY). None of loop's own variables reach a service: add
what it needs under its `env`.
"""

from __future__ import annotations

import re
import shutil
import sqlite3
from collections.abc import Iterable, Mapping
from contextlib import closing
from pathlib import Path
from urllib.parse import urlsplit

from agentloop import config_rules, processes
from agentloop.config import ServiceConfig
from agentloop.confine import Confinement
from agentloop.errors import ConfigError, DeployError
from agentloop.sandbox.client import sandbox_env
from agentloop.sandbox.local import process
from agentloop.sandbox.local.registry import ServiceProcess

_PLACEHOLDER = re.compile(r"\{(port|database|services\.([\w-]+)\.(url|host|port))\}")


def expand(text: str, *, field: str, port: int, database: str | None, router_urls: Mapping[str, str]) -> str:
    """Substitute the known placeholders only, so shell braces like `${HOME}` pass through untouched."""

    def substitute(match: re.Match[str]) -> str:
        if match.group(1) == "port":
            return str(port)
        if match.group(1) == "database":
            if database is None:
                raise ConfigError(f"loop.yaml: field `{field}` uses {{database}} but the service has no `database:`")
            return database
        name = match.group(2)
        if name not in router_urls:
            known = ", ".join(sorted(router_urls))
            raise ConfigError(f"loop.yaml: field `{field}` names unknown service {name!r} (known: {known})")
        return url_part(router_urls[name], match.group(3))

    return _PLACEHOLDER.sub(substitute, text)


def url_part(url: str, part: str) -> str:
    """`part` ("url", "host" or "port") of a service address `http://host:port`."""
    if part == "url":
        return url
    split = urlsplit(url)
    if part == "host":
        return split.hostname or ""
    return str(split.port or (443 if split.scheme == "https" else 80))


def branch_database(destination: Path, *, parent: Path | None, seed: Path) -> Path:
    """Make `destination` a copy of `parent` (a live database, copied with SQLite's online backup so a
    writer cannot tear it) or else of `seed` (the file in the source tree); neither is ever written."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    if parent is not None and parent.is_file():
        with closing(sqlite3.connect(f"file:{parent}?mode=ro", uri=True)) as src, closing(
            sqlite3.connect(destination)
        ) as dst:
            src.backup(dst)
    elif seed.is_file():
        shutil.copyfile(seed, destination)
    return destination


def start(
    name: str,
    service: ServiceConfig,
    *,
    source: Path,
    log_path: Path,
    db_path: Path | None,
    router_urls: Mapping[str, str],
    tag: tuple[str, str],
    confinement: Confinement,
    home: Path,
    fork_of: tuple[str, str] | None = None,
) -> tuple[process.Started, ServiceProcess]:
    """Launch one service from `source` on a free port, in a jail where only `source`, its database's
    directory and `home` are writable; `tag` is (registry path, sandbox name); `fork_of` is (sandbox name,
    route key) when the service is a sandbox's fork, None for the baseline."""
    port = process.free_port()
    database = str(db_path) if db_path is not None else None
    prefix = f"services.{name}"
    given: dict[str, str] = {}
    for key, value in service.env.items():
        given[key] = expand(value, field=f"{prefix}.env.{key}", port=port, database=database, router_urls=router_urls)
    given.update(LOOP_SERVICE=name, PORT=str(port))
    if database is not None:
        given["LOOP_DB_PATH"] = database
    if fork_of is not None:
        given.update(sandbox_env(*fork_of))
    command = expand(service.run, field=f"{prefix}.run", port=port, database=database, router_urls=router_urls)
    if not source.is_dir():
        raise DeployError(f"service {name!r}: source {source} is not a directory", service=name)
    writable = [source, *([db_path.parent] if db_path is not None else [])]
    jailed = confinement.argv(["/bin/sh", "-c", command], cwd=source, writable=writable, home=home, network=True)
    project = confinement.project
    env = confinement.env(project.variables(given), home=home, path_first=project.path_first(source))
    started = process.launch(
        jailed, cwd=source, env=env, log_path=log_path, port=port, tag=(tag[0], tag[1], name), shown=command,
        max_log_mb=confinement.limits.output_mb * 4,
    )
    record = ServiceProcess(
        pid=started.record.pid, start_time=started.record.start_time, service=name, port=port,
        url=f"http://127.0.0.1:{port}", source=str(source), code_hash=process.code_hash(source, service.path),
        log_path=str(log_path), db_path=database,
    )
    return started, record


def waves(configs: Mapping[str, ServiceConfig], names: Iterable[str]) -> list[list[str]]:
    """`names` in start order: each wave's services depend (`depends_on`) only on earlier waves or on
    services not in `names` (already running: the baseline's, for a sandbox's forks)."""
    return config_rules.start_order({name: configs[name].depends_on for name in names})


def wait_all(
    launched: dict[str, process.Started], services: Mapping[str, ServiceConfig]
) -> tuple[list[str], DeployError | None]:
    """Wait for every launched service to be healthy (one wave starts in parallel). Return the healthy
    ones and the first failure; a failed service's processes are already stopped."""
    healthy: list[str] = []
    failure: DeployError | None = None
    for name, started in launched.items():
        config = services[name]
        try:
            process.wait_healthy(started, service=name, health=config.health, timeout=config.ready_timeout)
        except DeployError as exc:
            failure = failure or exc
            continue
        healthy.append(name)
    return healthy, failure


def describe(records: Mapping[str, ServiceProcess]) -> dict[str, dict[str, object]]:
    return {
        name: {"upstream": rec.url, "pid": rec.pid, "alive": processes.alive(rec), "log": rec.log_path}
        for name, rec in records.items()
    }
