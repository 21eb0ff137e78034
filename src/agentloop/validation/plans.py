"""Plans: governed, deterministic steps (`http` + `expect`, `wait`, `logs`) run against a sandbox
over real HTTP, each step one `TestCaseResult`. Every request and response is recorded, truncated
and redacted, as `<out_dir>/<plan>/<nn>-<step>.json`.

In the base run (`base_run=True`) the routing headers have the same shape but carry a route key that no
sandbox owns (`baseline_view`), so the router serves every request from the baseline, the shared services.
Every step runs even after one fails, so that the evidence shows all of them.
"""

from __future__ import annotations

import json
import logging
import re
import socket
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import jsonschema
from tenacity import RetryError, Retrying, retry_if_result, stop_after_delay, wait_fixed

from agentloop.errors import LoopError
from agentloop.plan_file import (
    Expect,
    HttpAction,
    LogsAction,
    StatusCheck,
    Step,
    WaitAction,
    load_plan,
)
from agentloop.redact import MASK, is_secret_name, redact
from agentloop.results import SandboxInfo, SuiteResult, TestCaseResult
from agentloop.sandbox.base import SandboxBackend
from agentloop.validation.comparison import baseline_view
from agentloop.validation.suites import safe_name

log = logging.getLogger(__name__)

BODY_CHARS = 4000
_MISSING = object()
_CREDENTIAL_HEADERS = {"authorization", "proxy-authorization", "cookie", "set-cookie"}
_PATH_PART = re.compile(r"\.([^.\[\]]+)|\[(\d+)\]")


class StepFailed(Exception):
    """A step's expectation did not hold; the message says what was expected and what came back."""


def run_plan(
    path: Path,
    *,
    sandbox: SandboxInfo,
    backend: SandboxBackend | None,
    out_dir: Path,
    base_run: bool = False,
    health_paths: Mapping[str, str | None] | None = None,
) -> SuiteResult:
    """Run the plan at `path`; a bad file raises ConfigError naming the file and the field.

    `health_paths` (service -> `health` path, from loop.yaml) is what `wait: {until: healthy}` polls;
    for a service without one, healthy means it accepts a TCP connection (as when loop starts it).
    """
    plan = load_plan(path)
    records = out_dir / safe_name(plan.name)
    records.mkdir(parents=True, exist_ok=True)
    secrets: list[str] = []  # the route key is not secret: the PR body shows it
    started = time.time()
    tests: list[TestCaseResult] = []
    with httpx.Client(trust_env=False, follow_redirects=False) as client:
        runner = _StepRunner(client, sandbox, backend, base_run, dict(health_paths or {}), started)
        for index, step in enumerate(plan.steps, start=1):
            tests.append(runner.run(step, records / f"{index:02d}-{safe_name(step.name)}.json", secrets))
    return SuiteResult(
        name=plan.name, kind="plan", command=str(path), exit_code=0 if all(t.outcome == "passed" for t in tests) else 1,
        duration=round(time.time() - started, 3), tests=tests,
    )


