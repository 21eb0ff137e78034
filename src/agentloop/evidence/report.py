"""The pull request body (`report.md`), rendered from the evidence with `prompts/pr_body.md`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from importlib import resources
from string import Template
from typing import Any

from agentloop.redact import redact

_TRUNCATED = "\n\n… (cut to fit the forge's limit; the full evidence is in the run record: `evidence.json`)\n"
_MESSAGE_CHARS = 300


def is_draft(evidence: Mapping[str, Any]) -> bool:
    """A draft while anything is unproven (a skipped suite, a flaky test) or validation did not pass."""
    verdict = evidence.get("verdict") or {}
    return not verdict.get("passed") or bool(verdict.get("unproven")) or not verdict.get("proven")


def render_report(evidence: Mapping[str, Any], max_chars: int | None = None) -> str:
    verdict = evidence.get("verdict") or {}
    iterations = list(evidence.get("iterations") or [])
    template = Template((resources.files("agentloop") / "prompts" / "pr_body.md").read_text(encoding="utf-8"))
    commits = evidence.get("commits") or {}
    diff = evidence.get("diff") or {}
    usage = evidence.get("usage") or {}
    body = template.safe_substitute(
        headline=_headline(verdict, len(iterations)),
        verdict_lines=_bullets([*verdict.get("reasons", [])[1:], *[f"⚠ {u}" for u in verdict.get("unproven", [])]]),
        sandbox=_sandbox(evidence.get("sandbox")),
        table=_table(verdict.get("results") or []),
        comparison=_comparison(verdict.get("comparison") or {}),
        earlier=_earlier(iterations),
        logs=_logs(iterations),
        run_id=(evidence.get("run") or {}).get("id", ""),
        base=str(commits.get("base") or "")[:12], head=str(commits.get("head") or "")[:12],
        diff=f"{diff.get('files_changed', 0)} files, +{diff.get('insertions', 0)}/-{diff.get('deletions', 0)}",
        usage=f"{usage.get('total_tokens', 0)} tokens, ${float(usage.get('cost_usd', 0.0)):.2f}",
        loop_version=(evidence.get("versions") or {}).get("loop", ""),
        closing=_closing(evidence),
    )
    body = redact(body)
    if max_chars is not None and len(body) > max_chars:
        closing = f"\n\n{_closing(evidence)}\n"
        keep = max(0, max_chars - len(_TRUNCATED) - len(closing))
        body = body[:keep] + _TRUNCATED + closing
    return body


def _closing(evidence: Mapping[str, Any]) -> str:
    """`Fixes #N`, which closes the issue on merge; nothing for an issue read from a file (number 0)."""
    number = (evidence.get("issue") or {}).get("number")
    return f"Fixes #{number}" if number else ""


def _headline(verdict: Mapping[str, Any], iterations: int) -> str:
    reasons = verdict.get("reasons") or [""]
    after = f" after {iterations} iteration{'s' if iterations != 1 else ''}" if iterations else ""
    if verdict.get("passed"):
        mark = "✅ Validated" if not verdict.get("unproven") else "🟡 Validated, with something unproven (draft)"
    else:
        mark = "❌ Not validated"
    return f"{mark}{after} — {reasons[0]}"


def _bullets(lines: Sequence[str]) -> str:
    return "\n".join(f"- {line}" for line in lines) or "- (no further notes)"


def _sandbox(sandbox: Mapping[str, Any] | None) -> str:
    if not sandbox:
        return "none (this repository has no services; only suites that need none ran)"
    link = sandbox.get("link")
    forks = ", ".join(sandbox.get("forks") or {}) or "none"
    name = f"[{sandbox.get('name')}]({link})" if link else f"`{sandbox.get('name')}`"
    return f"{name} on `{sandbox.get('backend')}` · route key `{sandbox.get('route_key')}` · forks: {forks}"


def _table(results: Sequence[Mapping[str, Any]]) -> str:
    if not results:
        return "Nothing ran."
    rows = ["| | suite / plan | passed | failed | skipped | flaky | time |", "|---|---|---:|---:|---:|---:|---:|"]
    for result in results:
        counts = result.get("counts") or {}
        if not result.get("ran", True):
            mark = "⏭"
        elif result.get("error") or result.get("failures"):
            mark = "❌"
        else:
            mark = "✅"
        rows.append(
            f"| {mark} | {result.get('kind', 'suite')} `{result.get('name')}` | {counts.get('passed', 0)} | "
            f"{counts.get('failed', 0) + counts.get('error', 0)} | {counts.get('skipped', 0)} | "
            f"{counts.get('flaky', 0)} | {float(result.get('duration') or 0):.1f}s |"
        )
    failures = [
        f"- `{result.get('name')}` · {failure['name']}: {_one_line(failure.get('message', ''))}"
        for result in results for failure in result.get("failures") or []
    ]
    errors = [f"- `{r.get('name')}`: {r.get('error')}" for r in results if r.get("error")]
    extra = "\n".join(errors + failures)
    return "\n".join(rows) + (f"\n\n{extra}" if extra else "")


def _comparison(comparison: Mapping[str, Any]) -> str:
    lines = []
    for key, title in (
        ("fixed", "Fixed (fail on the baseline, pass in the sandbox)"),
        ("regressions", "Regressions (pass on the baseline, fail in the sandbox)"),
        ("preexisting", "Already failing on the baseline (not caused by this change)"),
        ("flaky", "Flaky (failed, then passed on a rerun; not blocking)"),
    ):
        names = comparison.get(key) or []
        lines.append(f"- **{title}:** " + (", ".join(f"`{n}`" for n in names) if names else "none"))
    return "\n".join(lines)


def _earlier(iterations: Sequence[Mapping[str, Any]]) -> str:
    if len(iterations) < 2:
        return ""
    lines = ["", "### Earlier iterations", ""]
    for item in iterations[:-1]:
        deploy = item.get("deploy") or {}
        verdict = item.get("verdict") or {}
        if deploy and not deploy.get("ok", True):
            failed = f"deploy failed ({deploy.get('service') or 'sandbox'}): {_one_line(deploy.get('error') or '')}"
        else:
            failed = _one_line("; ".join((verdict.get("reasons") or ["not validated"])[:2]))
        lines.append(f"{item.get('iteration')}. {failed}")
    fix = iterations[-1]
    changed = ", ".join(f"`{name}`" for name in fix.get("changed_files") or []) or "the worktree"
    lines.append(f"\nFixed in iteration {fix.get('iteration')} by changing {changed}: {_one_line(fix.get('edit_summary') or '')}")
    return "\n".join(lines) + "\n"


def _logs(iterations: Sequence[Mapping[str, Any]]) -> str:
    excerpts = [
        (item.get("iteration"), service, text)
        for item in iterations for service, text in (item.get("log_excerpts") or {}).items()
    ]
    if not excerpts:
        return ""
    parts = ["", "### Log excerpts", ""]
    for iteration, service, text in excerpts:
        parts += [f"<details><summary>iteration {iteration}: {service}</summary>", "", "```", str(text).replace("```", "ʼʼʼ"), "```", "</details>", ""]
    return "\n".join(parts)


def _one_line(text: str) -> str:
    flat = " ".join(str(text).split())
    return flat if len(flat) <= _MESSAGE_CHARS else flat[:_MESSAGE_CHARS] + "…"
