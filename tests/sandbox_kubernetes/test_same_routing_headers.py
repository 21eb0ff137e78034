"""Both backends hand a client the same routing headers (`SandboxInfo.routing_headers`, which the suites and the
agent send), and each routes exactly that set to the sandbox's fork: the local router (a real baseline and
fork on loopback), the Istio route the Kubernetes backend writes (evaluated as Envoy evaluates it), and the
`routing: proxy` router's reading of its Deployment's environment."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import yaml
from multidict import CIMultiDict

from agentloop.config import parse_config
from agentloop.results import SandboxInfo
from agentloop.sandbox.kubernetes.backend import KubernetesSandboxBackend
from agentloop.sandbox.local.backend import LocalSandboxBackend
from agentloop.sandbox.route_key import route_key_of

from .fake_apiserver import FakeApiServer

HEADER = "x-loop-route"  # sandbox.route_header's default, which both configs here use
ECHO = '''
import json, os, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"sandbox": os.environ.get("LOOP_SANDBOX")}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt, *args):
        pass


ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
'''


def _git(root: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=root, check=True,
                   capture_output=True)


def _same_shape(info: SandboxInfo) -> dict[str, str]:
    return {name: value.replace(info.route_key, "KEY") for name, value in info.routing_headers.items()}


def _envoy_route(vs: dict[str, Any], headers: dict[str, str]) -> str | None:
    """The name of the first http route of `vs` that takes a request with `headers`, as Envoy picks it: a
    match's regexes must match whole header values, its `withoutHeaders` must not (a missing header counts
    as empty); a route without matches takes everything."""
    given = {name.lower(): value for name, value in headers.items()}
    for route in vs["spec"]["http"]:
        for match in route.get("match") or [{}]:
            present = all(name in given and re.fullmatch(spec["regex"], given[name])
                          for name, spec in match.get("headers", {}).items())
            absent = not any(re.fullmatch(spec["regex"], given.get(name, ""))
                             for name, spec in match.get("withoutHeaders", {}).items())
            if present and absent:
                return str(route["name"]) if route.get("name") else None
    return None


def _local_sandbox(tmp_path: Path) -> tuple[LocalSandboxBackend, SandboxInfo]:
    root = tmp_path / "echo-repo"
    (root / "echo").mkdir(parents=True)
    (root / "echo" / "app.py").write_text(ECHO)
    config = {"base_branch": "main", "services": {"echo": {
        "path": "echo", "run": f"{sys.executable} echo/app.py {{port}}", "health": "/", "ready_timeout": 30}}}
    (root / "loop.yaml").write_text(yaml.safe_dump(config))
    _git(root, "init", "-q", "-b", "main")
    _git(root, "add", ".")
    _git(root, "commit", "-q", "-m", "echo")
    worktree = tmp_path / "echo-fork"
    _git(root, "worktree", "add", "-q", "-b", "fork", str(worktree))
    backend = LocalSandboxBackend(root, parse_config(config, root / "loop.yaml"), tmp_path / "echo-state")
    backend.baseline_up()
    return backend, backend.create("fix-1", {"echo": worktree})


def test_both_backends_send_the_same_headers_and_each_routes_them_to_the_fork(
        backend: Callable[..., KubernetesSandboxBackend], apiserver: FakeApiServer, repo: Path,
        tmp_path: Path) -> None:
    local, local_box = _local_sandbox(tmp_path)
    try:
        with httpx.Client(trust_env=False, timeout=60) as client:
            url = local_box.service_urls["echo"]
            assert client.get(url, headers=local_box.routing_headers).json() == {"sandbox": "fix-1"}
            assert client.get(url).json() == {"sandbox": None}, "without them: the baseline"
    finally:
        local.remove("fix-1")
        local.baseline_down()

    istio_box = backend().create("fix-1", {"reviews": repo})
    assert _same_shape(istio_box) == _same_shape(local_box) == {"baggage": "sd-routing-key=KEY", HEADER: "KEY"}
    reviews = apiserver.get("virtualservices", "reviews")
    assert reviews is not None
    assert _envoy_route(reviews, istio_box.routing_headers) == "loop-fix-1"
    assert _envoy_route(reviews, {}) is None, "without them: the default route, to the baseline"

    proxy_box = backend(routing="proxy", router_image="registry.local/agentloop:1").create("fix-2", {"ratings": repo})
    assert _same_shape(proxy_box) == _same_shape(local_box)
    router = apiserver.get("deployments", "loop-router-ratings")
    assert router is not None
    env = {e["name"]: e["value"] for e in router["spec"]["template"]["spec"]["containers"][0]["env"]}
    key = route_key_of(CIMultiDict(proxy_box.routing_headers), env["LOOP_ROUTE_HEADER"],
                       env["LOOP_ROUTE_KEY_ENTRY"])
    assert key == proxy_box.route_key and key in json.loads(env["LOOP_ROUTER_ROUTES"])
