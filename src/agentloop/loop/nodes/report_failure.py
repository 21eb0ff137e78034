"""report_failure: the budget is spent. Leave the evidence of every attempt on the issue (and a draft
pull request when `forge.draft_on_failure` is set or the run opened its draft after a deploy, unless the
change adds a secret: then nothing is committed or published). A draft stays a draft."""

from __future__ import annotations

from agentloop.evidence import render_report
from agentloop.loop.context import RunContext
from agentloop.loop.nodes._common import step_of
from agentloop.loop.nodes.publish import finish_record, open_pull_request, secrets_added
from agentloop.loop.state import RunState
from agentloop.verdict_words import verdict_word


def run(state: RunState, ctx: RunContext) -> RunState:
    refused = secrets_added(state, ctx)
    evidence = finish_record(state, ctx, refused=refused, status="failed")
    issue = state["issue"]
    reason = state.get("budget_spent") or "validation did not pass"
    if refused is not None:
        reason = f"{reason}; {refused}"
    update: RunState = {"status": "failed", "error": reason}
    pull = state.get("pull_request")  # the draft opened after the first deploy: it stays a draft
    if (ctx.config.forge.draft_on_failure or pull is not None) and state.get("attempts") and refused is None:
        pull = update["pull_request"] = open_pull_request(state, ctx, evidence, draft=True, node="report_failure")
    body = render_report(evidence, max_chars=20_000, redactor=ctx.redactor)
    word = verdict_word(evidence.get("verdict"))
    link = f" The draft pull request: {pull.url}" if pull is not None else ""
    ctx.forge.comment(issue, f"loop run `{ctx.run_id}` stopped (verdict: {word}): {reason}.{link}\n\n{body}",
                      step=step_of(state, ctx, "report_failure"))
    ctx.emit(kind="failed", reason=reason)
    return update
