"""publish: one commit on the run's branch, the evidence report as the PR body, a comment on the issue.

Safe to repeat (a resumed run): the commit is made only when the worktree has changes, and an existing
pull request for the branch is returned instead of opening a second one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from agentloop import git
from agentloop.context import RunContext
from agentloop.evidence import is_draft, render_report, write_evidence
from agentloop.records import EditResult, Issue, PullRequest
from agentloop.state import RunState

GITHUB_BODY_LIMIT = 65_536


def commit_message(state: RunState, ctx: RunContext) -> str:
    issue = Issue.model_validate(state["issue"])
    summaries = [EditResult.model_validate(a["edit"]).summary for a in state.get("attempts", []) if a.get("edit")]
    last = next((s for s in reversed(summaries) if s.strip()), "")
    return f"Fix #{issue.number}: {issue.title}\n\n{last.strip()[:2000]}\n\nValidated by loop run {ctx.run_id}.".strip()


def finish_record(state: RunState, ctx: RunContext) -> dict[str, Any]:
    """Commit, write diff.patch, evidence.json and report.md; return the evidence."""
    worktree = Path(state["worktree"])
    git.commit_all(worktree, commit_message(state, ctx))
    ctx.record.write_text("diff.patch", git.diff(worktree, state["base_commit"]))
    return write_evidence(ctx.record.dir, {**state, "head_commit": git.head(worktree)})


def open_pull_request(state: RunState, ctx: RunContext, evidence: dict[str, Any], *, draft: bool) -> PullRequest:
    issue = Issue.model_validate(state["issue"])
    existing = ctx.forge.find_pull_request(state["branch"])
    if existing is not None:
        return existing
    body = render_report(evidence, max_chars=GITHUB_BODY_LIMIT - 1000)
    return ctx.forge.publish(
        worktree=Path(state["worktree"]), branch=state["branch"], title=f"Fix #{issue.number}: {issue.title}",
        body=body, draft=draft, issue=issue,
    )


def run(state: RunState, ctx: RunContext) -> dict[str, Any]:
    evidence = finish_record(state, ctx)
    pull = open_pull_request(state, ctx, evidence, draft=is_draft(evidence))
    ctx.forge.comment(
        Issue.model_validate(state["issue"]),
        f"loop run `{ctx.run_id}` validated a fix against a sandbox: {pull.url}"
        + (" (draft: something is unproven, see the report)" if pull.draft else ""),
    )
    ctx.emit(kind="published", url=pull.url, draft=pull.draft)
    return {"pull_request": pull.model_dump(mode="json"), "status": "published"}
