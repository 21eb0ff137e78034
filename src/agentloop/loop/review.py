"""Another iteration of a published run, on its reviewers' feedback: same run, thread, branch, sandbox and
pull request.

The run's checkpointed graph ended at publish. A review pass writes one state update as if `diagnose` had
just run -- the review as the diagnosis handed to the next edit, the next iteration number -- and resumes
the run: the graph goes on from `edit` (iteration N+1) through deploy (the kept sandbox is updated, not
made anew) and validate to publish, exactly like any later iteration. The review text is untrusted: it
is masked with the run's secrets before it is recorded or checkpointed, and reaches the model in the
prompt's `<untrusted>` block for what failed, as issue text does. When the pass publishes, the branch is
pushed (the pull request gets the new commit) and the pull request's body is the new evidence report.

A pass gets the run's iterations anew (`agent.max_iterations` more) and its time budget anew (counted
from the pass's start); the dollar and token budgets stay the run's whole spend.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Protocol, runtime_checkable

from langchain_core.runnables import RunnableConfig

from agentloop import git
from agentloop.config import load_config
from agentloop.errors import RunNotFound
from agentloop.evidence import render_report
from agentloop.forge.base import Forge, ReviewNote, Step
from agentloop.forge.factory import open_forge
from agentloop.forge.github import GitHubForge
from agentloop.forge.github_reviews import update_body
from agentloop.loop.context import ProgressCallback
from agentloop.loop.graph import build_graph
from agentloop.loop.nodes.publish import GITHUB_BODY_LIMIT
from agentloop.loop.runner import RunOutcome, _redactor, checkpointer, resume
from agentloop.loop.state import RunState, typed
from agentloop.paths import repo_root, runs_dir
from agentloop.results import Diagnosis, PullRequest
from agentloop.runs.folder import RunFolder, open_run, process_alive

REVIEW_FILE = "review.md"
REVIEW_INTRO = ("A reviewer of your pull request asked for changes; address every point below, then make sure "
                "the checks still pass.")


@runtime_checkable
class _UpdatesPulls(Protocol):
    def update_pull_request(self, pull: PullRequest, *, body: str, ready: bool, step: Step | None = None
                            ) -> PullRequest: ...


def review_text(notes: list[ReviewNote]) -> str:
    """What the next edit is told: each note as `file:line (author): text`."""
    lines = [REVIEW_INTRO]
    for note in notes:
        where = f"{note.path}:{note.line}" if note.path and note.line else (note.path or "the pull request")
        lines.append(f"- {where} ({note.author}): {note.body}")
    return "\n".join(lines)


def iterate_on_review(
    repo: Path,
    run_id: str,
    notes: list[ReviewNote],
    *,
    forge: Forge | None = None,
    cancel: threading.Event | None = None,
    progress: ProgressCallback | None = None,
    runs_root: Path | None = None,
    manage_baseline: bool = True,
) -> RunOutcome:
    """Run iteration N+1 of published run `run_id` on `notes`, and push it to the run's pull request."""
    root = repo_root(repo)
    record = open_run(runs_root or runs_dir(root), run_id)
    summary = record.summary()
    if summary.status == "running" and summary.pid and process_alive(summary.pid):
        raise RunNotFound(f"run {run_id} is still running (pid {summary.pid}); wait for it to end")
    config = load_config(root)
    forge = forge or open_forge(root, config)
    record.redactor = _redactor(config, forge)
    with checkpointer(record) as saver:
        graph = build_graph(saver)
        thread: RunnableConfig = {"configurable": {"thread_id": run_id}}
        state = typed(graph.get_state(thread).values)
        if state.get("pull_request") is None:
            raise RunNotFound(f"run {run_id} has no pull request; `loop resume {run_id}` continues it")
        _ensure_worktree(root, state)
        iteration = int(state.get("iteration", 1)) + 1
        text = record.redactor.mask(review_text(notes))  # untrusted, and may quote a secret: masked before anything
        record.write_text(f"iterations/{iteration}/{REVIEW_FILE}", text + "\n")
        graph.update_state(thread, {
            "diagnosis": Diagnosis(summary=text), "iteration": iteration, "status": "running",
            "budget_spent": None, "error": None, "started_at": time.time(),
        }, as_node="diagnose")
    record.event("review", "start", iteration=iteration, notes=len(notes))
    record.update_summary(status="interrupted", pid=None, message=f"review: iteration {iteration}",
                          # each review pass gets `agent.max_iterations` more: not the saved total, which
                          # already holds the earlier passes' and would grow with every review
                          max_iterations=iteration - 1 + config.agent.max_iterations)
    outcome = resume(root, run_id, forge=forge, cancel=cancel, progress=progress, runs_root=runs_root,
                     manage_baseline=manage_baseline)
    if outcome.status == "published" and outcome.pull_request is not None:
        _push(record, forge, root, state, outcome.pull_request, iteration)
    return outcome


def _ensure_worktree(repo: Path, state: RunState) -> None:
    """The run's worktree on its branch: removed once the run was published (the App removes it with its
    job), it is made again from the branch, which holds everything the run committed."""
    path = Path(state["worktree"])
    if not (path / ".git").exists():
        git.command(["worktree", "prune"], cwd=repo, check=False)
        git.command(["worktree", "add", "--force", "--quiet", str(path), state["branch"]], cwd=repo)


def _push(record: RunFolder, forge: Forge, repo: Path, state: RunState, pull: PullRequest, iteration: int) -> None:
    """The pass's commit onto the pull request's branch, and the new evidence as its body (a no-op push and
    the same body when the publish node already did it). The worktree is made again for the push when the
    run removed it (a run with no sandbox to keep), and removed again after."""
    evidence = json.loads((record.dir / "evidence.json").read_text(encoding="utf-8"))
    body = render_report(evidence, max_chars=GITHUB_BODY_LIMIT - 1000, redactor=record.redactor)
    step = Step(record.run_id, "review", iteration)
    issue, path = state["issue"], Path(state["worktree"])
    made = not (path / ".git").exists()
    _ensure_worktree(repo, state)
    try:
        pushed = forge.publish(worktree=git.Worktree(repo, path), branch=pull.branch, title=pull.title or issue.title,
                               body=body, draft=pull.draft, issue=issue, step=step)
        if isinstance(forge, _UpdatesPulls):
            forge.update_pull_request(pushed, body=body, ready=not pull.draft, step=step)
        elif isinstance(forge, GitHubForge) and pushed.number is not None:
            update_body(forge, pushed.number, f"{step.marker}\n{body}", issue.number or None)
    finally:
        if made:
            git.remove_worktree(git.open_repo(repo), path)