class _StepRunner:
    def __init__(
        self, client: httpx.Client, sandbox: SandboxInfo, backend: SandboxBackend | None, base_run: bool,
        health_paths: dict[str, str | None], started: float,
    ) -> None:
        self.client = client
        self.sandbox = sandbox
        self.backend = backend
        self.base_run = base_run
        self.routing_headers = dict((baseline_view(sandbox) if base_run else sandbox).routing_headers)
        self.health_paths = health_paths
        self.started = started

    def run(self, step: Step, record_path: Path, secrets: list[str]) -> TestCaseResult:
        begun = time.monotonic()
        record: dict[str, Any] = {"step": step.name, "base_run": self.base_run}
        outcome, message = "passed", ""
        try:
            if step.wait is not None:
                self._wait(step.wait, record)
            elif step.http is not None:
                self._http(step.http, step.expect, record)
            elif step.logs is not None:
                outcome = self._logs(step.logs, record)
        except StepFailed as exc:
            outcome, message = "failed", str(exc)
        except (httpx.HTTPError, LoopError) as exc:
            outcome, message = "error", f"{type(exc).__name__}: {exc}"
        record.update(outcome=outcome, message=message)
        text = redact(json.dumps(record, indent=2, default=str), extra=secrets)
        record_path.write_text(text, encoding="utf-8")
        return TestCaseResult(
            name=step.name, outcome=outcome,  # type: ignore[arg-type]
            duration=round(time.monotonic() - begun, 3), message=redact(message, extra=secrets),
        )

    def _url(self, service: str, path: str) -> str:
        base = self.sandbox.service_urls.get(service)
        if base is None:
            known = ", ".join(sorted(self.sandbox.service_urls)) or "none"
            raise LoopError(f"service {service!r} is not in sandbox {self.sandbox.name!r} (services: {known})")
        return base.rstrip("/") + "/" + path.lstrip("/")

    def _headers(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        headers = dict(self.routing_headers)
        headers.update(extra or {})
        return headers

    def _wait(self, wait: WaitAction, record: dict[str, Any]) -> None:
        health = self.health_paths.get(wait.service)
        if wait.until == "healthy" and health is None:
            self._wait_tcp(wait, record)
            return
        check = StatusCheck(path=health) if wait.until == "healthy" else wait.until
        assert isinstance(check, StatusCheck)
        url = self._url(wait.service, check.path or health or "/")
        record["request"] = {"method": "GET", "url": url, "until_status": check.status, "timeout": wait.timeout}
        attempts = Retrying(
            stop=stop_after_delay(wait.timeout), wait=wait_fixed(0.2),
            retry=retry_if_result(lambda status: status != check.status),
        )
        try:
            status = attempts(self._poll, url)
        except RetryError as exc:
            last = exc.last_attempt.result()
            raise StepFailed(
                f"{wait.service} did not answer {check.status} at {url} within {wait.timeout:g}s (last: {last})"
            ) from None
        record["response"] = {"status": status}

    def _wait_tcp(self, wait: WaitAction, record: dict[str, Any]) -> None:
        """Until the service accepts a TCP connection: the sandbox's fork itself when it forked the
        service (the router in front always accepts), else the address the plan's requests go to."""
        fork = None if self.base_run else self.sandbox.forks.get(wait.service)
        split = urlsplit(fork.url if fork is not None else self._url(wait.service, "/"))
        address = (split.hostname or "127.0.0.1", split.port or (443 if split.scheme == "https" else 80))
        record["request"] = {"tcp": f"{address[0]}:{address[1]}", "timeout": wait.timeout}
        attempts = Retrying(stop=stop_after_delay(wait.timeout), wait=wait_fixed(0.2),
                            retry=retry_if_result(lambda error: error is not None))
        try:
            attempts(_connect, address)
        except RetryError as exc:
            raise StepFailed(f"{wait.service} did not accept a TCP connection at {address[0]}:{address[1]} within "
                             f"{wait.timeout:g}s (last: {exc.last_attempt.result()})") from None
        record["response"] = {"connected": True}

    def _poll(self, url: str) -> int | str:
        try:
            return self.client.get(url, headers=self._headers(), timeout=2.0).status_code
        except httpx.HTTPError as exc:
            return type(exc).__name__

    def _http(self, action: HttpAction, expect: Expect | None, record: dict[str, Any]) -> None:
        url = self._url(action.service, action.path)
        headers = self._headers(action.headers)
        request: dict[str, Any] = {"method": action.method.upper(), "url": url, "headers": _masked(headers)}
        kwargs: dict[str, Any] = {"headers": headers, "timeout": action.timeout}
        if action.json_ is not None:
            kwargs["json"] = request["json"] = action.json_
        elif action.body is not None:
            kwargs["content"] = action.body.encode()
            request["body"] = _cut(action.body)
        record["request"] = request
        response = self.client.request(request["method"], url, **kwargs)
        record["response"] = {
            "status": response.status_code, "headers": _masked(response.headers), "body": _cut(response.text),
            "elapsed_ms": round(response.elapsed.total_seconds() * 1000, 1),
        }
        if expect is not None:
            _check(expect, response)

    def _logs(self, action: LogsAction, record: dict[str, Any]) -> str:
        if self.backend is None:
            record["log"] = ""
            return "skipped"
        name = "baseline" if self.base_run else self.sandbox.name  # the base run reads the shared services' logs
        text = self.backend.logs(name, action.service, since=self.started, until=time.time())
        record["log"] = text[-BODY_CHARS:]
        return "passed"


def _check(expect: Expect, response: httpx.Response) -> None:
    got = f"got {response.status_code}: {_cut(response.text, 300)}"
    if expect.status is not None and response.status_code != expect.status:
        raise StepFailed(f"expected status {expect.status}, {got}")
    if expect.contains is not None:
        for needle in [expect.contains] if isinstance(expect.contains, str) else expect.contains:
            if needle not in response.text:
                raise StepFailed(f"expected the body to contain {needle!r}, {got}")
    if expect.schema_ is None and not expect.json_:
        return
    try:
        document = response.json()
    except ValueError:
        raise StepFailed(f"expected a JSON body, {got}") from None
    if expect.schema_ is not None:
        try:
            jsonschema.validate(document, expect.schema_)
        except jsonschema.ValidationError as exc:
            where = "$" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in exc.absolute_path)
            raise StepFailed(f"response does not match the schema at {where}: {exc.message}") from None
        except jsonschema.SchemaError as exc:
            raise StepFailed(f"the plan's schema is not valid JSON Schema: {exc.message}") from None
    for json_path, wanted in expect.json_.items():
        actual = json_value(document, json_path)
        if actual is _MISSING:
            raise StepFailed(f"expected {json_path} = {wanted!r}, but the response has no {json_path}")
        if actual != wanted:
            raise StepFailed(f"expected {json_path} = {wanted!r}, got {actual!r}")


def json_value(document: Any, path: str) -> Any:
    """The value at a simple JSON path (`$.a.b[0].c`), or a private sentinel when it is absent."""
    if not path.startswith("$"):
        path = "$." + path
    rest = path[1:]
    node = document
    position = 0
    for match in _PATH_PART.finditer(rest):
        if match.start() != position:
            return _MISSING
        position = match.end()
        key, index = match.group(1), match.group(2)
        if key is not None and isinstance(node, dict) and key in node:
            node = node[key]
        elif index is not None and isinstance(node, list) and int(index) < len(node):
            node = node[int(index)]
        else:
            return _MISSING
    return node if position == len(rest) else _MISSING


def _connect(address: tuple[str, int]) -> str | None:
    """None once a TCP connection to `address` is made (and closed), else why not."""
    try:
        with socket.create_connection(address, timeout=2.0):
            return None
    except OSError as exc:
        return exc.strerror or type(exc).__name__


def _masked(headers: Mapping[str, str]) -> dict[str, str]:
    """Headers for the record: credentials and cookies masked whatever their shape."""
    return {
        name: MASK if name.lower() in _CREDENTIAL_HEADERS or is_secret_name(name) else value
        for name, value in headers.items()
    }


def _cut(text: str, limit: int = BODY_CHARS) -> str:
    return text if len(text) <= limit else text[:limit] + f"… [{len(text) - limit} more characters]"
