"""The local router: one stable loopback address per service, routing each request by route key.

Run as its own process (``python -m agentloop.sandbox.router``) so it outlives any single `loop`
command: the baseline is brought up in one terminal and used by `loop fix` runs in others. The listening
sockets are bound by the process that starts the router and inherited as file descriptors
(``--listen SERVICE=FD``), so the ports are known before the router runs and no other process can take
them in between.

The routing table is the registry file (see `registry.py`): the router re-reads it whenever its
inode, size or mtime changes (one `stat` per request), so `create`/`update`/`rm` take effect on the
next request with no admin endpoint to keep in step.

A request goes to a sandbox's fork of the service when it carries the sandbox's route key as
`sd-routing-key=<key>` in the W3C `baggage` or `tracestate` header (what Signadot-instrumented services
already propagate), in the project's own header (`sandbox.route_header`), or in the `loop-route` cookie
set by the preview link (``/__loop/preview?key=K``), read as `route_key.py` says (the grammar the Istio
rules are generated from, too); otherwise, and for services the sandbox did not fork,
to the baseline. The exchange itself is relayed by `relay.py`: faithfully, and a failure shows at the client
as it would without the router. Every request appends one JSON line (time, sandbox, service, method, path,
target, url, status, latency_ms, and `error` when the exchange failed, e.g. "upstream closed mid-body after
400 bytes") to ``<requests-dir>/<route key>.jsonl`` (``_baseline.jsonl`` for requests without a known key).

Environment mode (the `routing: proxy` Deployment on Kubernetes, started with no `--registry`): one
service, routes fixed at start from the environment -- LOOP_ROUTER_ROUTES (JSON: route key -> fork URL),
LOOP_ROUTER_DEFAULT (the baseline URL for requests without a known key), LOOP_ROUTE_HEADER (the project's
header), LOOP_ROUTE_KEY_ENTRY (the baggage/tracestate entry name, default `sd-routing-key`), listening on
PORT (default 8080; 0 picks a free one) at LOOP_ROUTER_HOST (default 0.0.0.0). A changed route set is a
new pod spec, so Kubernetes rolls the router instead of the router watching anything. Request records go
to stderr as JSON lines, where `kubectl logs` finds them.

aiohttp is used for both the server and the client: one well-kept library with a C HTTP parser,
streaming and keep-alive pooling, which keeps the added latency well under a millisecond.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Protocol

from aiohttp import web

from agentloop.sandbox import route_key
from agentloop.sandbox.relay import DEFAULT_UPSTREAM_TIMEOUT, Outcome, Relay

log = logging.getLogger("agentloop.sandbox.router")

COOKIE = route_key.COOKIE
SIGNADOT_KEY = route_key.ENTRY
BASELINE_LOG = "_baseline"

_ENV_ROUTES = "LOOP_ROUTER_ROUTES"
_ENV_DEFAULT = "LOOP_ROUTER_DEFAULT"
_ENV_HEADER = "LOOP_ROUTE_HEADER"
_ENV_ENTRY = "LOOP_ROUTE_KEY_ENTRY"
_ENV_SERVICE = "LOOP_ROUTER_SERVICE"
_ENV_HOST = "LOOP_ROUTER_HOST"
_DEFAULT_PORT = 8080  # the containerPort of the proxy Deployment (kubernetes.routing.ROUTER_PORT)


class Routes(Protocol):
    """Where the router sends a request: from the registry file (local) or the environment (Kubernetes)."""

    @property
    def sandboxes(self) -> Mapping[str, tuple[str, dict[str, str]]]: ...

    def refresh(self) -> bool: ...

    def resolve(self, service: str, key: str | None) -> tuple[str | None, str | None, str]: ...


class RoutingTable:
    """The registry file seen as routes; reloaded when the file changes."""

    def __init__(self, registry: Path) -> None:
        self._registry = registry
        self._signature: tuple[int, int, int] | None = None
        self.baseline: dict[str, str] = {}
        self.sandboxes: dict[str, tuple[str, dict[str, str]]] = {}

    def refresh(self) -> bool:
        """Reload if the registry changed; return whether it did."""
        try:
            stat = os.stat(self._registry)
        except FileNotFoundError:
            self.baseline, self.sandboxes, self._signature = {}, {}, None
            return True
        signature = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
        if signature == self._signature:
            return False
        data = json.loads(self._registry.read_bytes())
        baseline = data.get("baseline") or {}
        self.baseline = {name: svc["url"] for name, svc in (baseline.get("services") or {}).items()}
        self.sandboxes = {
            box["route_key"]: (name, {svc: fork["url"] for svc, fork in box.get("forks", {}).items()})
            for name, box in (data.get("sandboxes") or {}).items()
        }
        self._signature = signature
        return True

    def resolve(self, service: str, key: str | None) -> tuple[str | None, str | None, str]:
        """(sandbox name or None, upstream url or None, "fork" | "baseline")."""
        sandbox = self.sandboxes.get(key) if key else None
        if sandbox is not None and service in sandbox[1]:
            return sandbox[0], sandbox[1][service], "fork"
        return (sandbox[0] if sandbox else None), self.baseline.get(service), "baseline"


class FixedRoutes:
    """Routes given once, at start (environment mode): every known key goes to its fork, the rest to
    the default."""

    def __init__(self, routes: Mapping[str, str], default: str) -> None:
        self.sandboxes = {key: (key, {"*": url.rstrip("/")}) for key, url in routes.items()}
        self._default = default.rstrip("/")

    def refresh(self) -> bool:
        return False

    def resolve(self, service: str, key: str | None) -> tuple[str | None, str | None, str]:
        sandbox = self.sandboxes.get(key) if key else None
        if sandbox is not None:
            return sandbox[0], sandbox[1]["*"], "fork"
        return None, self._default, "baseline"


class Router:
    def __init__(self, table: Routes, requests_dir: Path | None, route_header: str,
                 route_key_entry: str = SIGNADOT_KEY, upstream_timeout: float = DEFAULT_UPSTREAM_TIMEOUT) -> None:
        self.table = table
        self._requests_dir = requests_dir
        self._route_header = route_header
        self._route_key_entry = route_key_entry
        self._logs: dict[str, IO[str]] = {}
        self._relay = Relay(upstream_timeout)

    async def start_session(self) -> None:
        await self._relay.start()

    async def close(self) -> None:
        await self._relay.close()
        for handle in self._logs.values():
            handle.close()

    def app_for(self, service: str) -> web.Application:
        app = web.Application(client_max_size=0)
        self._relay.install(app)

        async def handle(request: web.Request) -> web.StreamResponse:
            if request.path.startswith("/__loop/"):
                return self._control(request, service)
            return await self._proxy(request, service)

        app.router.add_route("*", "/{tail:.*}", handle)
        return app

    def _control(self, request: web.Request, service: str) -> web.StreamResponse:
        if request.path == "/__loop/preview":
            key = request.query.get("key", "")
            target = request.query.get("next", "/")
            if not target.startswith("/") or target.startswith("//"):
                target = "/"  # never an open redirect to another host
            response = web.HTTPFound(target)
            if key:
                response.set_cookie(COOKIE, key, path="/", httponly=True, samesite="Lax")
            else:
                response.del_cookie(COOKIE, path="/")
            return response
        if request.path == "/__loop/health":
            return web.json_response({"service": service, "pid": os.getpid()})
        return web.Response(status=404, text="loop router: unknown control path\n")

    async def _proxy(self, request: web.Request, service: str) -> web.StreamResponse:
        started = time.perf_counter()
        if self.table.refresh():
            self._close_stale_logs()
        key = route_key.route_key_of(request.headers, self._route_header, self._route_key_entry)
        sandbox, upstream_url, target = self.table.resolve(service, key)
        outcome = Outcome()
        try:
            if upstream_url is None:
                outcome.status, outcome.error = 503, "no baseline for the service"
                return web.Response(status=503, text=f"loop router: no baseline for service {service!r}\n")
            who = f"service {service!r} ({target} at {upstream_url})"
            return await self._relay.forward(request, upstream_url, who, outcome)
        finally:
            self._record(key if sandbox else None, sandbox, service, request, target, upstream_url, outcome, started)

    def _close_stale_logs(self) -> None:
        for key in [key for key in self._logs if key != BASELINE_LOG and key not in self.table.sandboxes]:
            self._logs.pop(key).close()

    def _record(
        self, key: str | None, sandbox: str | None, service: str, request: web.Request, target: str,
        url: str | None, outcome: Outcome, started: float,
    ) -> None:
        entry: dict[str, object] = {
            "time": datetime.now(UTC).isoformat(timespec="microseconds"),
            "sandbox": sandbox, "service": service, "method": request.method, "path": request.path,
            "target": target, "url": url, "status": outcome.status,
            "latency_ms": round((time.perf_counter() - started) * 1000, 3),
        }
        if outcome.error is not None:
            entry["error"] = outcome.error
        if self._requests_dir is None:
            log.info("request %s", json.dumps(entry))
            return
        # Keyed by route key, not name: a removed sandbox's log is deleted and a new sandbox of the same
        # name gets a new key, so this process never appends to a stale, unlinked file.
        name = key or BASELINE_LOG
        handle = self._logs.get(name)
        if handle is None:
            self._requests_dir.mkdir(parents=True, exist_ok=True)
            handle = self._logs[name] = (self._requests_dir / f"{name}.jsonl").open("a", encoding="utf-8")
        handle.write(json.dumps(entry) + "\n")
        handle.flush()


async def _serve(router: Router, listen: dict[str, socket.socket]) -> None:
    await router.start_session()
    runners = []
    for service, sock in listen.items():
        runner = web.AppRunner(router.app_for(service), access_log=None, handle_signals=False)
        await runner.setup()
        await web.SockSite(runner, sock).start()
        runners.append(runner)
    log.info("router serving %s", ", ".join(f"{s}=:{k.getsockname()[1]}" for s, k in listen.items()))
    stopped = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopped.set)
    await stopped.wait()
    for runner in runners:
        await runner.cleanup()
    await router.close()


class _IsoFormatter(logging.Formatter):
    """The same ISO-8601 UTC prefix as service logs, so `logs` slices the router's log too."""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return datetime.fromtimestamp(record.created, UTC).isoformat(timespec="microseconds")


