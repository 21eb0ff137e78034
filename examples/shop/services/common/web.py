"""A tiny JSON-over-HTTP kit on the standard library, so the shop runs on any fresh Python 3.

Every service built on it:
- answers `GET /healthz`;
- logs one line per request (no timestamp: whoever collects stderr adds one) and full tracebacks
  for unexpected errors, all to stderr;
- hands the trace/routing headers it received (`baggage`, `tracestate`, `traceparent`,
  `x-loop-route`) to every call it makes, so a request that entered a sandbox stays in it.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

PROPAGATED_HEADERS = ("baggage", "tracestate", "traceparent", "x-loop-route")
ROUTING_KEY_ENTRY = "sd-routing-key"

Reply = tuple[int, Any]


class HttpError(Exception):
    """Raised by a handler to answer with `status` and `{"error": message}`."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Request:
    method: str
    path: str
    params: dict[str, str] = field(default_factory=dict)
    body: Any = None
    headers: Mapping[str, str] = field(default_factory=dict)

    def json_object(self) -> dict[str, Any]:
        if not isinstance(self.body, dict):
            raise HttpError(400, "expected a JSON object in the request body")
        return self.body

    def forward_headers(self) -> dict[str, str]:
        return propagated_headers(self.headers)


def propagated_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """The subset of `headers` that must travel with every downstream call."""
    wanted = {}
    for name, value in headers.items():
        if name.lower() in PROPAGATED_HEADERS:
            wanted[name.lower()] = value
    return wanted


def route_key(headers: Mapping[str, str]) -> str | None:
    """The sandbox route key a request carries, if any (for the request log line)."""
    lowered = {name.lower(): value for name, value in headers.items()}
    if lowered.get("x-loop-route"):
        return lowered["x-loop-route"]
    for header in ("baggage", "tracestate"):
        for entry in lowered.get(header, "").split(","):
            key, _, value = entry.split(";")[0].partition("=")
            if key.strip() == ROUTING_KEY_ENTRY and value.strip():
                return value.strip()
    return None


def call_json(
    method: str, url: str, body: Any = None, headers: Mapping[str, str] | None = None, timeout: float = 10.0
) -> Reply:
    """Call another service; return (status, decoded JSON). Unreachable services become a 502."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers=dict(headers or {}))
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, _decode(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, _decode(exc.read())
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise HttpError(502, f"{method} {url}: unreachable ({reason})") from None


def error_text(payload: Any) -> str:
    """The `error` of a downstream JSON error reply, whatever shape it came in."""
    if isinstance(payload, dict) and "error" in payload:
        return str(payload["error"])
    return str(payload)[:500]


def _decode(raw: bytes) -> Any:
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return {"error": raw.decode(errors="replace")[:500]}


Handler = Callable[[Request], Reply]


class Service:
    """Routes `METHOD /path/{param}` to handlers; `dispatch` works in-process, `serve` over HTTP."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.log = logging.getLogger(name)
        self._routes: list[tuple[str, re.Pattern[str], Handler]] = []
        self.route("GET", "/healthz")(lambda request: (200, {"status": "ok", "service": self.name}))

    def route(self, method: str, pattern: str) -> Callable[[Handler], Handler]:
        regex = re.compile("^" + re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", pattern) + "$")

        def register(handler: Handler) -> Handler:
            self._routes.append((method, regex, handler))
            return handler

        return register

    def dispatch(
        self, method: str, path: str, body: Any = None, headers: Mapping[str, str] | None = None
    ) -> Reply:
        path_matched = False
        for route_method, regex, handler in self._routes:
            match = regex.match(path)
            if not match:
                continue
            path_matched = True
            if route_method != method:
                continue
            request = Request(method, path, match.groupdict(), body, dict(headers or {}))
            try:
                reply: Reply = handler(request)
                return reply
            except HttpError as exc:
                return exc.status, {"error": exc.message}
            except Exception:
                self.log.exception("%s %s failed", method, path)
                return 500, {"error": f"{self.name}: internal error (see its log)"}
        if path_matched:
            return 405, {"error": f"{method} not allowed on {path}"}
        return 404, {"error": f"no route for {method} {path}"}

    def serve(self, port: int, host: str = "127.0.0.1") -> ThreadingHTTPServer:
        server = ThreadingHTTPServer((host, port), _handler_class(self))
        server.daemon_threads = True
        return server

    def main(self, argv: Sequence[str] | None = None) -> None:
        parser = argparse.ArgumentParser(prog=self.name, description=f"Run the shop's {self.name} service.")
        parser.add_argument("--port", type=int, required=True)
        parser.add_argument("--host", default="127.0.0.1")
        args = parser.parse_args(argv)
        logging.basicConfig(
            stream=sys.stderr, level=logging.INFO, format="%(levelname)s %(name)s: %(message)s"
        )
        server = self.serve(args.port, args.host)
        self.log.info("listening on http://%s:%d", args.host, server.server_address[1])
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            server.server_close()


def _handler_class(service: Service) -> type:
    class _Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _handle(self) -> None:
            path = urlsplit(self.path).path
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                status, payload = 400, {"error": "request body is not valid JSON"}
            else:
                status, payload = service.dispatch(self.command, path, body, dict(self.headers.items()))
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            key = route_key(dict(self.headers.items()))
            service.log.info("%s %s %d route=%s", self.command, path, status, key or "-")

        do_GET = do_POST = do_PUT = do_DELETE = _handle

        def log_message(self, format: str, *args: Any) -> None:
            # The default access log carries its own timestamp and duplicates our request line.
            pass

    return _Handler
