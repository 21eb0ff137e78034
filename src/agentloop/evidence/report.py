"""The pull request body (`report.md`), rendered from the evidence with `prompts/pr_body.md`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from importlib import resources
from string import Template
from typing import Any

from agentloop.redact import Redactor
from agentloop.verdict_words import Word, is_summary_line, summary_line, verdict_word

_TRUNCATED = "\n\n… (cut to fit the forge's limit; the full evidence is in the run record: `evidence.json`)\n"
_MESSAGE_CHARS = 300
# the headline's mark for each verdict word (`loop verify` reads it back)
MARKS: dict[Word, str] = {"passed": "✅ Validated", "unproven": "🟡 Unproven", "failed": "❌ Failed"}


def is_draft(evidence: Mapping[str, Any]) -> bool:
    """A draft while anything is unproven (a skipped suite, a flaky test) or validation did not pass."""
    verdict = evidence.get("verdict") or {}
    return (verdict_word(verdict) != "passed" or not verdict.get("passed") or bool(verdict.get("unproven"))
            or not verdict.get("proven") or bool(verdict.get("needs_review")))


def render_report(evidence: Mapping[str, Any], max_chars: int | None = None, *,
                  redactor: Redactor | None = None) -> str:
    verdict = evidence.get("verdict") or {}
    iterations = list(evidence.get("iterations") or [])
    template = Template((resources.files("agentloop") / "prompts" / "pr_body.md").read_text(encoding="utf-8"))
    commits = evidence.get("commits") or {}
    diff = evidence.get("diff") or {}
    usage = evidence.get("usage") or {}
    body = template.safe_substitute(
        needs_review=_needs_review(verdict.get("needs_review") or []),
        headline=headline(verdict, len(iterations)),
        # the summary line is the headline's tail, with the counts of the table below
        verdict_lines=_bullets([*_unconfined(evidence),
                                *[r for r in verdict.get("reasons", []) if not is_summary_line(r)],
                                *[f"⚠ {u}" for u in verdict.get("unproven", [])]]),
        sandbox=_sandbox(evidence.get("sandbox")),
        table=_table(verdict.get("results") or []),
        comparison=_comparison(verdict.get("comparison") or {}),
        earlier=_earlier(iterations, verdict_word(verdict)),
        logs=_logs(iterations),
        run_id=(evidence.get("run") or {}).get("id", ""),
        branch=(evidence.get("run") or {}).get("branch") or "",
        base=str(commits.get("base") or "")[:12], head=str(commits.get("head") or "")[:12],
        diff=f"{diff.get('files_changed', 0)} files, +{diff.get('insertions', 0)}/-{diff.get('deletions', 0)}",
        usage=f"{usage.get('total_tokens', 0)} tokens, ${float(usage.get('cost_usd', 0.0)):.2f}",
        loop_version=(evidence.get("versions") or {}).get("loop", ""),
        closing=_closing(evidence),
    )
    body = (redactor or Redactor.from_environment()).mask(body)
    if max_chars is not None and len(body) > max_chars:
        closing = f"\n\n{_closing(evidence)}\n"
        keep = max(0, max_chars - len(_TRUNCATED) - len(closing))
        body = body[:keep] + _TRUNCATED + closing
    return body


def _unconfined(evidence: Mapping[str, Any]) -> list[str]:
    confinement = (evidence.get("run") or {}).get("confinement")
    if not confinement or confinement.get("confined", True):
        return []
    warning = ("⚠ **Ran unconfined**: bubblewrap was not usable, and the run was allowed to execute the agent's "
               "code (tests, services) without a jail (`--allow-unconfined`). Review the change with that in mind.")
    return [warning]


def _closing(evidence: Mapping[str, Any]) -> str:
    """`Fixes #N`, which closes the issue on merge; nothing for an issue read from a file (number 0)."""
    number = (evidence.get("issue") or {}).get("number")
    return f"Fixes #{number}" if number else ""


def headline(verdict: Mapping[str, Any], iterations: int) -> str:
    """`✅ Validated after 2 iterations — passed: 1 suite; 3 passed`: the word, then the table's totals."""
    word = verdict_word(verdict)
    after = f" after {iterations} iteration{'s' if iterations != 1 else ''}" if iterations else ""
    return f"{MARKS[word]}{after} — {summary_line(word, verdict.get('results') or [])}"


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
        elif result.get("error") or counts.get("failed", 0) + counts.get("error", 0):
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


def _needs_review(changes: Sequence[str]) -> str:
    """The changes loop cannot vouch for, first thing in the body (the pull request is a draft)."""
    if not changes:
        return ""
    intro = ("**Needs review:** this change touches tests or test infrastructure, so loop does not call it proven "
             "(draft). Check each of these by hand:")
    lines = [intro, ""]
    lines += [f"- {change}" for change in changes]
    return "\n".join(lines) + "\n\n"


def _comparison(comparison: Mapping[str, Any]) -> str:
    lines = []
    for key, title in (
        ("fixed", "Fixed by this change (fail in the base run, pass in the sandbox)"),
        ("regressions", "Regressions (pass in the base run, fail in the sandbox)"),
        ("preexisting", "Already failing in the base run (not caused by this change)"),
        ("flaky", "Flaky (failed, then passed on a rerun; not blocking)"),
    ):
        names = comparison.get(key) or []
        lines.append(f"- **{title}:** " + (", ".join(f"`{n}`" for n in names) if names else "none"))
    if comparison.get("not_reproducing"):
        names = ", ".join(f"`{n}`" for n in comparison["not_reproducing"])
        lines.append(f"- **The change's tests that pass in the base run too (they prove nothing):** {names}")
    return "\n".join(lines)


def _earlier(iterations: Sequence[Mapping[str, Any]], word: Word) -> str:
    """Each earlier iteration: the files it changed and how it ended; then what the last one changed."""
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
        lines.append(f"{item.get('iteration')}. changed {_files(item)} — {failed}")
    last = iterations[-1]
    how = (f"Fixed in iteration {last.get('iteration')} by changing" if word == "passed"
           else f"Iteration {last.get('iteration')} ({word}) changed")
    lines.append(f"\n{how} {_files(last)}: {_one_line(last.get('edit_summary') or '')}")
    return "\n".join(lines) + "\n"


def _files(iteration: Mapping[str, Any]) -> str:
    return ", ".join(f"`{name}`" for name in iteration.get("changed_files") or []) or "nothing"


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
