"""Config that fits real services, on the local backend with real processes: a service that takes its
dependency's host and port as separate arguments, start order from `depends_on` (the dependency is
ready before the dependent starts, on the baseline and among a sandbox's forks), and readiness without
a `health` path (the port accepts TCP connections); plans' `wait: healthy` means the same."""

from __future__ import annotations

import socket
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from looptest import MakeRepo
from looptest import git as run_git

from agentloop import git
from agentloop.config import load_config
from agentloop.errors import DeployError
from agentloop.results import ForkInfo, SandboxInfo
from agentloop.sandbox.local import process
from agentloop.sandbox.local.backend import LocalSandboxBackend
from agentloop.validation.plans import run_plan

# Slow to accept connections (it loads its data first) and without any /healthz: ready = accepts TCP.
BACK = '''
import json, os, sys, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

VERSION = "base"
time.sleep(float(os.environ.get("START_DELAY", "0")))


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path != "/who":
            return self.send_error(404)
        body = json.dumps({"version": VERSION, "sandbox": os.environ.get("LOOP_SANDBOX")}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt, *args):
        print("back", self.command, self.path, flush=True)


ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
'''

# Takes its upstream as host and port; at start it checks the upstream answers in the version it needs
# (as a service that registers with its dependency would) and exits when it does not.
FRONT = '''
import argparse, json, os, sys, urllib.error, urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

REQUIRED = "base"
parser = argparse.ArgumentParser()
parser.add_argument("--port", type=int)
parser.add_argument("--upstream-host")
parser.add_argument("--upstream-port", type=int)
args = parser.parse_args()
UPSTREAM = f"http://{args.upstream_host}:{args.upstream_port}"


def ask(headers):
    request = urllib.request.Request(UPSTREAM + "/who", headers=headers)
    with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(request, timeout=5) as response:
        return json.loads(response.read())


key = os.environ.get("LOOP_ROUTE_KEY")
try:
    answer = ask({"x-loop-route": key} if key else {})
except OSError as exc:
    print("front: back is not answering yet:", exc, flush=True)
    sys.exit(3)
if answer["version"] != REQUIRED:
    print("front: back is version", answer["version"], "but this front needs", REQUIRED, flush=True)
    sys.exit(4)


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        headers = {h: self.headers[h] for h in ("baggage", "tracestate", "x-loop-route") if self.headers.get(h)}
        body = json.dumps({"upstream": UPSTREAM, "back": ask(headers)}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt, *args):
        pass


ThreadingHTTPServer(("127.0.0.1", args.port), Handler).serve_forever()
'''

CONFIG = {
    "path": [str(Path(sys.prefix) / "bin")],
    "services": {  # the dependent first: start order comes from depends_on, not from the file's order
        "front": {"path": "front", "depends_on": ["back"], "ready_timeout": 20,
                  "run": "python3 front/app.py --port {port} --upstream-host {services.back.host} "
                         "--upstream-port {services.back.port}"},
        "back": {"path": "back", "run": "python3 back/app.py {port}", "env": {"START_DELAY": "1.5"},
                 "ready_timeout": 20},
    },
}


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSandboxBackend]:
    root = tmp_path_factory.mktemp("pair")
    repo = root / "repo"
    for name, text in {"front/app.py": FRONT, "back/app.py": BACK, "loop.yaml": yaml.safe_dump(CONFIG)}.items():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text(text)
    run_git(repo, "init", "-q", "-b", "main")
    run_git(repo, "add", "-A")
    run_git(repo, "commit", "-q", "-m", "pair")
    backend = LocalSandboxBackend(repo, load_config(repo), root / "state")
    backend.baseline_up()  # fails when front starts before back accepts connections
    yield backend
    backend.baseline_down()
    assert process.tagged_processes(backend.registry.path) == []


@pytest.fixture
def tree(pair: LocalSandboxBackend, tmp_path: Path) -> Iterator[Callable[[str, dict[str, tuple[str, str]]], Path]]:
    made: list[Path] = []

    def make(label: str, edits: dict[str, tuple[str, str]]) -> Path:
        path = git.add_worktree(git.open_repo(pair.repo), tmp_path / label, branch=f"t/{tmp_path.name}/{label}",
                                commit="main")
        for relative, (old, new) in edits.items():
            (path / relative).write_text((path / relative).read_text().replace(old, new))
        made.append(path)
        return path

    yield make
    for path in made:
        git.remove_worktree(git.open_repo(pair.repo), path)


