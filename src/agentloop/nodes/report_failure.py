"""report_failure: the budget is spent. Leave the evidence of every attempt on the issue (and a draft
pull request when `forge.draft_on_failure` is set)."""

from __future__ import annotations

from typing import Any

from agentloop.context import RunContext
from agentloop.evidence import render_report
from agentloop.nodes.publish import finish_record, open_pull_request
from agentloop.records import Issue
from agentloop.state import RunState


def run(state: RunState, ctx: RunContext) -> dict[str, Any]:
    evidence = finish_record(state, ctx)
    issue = Issue.model_validate(state["issue"])
    reason = state.get("budget_spent") or "validation did not pass"
    update: dict[str, Any] = {"status": "failed", "error": reason}
    if ctx.config.forge.draft_on_failure and state.get("attempts"):
        pull = open_pull_request(state, ctx, evidence, draft=True)
        update["pull_request"] = pull.model_dump(mode="json")
    body = render_report(evidence, max_chars=20_000)
    ctx.forge.comment(issue, f"loop run `{ctx.run_id}` stopped: {reason}.\n\n{body}")
    ctx.emit(kind="failed", reason=reason)
    return update
