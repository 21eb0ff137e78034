"""What a sandbox's clients are given, spelled in one place for both backends: the environment variables
that say which sandbox this is and where it is reached, and the headers that route a request to it.

- `sandbox_env`: the sandbox's name and route key under loop's names and Signadot's, so code instrumented
  for Signadot runs unchanged. A fork is given these (the baseline none of them).
- `client_env`: those, plus where and how the sandbox is reached -- LOOP_SANDBOX_URL (the entry address),
  LOOP_URL_<SERVICE> (each service's stable address), LOOP_ROUTING_HEADERS (JSON of `routing_headers`).
  The test suites and the agent are given these.
- `routing_headers`: what a client sends so its request reaches the sandbox's forks. Both backends hand
  out the same set, which the local router, the `routing: proxy` router and the Istio routes all read
  (`route_key.py`).
"""

from __future__ import annotations

import json

from agentloop.redact import is_secret_name
from agentloop.results import SandboxInfo
from agentloop.sandbox import route_key as rk

# Named like secrets but not secret: the route key is shown by `ls` and sent with every routed request.
_NOT_SECRET = frozenset({"LOOP_ROUTE_KEY", "SIGNADOT_SANDBOX_ROUTING_KEY"})


def sandbox_env(sandbox: str, route_key: str) -> dict[str, str]:
    """Which sandbox this is, under loop's names and Signadot's."""
    return {"LOOP_SANDBOX": sandbox, "LOOP_ROUTE_KEY": route_key,
            "SIGNADOT_SANDBOX_NAME": sandbox, "SIGNADOT_SANDBOX_ROUTING_KEY": route_key}


def client_env(sandbox: SandboxInfo) -> dict[str, str]:
    """Everything a client of `sandbox` (a test suite, the agent's shell) is told about it."""
    env = sandbox_env(sandbox.name, sandbox.route_key)
    env["LOOP_SANDBOX_URL"] = sandbox.router_url
    env["LOOP_ROUTING_HEADERS"] = json.dumps(sandbox.routing_headers)
    for service, url in sandbox.service_urls.items():
        env[f"LOOP_URL_{service.upper().replace('-', '_')}"] = url
    return env


def routing_headers(route_key: str, route_header: str) -> dict[str, str]:
    """The W3C `baggage` entry `sd-routing-key=<key>` (which Signadot-instrumented services pass on) and the
    project's own header (`sandbox.route_header`). Not `tracestate`: without a `traceparent` a tracer
    discards it, and a client's own vendor entries there would be overwritten."""
    return {"baggage": f"{rk.ENTRY}={route_key}", route_header: route_key}


def looks_secret(name: str) -> bool:
    """An environment variable whose value a printed plan masks: secret by its name, but not the route key."""
    return name not in _NOT_SECRET and is_secret_name(name)
