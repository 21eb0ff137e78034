"""The pages' HTML, as plain strings. Everything a run recorded is untrusted (issue text, diffs, test
names, logs, messages): every such value goes through `_e` (html.escape, quotes included), and the
pages carry no script at all (the Content-Security-Policy forbids one)."""

from __future__ import annotations

import time
from html import escape
from typing import Any
from urllib.parse import quote

from agentloop.pages.data import Iteration, RunView
from agentloop.pages.preview import SandboxState
from agentloop.pages.timeline import CATEGORIES, build_timeline, timeline_svg
from agentloop.runs.folder import RunSummary

_STYLE = """body{font-family:system-ui,sans-serif;margin:1.5em;max-width:1100px;color:#222}
table{border-collapse:collapse}td,th{padding:.2em .6em;border-bottom:1px solid #ddd;text-align:left}
pre{background:#f6f6f6;padding:.6em;overflow:auto;max-height:30em;white-space:pre-wrap}
.verdict{font-size:1.3em;font-weight:bold}.published,.passed{color:#2f8f46}.failed,.error{color:#c0504d}
.interrupted,.running,.unproven{color:#b8860b}.add{color:#2f8f46}.del{color:#c0504d}
form{display:inline}button{font-size:1em;padding:.3em 1em;margin-right:.5em}
.legend span{display:inline-block;width:.8em;height:.8em;margin:0 .3em 0 1em}"""


def _e(value: Any) -> str:
    return escape(str(value), quote=True)


def _when(epoch: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(epoch)) + " UTC" if epoch else "-"


def page(title: str, body: str, *, refresh: bool = False) -> str:
    meta = '<meta http-equiv="refresh" content="3">' if refresh else ""
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8">{meta}<title>{_e(title)}</title>'
            f"<style>{_STYLE}</style></head><body>{body}</body></html>")


def _with_token(path: str, token: str | None) -> str:
    return f"{path}?token={quote(token, safe='')}" if token else path


def _run_row(s: RunSummary, base: str, token: str | None) -> str:
    link = _with_token(f"{base}/runs/{quote(s.id, safe='')}", token)
    return (f'<tr class="run"><td><a href="{_e(link)}">{_e(s.id)}</a></td><td>#{_e(s.issue)} {_e(s.issue_title)}</td>'
            f'<td class="{_e(s.status)}">{_e(s.status)}</td><td>{_e(s.iterations)}</td>'
            f"<td>{_e(_when(s.started_at))}</td><td>{s.duration:.0f}s</td><td>${s.cost_usd:.2f}</td></tr>")


def runs_list(runs: list[RunSummary], base: str, token: str | None) -> str:
    rows = "".join(_run_row(s, base, token) for s in runs)
    table = (f"<table><tr><th>run</th><th>issue</th><th>status</th><th>iterations</th><th>started</th>"
             f"<th>duration</th><th>cost</th></tr>{rows}</table>") if runs else (
        "<p>No runs yet: <code>loop fix ISSUE</code> starts one.</p>")
    return page("loop runs", f"<h1>Runs</h1>{table}", refresh=any(s.status == "running" for s in runs))


def _diff(text: str) -> str:
    if not text:
        return "<p>(no diff recorded)</p>"
    lines = []
    for line in text.splitlines():
        kind = "add" if line.startswith("+") and not line.startswith("+++") else (
            "del" if line.startswith("-") and not line.startswith("---") else "")
        lines.append(f'<span class="{kind}">{_e(line)}</span>' if kind else _e(line))
    return f'<pre class="diff">{chr(10).join(lines)}</pre>'


def _tests(results: list[dict[str, Any]]) -> str:
    rows = []
    for suite in results:
        for test in suite.get("tests") or []:
            outcome = str(test.get("outcome", ""))
            rows.append(f'<tr class="test"><td>{_e(suite.get("name", ""))}</td><td>{_e(test.get("name", ""))}</td>'
                        f'<td class="{_e(outcome)}">{_e(outcome)}</td><td>{_e(test.get("duration", ""))}</td></tr>')
        if suite.get("error"):
            rows.append(f'<tr><td>{_e(suite.get("name", ""))}</td><td colspan="3">error: {_e(suite["error"])}</td></tr>')
    if not rows:
        return "<p>(no test results recorded)</p>"
    return f"<table><tr><th>suite</th><th>test</th><th>outcome</th><th>seconds</th></tr>{''.join(rows)}</table>"


def _logs(iteration: Iteration) -> str:
    parts = [f"<h4>{_e(s.get('name', ''))} output (tail)</h4><pre>{_e(s['output_tail'])}</pre>"
             for s in iteration.results if s.get("output_tail")]
    if iteration.diagnosis:
        parts.append(f"<h4>diagnosis and log excerpts</h4><pre>{_e(iteration.diagnosis)}</pre>")
    return "".join(parts)


def _iteration(iteration: Iteration) -> str:
    reasons = "".join(f"<li>{_e(r)}</li>" for r in iteration.reasons)
    return (f'<section class="iteration" id="iteration-{iteration.number}"><h3>Iteration {iteration.number}'
            f' <span class="{_e(iteration.outcome)}">{_e(iteration.outcome or "not validated")}</span></h3>'
            f"<ul>{reasons}</ul><h4>diff</h4>{_diff(iteration.diff)}<h4>tests</h4>{_tests(iteration.results)}"
            f"{_logs(iteration)}</section>")


