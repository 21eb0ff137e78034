"""The router in environment mode, as the `routing: proxy` Deployment runs it: the real router process
(`python -m agentloop.sandbox.router`, no arguments) configured only by LOOP_ROUTER_* variables, on
loopback in front of two tiny HTTP servers standing for the baseline and a fork."""

from __future__ import annotations

import json
import os
import queue
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from agentloop.sandbox.kubernetes.routing import proxy_objects

KEY = "a1b2c3d4e5f60718"


def _named_server(name: str) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = json.dumps({"server": name, "path": self.path}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    return ThreadingHTTPServer(("127.0.0.1", 0), Handler)


@pytest.fixture
def upstreams() -> Iterator[dict[str, str]]:
    servers = {name: _named_server(name) for name in ("baseline", "fork")}
    threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in servers.values()]
    for thread in threads:
        thread.start()
    yield {name: f"http://127.0.0.1:{s.server_address[1]}" for name, s in servers.items()}
    for server in servers.values():
        server.shutdown()
        server.server_close()


class _RouterProcess:
    def __init__(self, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "agentloop.sandbox.router"], env=env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        # A thread drains stderr line by line: select() on the pipe misses lines already buffered.
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()

    def _drain(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self._queue.put(line)
        self._queue.put(None)

    def wait_for(self, pattern: str, timeout: float = 120.0) -> re.Match[str]:
        """Read the router's stderr until a line matches (bounded), returning the match."""
        for line in self.lines:
            if found := re.search(pattern, line):
                return found
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self._queue.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                break
            self.lines.append(line)
            if found := re.search(pattern, line):
                return found
        raise AssertionError(f"router never logged {pattern!r}; stderr so far:\n{''.join(self.lines)}")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(timeout=5)
        if self.proc.stderr is not None:
            self.proc.stderr.close()


@pytest.fixture
def start_router() -> Iterator[Callable[[dict[str, str]], tuple[_RouterProcess, str]]]:
    started: list[_RouterProcess] = []

    def start(variables: dict[str, str]) -> tuple[_RouterProcess, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("LOOP_")}
        env.update({"PORT": "0", "LOOP_ROUTER_HOST": "127.0.0.1", **variables})
        router = _RouterProcess(env)
        started.append(router)
        port = router.wait_for(r"router serving \S+=:(\d+)").group(1)
        return router, f"http://127.0.0.1:{port}"

    yield start
    for router in started:
        router.stop()


def test_requests_with_the_route_key_reach_the_fork_and_the_rest_the_baseline(
        upstreams: dict[str, str], start_router: Callable[[dict[str, str]], tuple[_RouterProcess, str]]) -> None:
    router, url = start_router({
        "LOOP_ROUTER_ROUTES": json.dumps({KEY: upstreams["fork"]}), "LOOP_ROUTER_DEFAULT": upstreams["baseline"],
        "LOOP_ROUTE_HEADER": "x-team-route"})

    def served_by(headers: dict[str, str]) -> str:
        response = httpx.get(f"{url}/reviews/1?x=1", headers=headers, timeout=10)
        assert response.status_code == 200
        body = response.json()
        assert body["path"] == "/reviews/1?x=1", "path and query forwarded as sent"
        return str(body["server"])

    assert served_by({"baggage": f"userId=7,sd-routing-key={KEY}"}) == "fork"
    assert served_by({"tracestate": f"sd-routing-key={KEY}"}) == "fork"
    assert served_by({"x-team-route": KEY}) == "fork"
    assert served_by({}) == "baseline"
    assert served_by({"baggage": "sd-routing-key=someone-elses"}) == "baseline"
    assert served_by({"x-loop-route": KEY}) == "baseline", "only the configured header counts"

    record = json.loads(router.wait_for(r"request (\{.*\})").group(1))
    assert {"method", "path", "status", "target"} <= set(record)


def test_the_baggage_entry_name_comes_from_the_environment(
        upstreams: dict[str, str], start_router: Callable[[dict[str, str]], tuple[_RouterProcess, str]]) -> None:
    _, url = start_router({
        "LOOP_ROUTER_ROUTES": json.dumps({KEY: upstreams["fork"]}), "LOOP_ROUTER_DEFAULT": upstreams["baseline"],
        "LOOP_ROUTE_KEY_ENTRY": "team-route"})
    assert httpx.get(url, headers={"baggage": f"team-route={KEY}"}, timeout=10).json()["server"] == "fork"
    assert httpx.get(url, headers={"baggage": f"sd-routing-key={KEY}"}, timeout=10).json()["server"] == "baseline"


def test_a_bad_environment_is_one_clear_error() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOOP_")}
    env.update({"PORT": "0", "LOOP_ROUTER_DEFAULT": "http://127.0.0.1:1", "LOOP_ROUTER_ROUTES": "{not json"})
    done = subprocess.run([sys.executable, "-m", "agentloop.sandbox.router"], check=False, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "LOOP_ROUTER_ROUTES is not JSON" in done.stderr and "Traceback" not in done.stderr


def test_the_proxy_deployment_runs_a_router_that_reads_its_own_environment(
        upstreams: dict[str, str], start_router: Callable[[dict[str, str]], tuple[_RouterProcess, str]]) -> None:
    # The Deployment `routing: proxy` applies, run as its container would run (command and env as
    # written); only the cluster DNS name of the baseline and the listening address are made loopback.
    base_service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "reviews"},
                    "spec": {"selector": {"app": "reviews"}, "ports": [{"port": 9080}]}}
    deployment = proxy_objects(base_service=base_service, namespace="default", router_image="registry.local/loop:1",
                               router_command=["python", "-m", "agentloop.sandbox.router"],
                               route_header="x-team-route", routes={KEY: upstreams["fork"]})[0]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["command"][1:] == ["-m", "agentloop.sandbox.router"]
    env = {item["name"]: item["value"] for item in container["env"]}
    env.update(LOOP_ROUTER_DEFAULT=upstreams["baseline"], PORT="0")
    _, url = start_router(env)
    assert httpx.get(url, headers={"baggage": f"sd-routing-key={KEY}"}, timeout=10).json()["server"] == "fork"
    assert httpx.get(url, headers={"x-team-route": KEY}, timeout=10).json()["server"] == "fork"
    assert httpx.get(url, timeout=10).json()["server"] == "baseline"