def test_host_and_port_placeholders_reach_the_dependency_and_its_fork(
        pair: LocalSandboxBackend, tree: Callable[..., Path]) -> None:
    status = pair.baseline_status()
    front, back = (status["services"][name]["url"] for name in ("front", "back"))  # type: ignore[index]
    with httpx.Client(trust_env=False, timeout=10) as client:
        answer = client.get(f"{front}/call").json()
        assert answer["upstream"] == back, "host and port are the router's address of back"
        assert answer["back"]["version"] == "base"
        info = pair.create("host-port", {"back": tree("v2", {"back/app.py": ('VERSION = "base"', 'VERSION = "v2"')})})
        try:
            assert client.get(f"{front}/call", headers=info.routing_headers).json()["back"] == {
                "version": "v2", "sandbox": "host-port"}
            assert client.get(f"{front}/call").json()["back"]["version"] == "base"
        finally:
            pair.remove("host-port")


def test_a_sandboxs_forks_start_in_order_and_each_sees_the_forks_before_it(
        pair: LocalSandboxBackend, tree: Callable[..., Path]) -> None:
    # The fork of front needs back's new version: it starts only once back's fork is up and routed.
    source = tree("both", {"back/app.py": ('VERSION = "base"', 'VERSION = "v2"'),
                           "front/app.py": ('REQUIRED = "base"', 'REQUIRED = "v2"')})
    info = pair.create("in-order", {"front": source, "back": source})
    try:
        assert set(info.forks) == {"front", "back"}
        with httpx.Client(trust_env=False, timeout=10) as client:
            answer = client.get(f"{info.service_urls['front']}/call", headers=info.routing_headers).json()
        assert answer["back"] == {"version": "v2", "sandbox": "in-order"}
    finally:
        pair.remove("in-order")


def test_a_plans_wait_for_a_service_without_health_is_a_tcp_connection(
        pair: LocalSandboxBackend, tree: Callable[..., Path], tmp_path: Path) -> None:
    plan = tmp_path / "plan.yaml"
    plan.write_text(yaml.safe_dump({"name": "up", "steps": [
        {"name": "back is up", "wait": {"service": "back", "timeout": 20}}]}))
    info = pair.create("plan-wait", {"back": tree("plan", {})})
    try:
        result = run_plan(plan, sandbox=info, backend=pair, out_dir=tmp_path / "out", health_paths={"back": None})
    finally:
        pair.remove("plan-wait")
    assert [t.outcome for t in result.tests] == ["passed"], result.tests
    record = yaml.safe_load((tmp_path / "out" / "up" / "01-back-is-up.json").read_text())
    assert record["request"]["tcp"] == info.forks["back"].url.removeprefix("http://"), "the fork itself, not the router"


def test_a_plans_tcp_wait_fails_when_nothing_listens(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]  # bound, never listening: connections are refused
        info = SandboxInfo(name="s", backend="local", route_key="k", service_urls={"back": "http://127.0.0.1:1"},
                           forks={"back": ForkInfo(service="back", url=f"http://127.0.0.1:{closed}", source="x")})
        plan = tmp_path / "plan.yaml"
        plan.write_text(yaml.safe_dump({"name": "up", "steps": [
            {"name": "back is up", "wait": {"service": "back", "timeout": 1}}]}))
        result = run_plan(plan, sandbox=info, backend=None, out_dir=tmp_path / "out")
    assert result.tests[0].outcome == "failed"
    assert f"did not accept a TCP connection at 127.0.0.1:{closed} within 1s" in result.tests[0].message


def test_a_service_without_health_that_never_listens_times_out_with_its_log(
        make_repo: MakeRepo, tmp_path: Path) -> None:
    repo = make_repo({"slow/app.py": "import time\nprint('loading the index...', flush=True)\ntime.sleep(600)\n"},
                     config={"services": {"slow": {"path": "slow", "run": "python3 slow/app.py", "ready_timeout": 1}}})
    backend = LocalSandboxBackend(repo, load_config(repo), tmp_path / "state")
    with pytest.raises(DeployError) as failure:
        backend.baseline_up()
    assert "(TCP) within 1s" in str(failure.value) and "no TCP connection" in str(failure.value)
    assert failure.value.process_exit_code is None and "loading the index..." in failure.value.log_tail
    assert process.tagged_processes(backend.registry.path) == [], "the service was stopped"


def test_a_dependency_that_crashes_stops_the_start_before_its_dependents(
        make_repo: MakeRepo, tmp_path: Path) -> None:
    repo = make_repo({"db/app.py": "import sys\nprint('db: no data directory', flush=True)\nsys.exit(5)\n"},
                     config={"services": {
                         "api": {"path": "api", "run": "echo api started >> api.txt; sleep 600", "depends_on": ["db"]},
                         "db": {"path": "db", "run": "python3 db/app.py"}}})
    backend = LocalSandboxBackend(repo, load_config(repo), tmp_path / "state")
    with pytest.raises(DeployError) as failure:
        backend.baseline_up()
    assert failure.value.service == "db" and failure.value.process_exit_code == 5
    assert "db: no data directory" in failure.value.log_tail
    assert not list((backend.root / "baseline").rglob("api.txt")), "api never started"