def _from_environment(env: Mapping[str, str], upstream_timeout: float) -> tuple[Router, dict[str, socket.socket]]:
    """The router and its one listening socket as the environment describes them (environment mode)."""
    default = env.get(_ENV_DEFAULT, "").strip()
    if not default.startswith(("http://", "https://")):
        raise SystemExit(f"router: {_ENV_DEFAULT}={default!r}: set it to the baseline's URL, e.g. "
                         "http://reviews-loop-baseline.default.svc.cluster.local:9080")
    try:
        routes = json.loads(env.get(_ENV_ROUTES) or "{}")
    except json.JSONDecodeError as exc:
        raise SystemExit(f"router: {_ENV_ROUTES} is not JSON ({exc}); give an object of route key -> URL") from None
    if not isinstance(routes, dict) or not all(isinstance(v, str) for v in routes.values()):
        raise SystemExit(f"router: {_ENV_ROUTES} must be a JSON object of route key -> fork URL")
    port_text = env.get("PORT") or str(_DEFAULT_PORT)
    if not port_text.isdigit():
        raise SystemExit(f"router: PORT={port_text!r}: give a port number (0 picks a free one)")
    sock = socket.create_server((env.get(_ENV_HOST) or "0.0.0.0", int(port_text)))
    router = Router(FixedRoutes(routes, default), None, env.get(_ENV_HEADER) or "x-loop-route",
                    env.get(_ENV_ENTRY) or SIGNADOT_KEY, upstream_timeout)
    log.info("routes: %d route key(s), default %s", len(routes), default)
    return router, {env.get(_ENV_SERVICE) or "service": sock}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agentloop.sandbox.router",
                                     description="Without --registry: environment mode (see the module docstring).")
    parser.add_argument("--registry", type=Path, help="The local backend's registry file (the routing table).")
    parser.add_argument("--requests", type=Path, help="Directory of request logs.")
    parser.add_argument("--route-header", default="x-loop-route")
    parser.add_argument("--listen", action="append", default=[], help="SERVICE=FD of a listening socket.")
    parser.add_argument("--upstream-timeout", type=float, default=DEFAULT_UPSTREAM_TIMEOUT, metavar="SECONDS",
                        help="How long to wait for a service's response headers before answering 504.")
    args = parser.parse_args(argv)
    if not args.upstream_timeout > 0:
        parser.error(f"--upstream-timeout {args.upstream_timeout:g}: give a number of seconds above 0")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_IsoFormatter("%(asctime)s router %(levelname)s %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    if args.registry is None:
        router, listen = _from_environment(os.environ, args.upstream_timeout)
    else:
        if args.requests is None:
            parser.error("--requests is required with --registry")
        listen = {}
        for item in args.listen:
            service, _, fd = item.partition("=")
            listen[service] = socket.socket(fileno=int(fd))
        router = Router(RoutingTable(args.registry), args.requests, args.route_header,
                        upstream_timeout=args.upstream_timeout)
    asyncio.run(_serve(router, listen))
    return 0


if __name__ == "__main__":
    sys.exit(main())
