"""Diagnose: what failed, in words the next edit can act on, and each fork's log sliced to the failing
window with tracebacks and error lines first, capped and with secrets masked. Written to `diagnosis.md`."""

from __future__ import annotations

import logging
import re
from pathlib import Path

from agentloop.errors import LoopError
from agentloop.redact import Redactor
from agentloop.results import DeployResult, Diagnosis, SandboxInfo, Verdict
from agentloop.sandbox.base import SandboxBackend
from agentloop.validation.verdict import guidance

log = logging.getLogger(__name__)

_ERROR_LINE = re.compile(r"\b(error|exception|critical|fatal|panic|warn(?:ing)?|failed|refused|denied)\b", re.IGNORECASE)
_TRACEBACK_START = "Traceback (most recent call last)"
_TAIL_LINES = 30
_MESSAGE_CHARS = 600


def diagnose(
    *,
    backend: SandboxBackend | None,
    sandbox: SandboxInfo | None,
    verdict: Verdict | None,
    deploy: DeployResult | None,
    since: float,
    until: float,
    out_dir: Path,
    limit_chars: int = 8000,
    redactor: Redactor | None = None,
) -> Diagnosis:
    """What failed (`summary`) and a log excerpt per service involved, with the secrets `redactor` knows
    masked (default: the environment's); writes `out_dir/diagnosis.md`."""
    # The route key is no secret (the PR body shows it) and it is what ties baseline log lines to this run.
    redactor = redactor or Redactor.from_environment()
    raw: dict[str, str] = {}
    if deploy is not None and not deploy.ok:
        raw[deploy.service or "deploy"] = deploy.log_tail
    if backend is not None and sandbox is not None:
        baseline_services = [s for s in sandbox.service_urls if s not in sandbox.forks]
        for service in [*sandbox.forks, *baseline_services]:
            if service in raw:
                continue
            try:
                text = backend.logs(sandbox.name, service, since=since, until=until)
            except LoopError as exc:  # the sandbox may be gone (gc, Ctrl-C); say so instead of failing
                text = f"(logs unavailable: {exc})"
            if service in sandbox.forks:
                raw[service] = text
            else:
                raw[f"{service} (baseline)"] = _lines_of_this_sandbox(text, sandbox.route_key)
    per_service = max(500, limit_chars // max(1, len(raw)))
    excerpts = {
        # masked before it is cut, so that no half of a secret survives at a cut
        service: excerpt(redactor.mask(text), per_service) for service, text in raw.items() if text.strip()
    }
    summary = redactor.mask(_summary(verdict, deploy))[:limit_chars]
    diagnosis = Diagnosis(summary=summary, excerpts=excerpts)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "diagnosis.md").write_text(render_markdown(diagnosis), encoding="utf-8")
    return diagnosis


def _lines_of_this_sandbox(text: str, route_key: str) -> str:
    """A shared baseline's log narrowed to the lines that carry this sandbox's route key, and the
    warnings, errors and tracebacks of the window (other runs' may be among them: the log is shared)."""
    return "\n".join(
        line for line in text.splitlines()
        if route_key in line or _ERROR_LINE.search(line) or line.startswith((" ", "\t", _TRACEBACK_START))
    )


def excerpt(text: str, limit: int) -> str:
    """Tracebacks and error lines first, then the last lines, within `limit` characters."""
    lines = text.splitlines()
    important = _tracebacks_and_errors(lines)
    tail = lines[-_TAIL_LINES:]
    parts: list[str] = []
    if important:
        parts.append("\n".join(important))
    if tail and tail != important[-len(tail):]:
        parts.append("--- last lines ---\n" + "\n".join(tail))
    joined = "\n".join(parts)
    if len(joined) <= limit:
        return joined
    return joined[: limit - 40] + f"\n[... {len(joined) - limit + 40} characters cut ...]"


def _tracebacks_and_errors(lines: list[str]) -> list[str]:
    kept: list[str] = []
    in_traceback = False
    for line in lines:
        body = _without_stamp(line)
        if _TRACEBACK_START in body:
            in_traceback = True
            kept.append(line)
            continue
        if in_traceback:
            kept.append(line)
            # The exception line (not indented) closes the traceback.
            if body and not body[0].isspace():
                in_traceback = False
            continue
        if _ERROR_LINE.search(body):
            kept.append(line)
    return kept


def _without_stamp(line: str) -> str:
    # Log lines are prefixed with an ISO-8601 timestamp and one space.
    head, _, rest = line.partition(" ")
    return rest if re.match(r"\d{4}-\d{2}-\d{2}T", head) else line


def _summary(verdict: Verdict | None, deploy: DeployResult | None) -> str:
    lines: list[str] = []
    if deploy is not None and not deploy.ok:
        where = f" (service {deploy.service}, exit code {deploy.exit_code})" if deploy.service else ""
        lines.append(f"The deploy failed{where}: {deploy.error or 'see the log'}")
    if verdict is not None:
        lines += [f"Verdict: {reason}" for reason in verdict.reasons]
        lines += [f"Proof: {line}" for line in guidance(verdict)]
        for result in verdict.results:
            kind = "plan" if result.kind == "plan" else "suite"
            if result.ran and result.error:
                lines.append(f"- {kind} {result.name}: {result.error}\n  output tail:\n{_indent(result.output_tail[-1500:])}")
            for test in result.failed:
                step = "step" if result.kind == "plan" else "test"
                lines.append(f"- {kind} {result.name}, {step} {test.name}: {test.outcome}\n{_indent(test.message[:_MESSAGE_CHARS])}")
    return "\n".join(lines)


def _indent(text: str) -> str:
    return "\n".join("    " + line for line in text.strip().splitlines())


def render_markdown(diagnosis: Diagnosis) -> str:
    parts = ["# Diagnosis", "", diagnosis.summary or "(nothing failed)", ""]
    for service, text in diagnosis.excerpts.items():
        parts += [f"## {service} log", "", "```", text, "```", ""]
    return "\n".join(parts)
