"""The agent's tools: Anthropic's text editor and bash client tools, and `http_request` to the sandbox.

Every call is answered with a tool_result; a refused or malformed call is an error result (is_error)
with the reason, so the model can correct itself and the run goes on. Every result has loop's known
secrets and high-confidence secret patterns masked (`agentloop.redact`) before the model (or the
transcript) sees it; ordinary code such as `token = "abc"` is shown as it is.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any, Literal
from urllib.parse import urljoin, urlsplit

import httpx
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agentloop.agent.editor import Editor, EditorError, EditorInput
from agentloop.agent.policy import ConfinedShell
from agentloop.redact import Redactor

logger = logging.getLogger(__name__)

EDITOR_TOOL = {"type": "text_editor_20250728", "name": "str_replace_based_edit_tool"}
BASH_TOOL = {"type": "bash_20250124", "name": "bash"}
HTTP_TOOL = {
    "name": "http_request",
    "description": (
        "Send an HTTP request to the running sandbox (the system with your change deployed). The sandbox's "
        "routing headers are added for you, so the request reaches your forked services. `url` is a path "
        "such as /orders/1 (sent to the sandbox router) or a full URL of one of the sandbox's services."
    ),
    "input_schema": {
        "type": "object",
        "properties": {
            "method": {"type": "string", "enum": ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"]},
            "url": {"type": "string"},
            "headers": {"type": "object", "additionalProperties": {"type": "string"}},
            "body": {"type": "string", "description": "Request body (send JSON as a string)."},
        },
        "required": ["method", "url"],
    },
}


class ToolOutcome(BaseModel):
    content: str
    is_error: bool = False


class _BashInput(BaseModel):
    model_config = ConfigDict(extra="ignore")
    command: str | None = None
    restart: bool = False


class _HttpInput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"]
    url: str
    headers: dict[str, str] = Field(default_factory=dict)
    body: str | None = None


def _invalid(tool: str, exc: ValidationError) -> ToolOutcome:
    problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'input'}: {e['msg']}" for e in exc.errors())
    return ToolOutcome(content=f"invalid input for {tool}: {problems}", is_error=True)


class ToolBox:
    """Runs tool calls for one edit. `sandbox_env` is the EditTask's: LOOP_SANDBOX_URL,
    LOOP_ROUTING_HEADERS (JSON) and LOOP_URL_<SERVICE>; without a sandbox there is no http_request."""

    def __init__(self, shell: ConfinedShell, editor: Editor, *, sandbox_env: Mapping[str, str],
                 secrets: Sequence[str] = (), redactor: Redactor | None = None,
                 http_timeout: float = 30.0) -> None:
        self.shell = shell
        self.editor = editor
        self._sandbox_env = dict(sandbox_env)
        self._redactor = (redactor or Redactor.from_environment()).with_values(*secrets)
        self._http_timeout = http_timeout

    @property
    def definitions(self) -> list[dict[str, Any]]:
        tools: list[dict[str, Any]] = [dict(EDITOR_TOOL), dict(BASH_TOOL)]
        if self._sandbox_env.get("LOOP_SANDBOX_URL"):
            tools.append(dict(HTTP_TOOL))
        return tools

    def run(self, name: str, tool_input: Any) -> ToolOutcome:
        if not isinstance(tool_input, dict):
            outcome = ToolOutcome(content=f"invalid input for {name}: expected a JSON object", is_error=True)
        elif name == "str_replace_based_edit_tool":
            outcome = self._editor(tool_input)
        elif name == "bash":
            outcome = self._bash(tool_input)
        elif name == "http_request" and self._sandbox_env.get("LOOP_SANDBOX_URL"):
            outcome = self._http(tool_input)
        else:
            outcome = ToolOutcome(content=f"unknown tool {name!r}", is_error=True)
        return ToolOutcome(content=self._mask(outcome.content), is_error=outcome.is_error)

    def _mask(self, text: str) -> str:
        # Known values and high-confidence patterns only: the model must see code like
        # `api_key = os.environ[...]` as it is, or its str_replace calls would never match.
        return self._redactor.mask(text)

    def _editor(self, raw: dict[str, Any]) -> ToolOutcome:
        try:
            call = EditorInput.model_validate(raw)
        except ValidationError as exc:
            return _invalid("str_replace_based_edit_tool", exc)
        try:
            return ToolOutcome(content=self.editor.run(call))
        except EditorError as exc:
            return ToolOutcome(content=str(exc), is_error=True)
        except OSError as exc:
            return ToolOutcome(content=f"{call.path}: {exc.strerror or exc}", is_error=True)

    def _bash(self, raw: dict[str, Any]) -> ToolOutcome:
        try:
            call = _BashInput.model_validate(raw)
        except ValidationError as exc:
            return _invalid("bash", exc)
        if call.restart:
            return ToolOutcome(content="shell restarted (every command runs in a fresh shell at the repository root)")
        if not call.command:
            return ToolOutcome(content="invalid input for bash: `command` is required", is_error=True)
        refusal = self.shell.rules.refusal(call.command)
        if refusal is not None:
            logger.info("refused agent command %r: %s", call.command, refusal)
            return ToolOutcome(content=f"refused: {refusal}", is_error=True)
        result = self.shell.run(call.command)
        output = result.output.replace(str(self.shell.worktree), "/repo")
        if result.exit_code not in (0, None):
            output += f"\n[exit code {result.exit_code}]"
        return ToolOutcome(content=output or "(no output)", is_error=result.timed_out)

    def _http(self, raw: dict[str, Any]) -> ToolOutcome:
        try:
            call = _HttpInput.model_validate(raw)
        except ValidationError as exc:
            return _invalid("http_request", exc)
        base = self._sandbox_env["LOOP_SANDBOX_URL"]
        url = urljoin(base.rstrip("/") + "/", call.url.lstrip("/")) if not urlsplit(call.url).scheme else call.url
        allowed = {urlsplit(v).netloc for k, v in self._sandbox_env.items()
                   if k == "LOOP_SANDBOX_URL" or k.startswith("LOOP_URL_")}
        if urlsplit(url).netloc not in allowed:
            return ToolOutcome(content=f"refused: {call.url} is not a sandbox URL; use a path or one of the "
                               "sandbox's service URLs", is_error=True)
        headers = {**call.headers, **self._routing_headers()}
        try:
            response = httpx.request(call.method, url, headers=headers, content=call.body,
                                     timeout=self._http_timeout)
        except httpx.HTTPError as exc:
            return ToolOutcome(content=f"{call.method} {url} failed: {exc}", is_error=True)
        body = response.text[: self.shell.policy.output_limit]
        return ToolOutcome(content=f"HTTP {response.status_code} {response.reason_phrase}\n"
                           f"content-type: {response.headers.get('content-type', '')}\n\n{body}")

    def _routing_headers(self) -> dict[str, str]:
        try:
            headers = json.loads(self._sandbox_env.get("LOOP_ROUTING_HEADERS") or "{}")
        except json.JSONDecodeError:
            return {}
        return {str(k): str(v) for k, v in headers.items()} if isinstance(headers, dict) else {}