def _evidence(view: RunView) -> str:
    if view.evidence is None:
        return f"<h2>Evidence</h2><p>{_e(view.verify_error or 'none recorded')}</p>"
    verdict = view.evidence.get("verdict") or {}
    word = str(verdict.get("word", "unknown"))
    reasons = "".join(f"<li>{_e(r)}</li>" for r in verdict.get("reasons") or [])
    if view.verification is None:
        status = f'<p class="unproven">not verified: {_e(view.verify_error)}</p>'
    elif view.verification:
        items = "".join(f"<li>{_e(d)}</li>" for d in view.verification)
        status = f'<p class="failed verification">✗ the record differs from its evidence:</p><ul>{items}</ul>'
    else:
        status = ('<p class="passed verification">✓ verified: every artifact matches its hash, the report\'s '
                  "numbers match the evidence, and the head commit matches the diff</p>")
    artifacts = len(view.evidence.get("artifacts") or [])
    return (f'<h2>Evidence</h2><p>verdict <b class="{_e(word)}">{_e(word)}</b>, {artifacts} artifacts</p>'
            f"<ul>{reasons}</ul>{status}")


def _review(view: RunView, action_token: str | None, base: str) -> str:
    if view.approval is not None:
        answer = str(view.approval.get("answer", ""))
        if answer == "approve":
            state = "published" if view.summary.status == "published" else (
                "publishing..." if view.summary.status in ("running", "interrupted") else view.summary.status)
            return f'<p class="review approved">Approved by {_e(view.approval.get("by", ""))}: {_e(state)}</p>'
        return f'<p class="review rejected">Rejected by {_e(view.approval.get("by", ""))}: not published</p>'
    if not view.awaiting_review or action_token is None:
        return ""
    target = f"{base}/runs/{quote(view.summary.id, safe='')}"
    hidden = f'<input type="hidden" name="token" value="{_e(action_token)}">'
    return ('<section class="review"><h2>Waiting for your review</h2><p>The change passed validation; it is '
            "published only when approved.</p>"
            f'<form method="post" action="{_e(target)}/approve">{hidden}<button name="answer" value="approve">'
            "Approve and publish</button></form>"
            f'<form method="post" action="{_e(target)}/reject">{hidden}<button name="answer" value="reject">'
            "Reject</button></form></section>")


def _sandbox(sandbox: SandboxState | None, base: str, run_id: str, token: str | None) -> str:
    if sandbox is None:
        return ""
    info = sandbox.info
    if info is None:
        text = _e(sandbox.reason) if sandbox.state == "none" else f"sandbox: <b>{_e(sandbox.state)}</b> ({_e(sandbox.reason)})"
        return f'<p class="sandbox {_e(sandbox.state)}">{text}</p>'
    run_base = f"{base}/runs/{quote(run_id, safe='')}/preview"
    previews = " ".join(f'<a class="preview" href="{_e(_with_token(f"{run_base}/{quote(s, safe=str())}/", token))}">'
                        f"preview {_e(s)}</a>" for s in info.forks)
    return (f'<p class="sandbox up">sandbox: <b>up</b> until {_e(_when(info.expires_at))} · forks '
            f"{_e(', '.join(info.forks) or '-')} · route key <code>{_e(info.route_key)}</code></p>"
            + (f"<p>{previews}</p>" if previews else ""))


def run_page(view: RunView, base: str, token: str | None, action_token: str | None,
             sandbox: SandboxState | None = None) -> str:
    s = view.summary
    timeline = build_timeline(view.run_dir, view.events)
    legend = "".join(f'<span style="background:{colour}"></span>{_e(name)}' for name, colour in CATEGORIES.items()
                     if timeline and name in timeline.totals)
    chart = (f'<h2>Where the time went</h2>{timeline_svg(timeline)}<p class="legend">{legend}</p>'
             if timeline and timeline.segments else "<h2>Where the time went</h2><p>(no timed steps yet)</p>")
    pull = (f'<p>pull request: <a href="{_e(s.pull_request)}">{_e(s.pull_request)}</a></p>'
            if s.pull_request and s.pull_request.startswith(("https://", "http://")) else
            (f"<p>pull request: {_e(s.pull_request)}</p>" if s.pull_request else ""))
    body = (f'<p><a href="{_e(_with_token(base + "/", token))}">all runs</a></p>'
            f"<h1>Run {_e(s.id)}</h1><p>issue #{_e(s.issue)}: <b class=\"issue-title\">{_e(s.issue_title)}</b></p>"
            f'<p class="verdict {_e(s.status)}">{_e(s.status)}</p><p class="message">{_e(s.message)}</p>'
            f"{pull}{_sandbox(sandbox, base, s.id, token)}<p>branch {_e(s.branch or '-')} · model {_e(s.model)} · {s.iterations} iterations · "
            f"${s.cost_usd:.2f} · {s.tokens} tokens · started {_e(_when(s.started_at))}</p>"
            f"{_review(view, action_token, base)}{chart}{_evidence(view)}<h2>Iterations</h2>"
            + "".join(_iteration(i) for i in view.iterations))
    busy = s.status == "running" or (view.approval is not None and view.approval.get("answer") == "approve"
                                     and s.status not in ("published", "failed", "error"))
    return page(f"loop run {s.id}", body, refresh=busy)


def refusal(reason: str) -> str:
    return page("not allowed", f"<h1>Not allowed</h1><p>{_e(reason)}</p>")
