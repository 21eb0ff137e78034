"""publish: the evidence report as the PR body (the run's draft, opened after its first deploy, marked
ready for review when proven), a comment on the issue. Each validated iteration is one commit on the
run's branch (made before validating it); publish commits what is left, if anything.

Safe to repeat (a resumed run): the commit is made only when the worktree has changes, and an existing
pull request for the branch is returned instead of opening a second one.

A change whose added lines hold a secret (a value loop knows or a high-confidence secret pattern) is
neither committed nor published: the run ends failed, naming the file and line (never the value)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from agentloop import git
from agentloop.evidence import is_draft, render_report, write_evidence
from agentloop.forge.base import DraftsPullRequests
from agentloop.loop.context import RunContext
from agentloop.loop.nodes._common import step_of, with_run_page
from agentloop.loop.state import RunState, as_json
from agentloop.redact import describe_leaks
from agentloop.results import PullRequest
from agentloop.runs.folder import RunStatus
from agentloop.verdict_words import verdict_word

GITHUB_BODY_LIMIT = 65_536


def commit_message(state: RunState, ctx: RunContext) -> str:
    """The commit of each validated iteration (made before validating it, see `_home`), or of the run."""
    issue = state["issue"]
    summaries = [a["edit"].summary for a in state.get("attempts", []) if "edit" in a]
    last = next((s for s in reversed(summaries) if s.strip()), "")
    by = f"Iteration {state.get('iteration') or 1} of loop run {ctx.run_id}" if state.get("iteration") else \
        f"Loop run {ctx.run_id}"
    return f"Fix #{issue.number}: {issue.title}\n\n{last.strip()[:2000]}\n\n{by}.".strip()


def secrets_added(state: RunState, ctx: RunContext) -> str | None:
    """Why the change must not be committed (the secrets among its added lines, by file and line), or None."""
    leaks = ctx.redactor.leaks(git.diff(git.Worktree(ctx.repo, Path(state["worktree"])), state["base_commit"]))
    return describe_leaks(leaks) if leaks else None


def finish_record(state: RunState, ctx: RunContext, *, refused: str | None = None,
                  status: RunStatus = "published") -> dict[str, Any]:
    """Commit (unless `refused` says why not), write diff.patch, evidence.json and report.md; return the
    evidence. It records `status`, the status this node ends the run with (failed when `refused`)."""
    worktree = git.Worktree(ctx.repo, Path(state["worktree"]))
    if refused is None:
        git.commit_all(worktree, commit_message(state, ctx))
    ctx.record.write_text("diff.patch", git.diff(worktree, state["base_commit"]))
    # the evidence reads the state as JSON, with what only this node knows
    final: dict[str, Any] = {**as_json(state), "head_commit": git.head(worktree), "status": status}
    if refused is not None:
        final.update(status="failed", error=refused)
    return write_evidence(ctx.record.dir, final, redactor=ctx.redactor)


def open_pull_request(state: RunState, ctx: RunContext, evidence: dict[str, Any], *, draft: bool,
                      node: str = "publish") -> PullRequest:
    """Open the pull request, or (the run's draft, opened after its first deploy) give it the evidence as
    its body and mark it ready for review unless `draft`."""
    issue = state["issue"]
    existing = ctx.forge.find_pull_request(state["branch"])
    body = with_run_page(render_report(evidence, max_chars=GITHUB_BODY_LIMIT - 1000, redactor=ctx.redactor), ctx.run_id)
    if existing is not None and not isinstance(ctx.forge, DraftsPullRequests):
        return existing
    worktree, step = git.Worktree(ctx.repo, Path(state["worktree"])), step_of(state, ctx, node)
    pull = ctx.forge.publish(worktree=worktree, branch=state["branch"], title=f"Fix #{issue.number}: {issue.title}",
                             body=body, draft=existing.draft if existing else draft, issue=issue, step=step)
    if existing is None or not isinstance(ctx.forge, DraftsPullRequests):
        return pull
    if not re.search(rf"(?i)\b(fixes|closes|resolves) #{issue.number}\b", body):
        body = f"{body.rstrip()}\n\nFixes #{issue.number}\n"
    return ctx.forge.update_pull_request(pull, body=body, ready=not draft, step=step)


def run(state: RunState, ctx: RunContext) -> RunState:
    refused = secrets_added(state, ctx)
    if refused is not None:
        finish_record(state, ctx, refused=refused)
        ctx.forge.comment(state["issue"], f"loop run `{ctx.run_id}` stopped: {refused}.",
                          step=step_of(state, ctx, "publish"))
        ctx.emit(kind="failed", reason=refused)
        return {"status": "failed", "error": refused}
    evidence = finish_record(state, ctx)
    pull = open_pull_request(state, ctx, evidence, draft=is_draft(evidence))
    word = verdict_word(evidence.get("verdict"))
    ctx.forge.comment(
        state["issue"],
        f"loop run `{ctx.run_id}` validated a fix against a sandbox (verdict: {word}): {pull.url}"
        if word == "passed" else
        f"loop run `{ctx.run_id}` published a change as a draft (verdict: {word}: nothing failed, but it is not "
        f"proven; see the report): {pull.url}",
        step=step_of(state, ctx, "publish"),
    )
    ctx.emit(kind="published", url=pull.url, draft=pull.draft)
    return {"pull_request": pull, "status": "published"}
