"""Plans over real HTTP on loopback. The server plays a router with one forked service: a request
carrying the sandbox's route key reaches the fixed code, a keyless one the baseline's (buggy) code."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml
from looptest import MakeRepo
from typer.testing import CliRunner

from agentloop import git
from agentloop.cli.main import app as loop_app
from agentloop.config import LoopConfig
from agentloop.errors import ConfigError
from agentloop.results import SandboxInfo
from agentloop.validation import run_validation
from agentloop.validation.plans import run_plan

KEY = "rk-5f3a9c1e"


class _Shop(BaseHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass

    def _reply(self, status: int, payload: object) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self._reply(200, {"ok": True})

    def do_POST(self) -> None:
        order = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        fixed = self.headers.get("x-loop-route") == KEY
        total = round(9.99 * order["quantity"], 2) if fixed else "29.97"  # the baseline's bug: a string
        self._reply(201, {"order_id": "o-1", "total": total, "items": [{"sku": order["sku"]}]})


@pytest.fixture
def sandbox() -> Iterator[SandboxInfo]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Shop)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    yield SandboxInfo(name="r-plan", backend="local", route_key=KEY, router_url=url, service_urls={"gateway": url},
                      routing_headers={"x-loop-route": KEY})
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


PLAN = {
    "name": "checkout",
    "steps": [
        {"name": "gateway is up", "wait": {"service": "gateway", "until": {"status": 200, "path": "/healthz"}, "timeout": 5}},
        {"name": "place an order",
         "http": {"method": "POST", "service": "gateway", "path": "/checkout", "json": {"sku": "widget", "quantity": 3},
                  "headers": {"Authorization": "Bearer s3cr3t-t0ken-value"}},
         "expect": {"status": 201, "schema": {"type": "object", "required": ["order_id", "total"],
                                              "properties": {"total": {"type": "number"}}},
                    "json": {"$.total": 29.97, "$.items[0].sku": "widget"}, "contains": "order_id"}},
    ],
}


def _write(path: Path, plan: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(plan))
    return path


def test_a_plan_sends_the_routing_headers_and_records_every_step(sandbox: SandboxInfo, tmp_path: Path) -> None:
    result = run_plan(_write(tmp_path / "checkout.yaml", PLAN), sandbox=sandbox, backend=None, out_dir=tmp_path / "out")

    assert result.kind == "plan" and [(t.name, t.outcome) for t in result.tests] == [
        ("gateway is up", "passed"), ("place an order", "passed")]
    record = (tmp_path / "out" / "checkout" / "02-place-an-order.json").read_text()
    assert json.loads(record)["response"]["status"] == 201
    assert "s3cr3t-t0ken-value" not in record  # the Authorization header is redacted


def test_a_failing_schema_check_names_the_field_and_the_base_run_proves_the_fix(
    sandbox: SandboxInfo, tmp_path: Path
) -> None:
    on_base = run_plan(_write(tmp_path / "checkout.yaml", PLAN), sandbox=sandbox, backend=None,
                       out_dir=tmp_path / "out", base_run=True)

    step = on_base.tests[1]
    assert step.outcome == "failed"
    assert "does not match the schema at $.total" in step.message and "not of type 'number'" in step.message


def test_a_plan_step_that_only_the_sandbox_passes_proves_the_change(
    sandbox: SandboxInfo, make_repo: MakeRepo, tmp_path: Path
) -> None:
    repo = make_repo({"plans/checkout.yaml": yaml.safe_dump(PLAN)})
    config = LoopConfig.model_validate({"services": {"gateway": {"path": "gw", "run": "x"}},
                                        "validate": [{"plan": "plans/checkout.yaml"}]})

    verdict = run_validation(config=config, worktree=repo, repo=repo, base_commit=git.head(git.Worktree(repo, repo)), sandbox=sandbox, backend=None,
                             out_dir=tmp_path / "out")

    assert verdict.passed and verdict.comparison.fixed == ["checkout: place an order"], verdict.reasons
    assert (tmp_path / "out" / "base" / "plans" / "checkout" / "02-place-an-order.json").is_file()


@pytest.mark.parametrize(("plan", "field"), [
    ({"steps": [{"name": "x", "http": {"service": "gateway"}, "expect": {"staus": 200}}]}, "steps[0].expect.staus"),
    ({"steps": [{"name": "x"}]}, "steps[0]"),
    ({"name": "empty"}, "steps"),
])
def test_a_bad_plan_file_names_the_file_and_the_field(
    sandbox: SandboxInfo, tmp_path: Path, plan: object, field: str
) -> None:
    path = _write(tmp_path / "bad.yaml", plan)
    with pytest.raises(ConfigError) as caught:
        run_plan(path, sandbox=sandbox, backend=None, out_dir=tmp_path / "out")
    assert str(path) in str(caught.value) and f"`{field}`" in str(caught.value)

    cli = CliRunner().invoke(loop_app, ["plan", "run", str(path), "--sandbox", "r-plan", "--repo", str(tmp_path)])
    assert cli.exit_code == 2 and field in cli.output and "Traceback" not in cli.output


def test_loop_plan_run_needs_an_existing_sandbox(make_repo: MakeRepo, tmp_path: Path) -> None:
    repo = make_repo({"plans/checkout.yaml": yaml.safe_dump(PLAN)},
                     {"services": {"gateway": {"path": "gw", "run": "python3 -m http.server {port}"}}})
    cli = CliRunner().invoke(loop_app, ["plan", "run", str(repo / "plans/checkout.yaml"), "--sandbox", "nope", "--repo", str(repo)])
    assert cli.exit_code == 2 and "no sandbox named 'nope'" in cli.output
