"""Start and resume runs: the one entry point the CLI, the GitHub App and batch share."""

from __future__ import annotations

import json
import logging
import os
import re
import sqlite3
import threading
import time
import traceback
from collections.abc import Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from pathlib import Path
from typing import Any

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.checkpoint.sqlite import SqliteSaver
from pydantic import BaseModel, ConfigDict

from agentloop import git, owned
from agentloop.config import LoopConfig, load_config, load_config_at
from agentloop.confine import project_confinement
from agentloop.errors import IssueNotFound, LoopError, RunInterrupted, RunNotFound
from agentloop.evidence import finalize_evidence
from agentloop.forge.base import Forge, HoldsSecrets
from agentloop.forge.factory import open_forge
from agentloop.forge.local import parse_issue_file
from agentloop.loop.context import ProgressCallback, RunContext
from agentloop.loop.graph import build_graph
from agentloop.loop.nodes.intake import branch_name
from agentloop.loop.review_sandbox import keep_for_review
from agentloop.loop.state import SERDE, RunState, as_json, typed
from agentloop.paths import repo_root, runs_dir, worktrees_dir
from agentloop.redact import Redactor
from agentloop.results import ConfinementInfo, Issue, PullRequest, Usage
from agentloop.runs.folder import (
    RunFolder,
    RunStatus,
    RunSummary,
    list_runs,
    new_run_id,
    open_run,
    process_alive,
)
from agentloop.runs.store import database_url, postgres_checkpointer
from agentloop.sandbox.base import baseline_held

log = logging.getLogger(__name__)

INITIAL_STATE = "initial-state.json"
_ISSUE_REF = re.compile(r"^(?:issue-|#)?(\d+)$|/issues/(\d+)/?(?:[?#].*)?$")


class RunOutcome(BaseModel):
    model_config = ConfigDict(arbitrary_types_allowed=True)

    run_id: str
    status: RunStatus
    pull_request: PullRequest | None = None
    run_dir: Path
    message: str = ""


def parse_issue_ref(ref: str) -> int:
    """`issue-123`, `#123`, `123` or an issue URL -> 123."""
    match = _ISSUE_REF.search(ref.strip())
    if not match:
        raise IssueNotFound(
            f"issue {ref!r}: expected issue-123, #123, 123 or an issue URL (or --issue-file FILE)"
        )
    return int(match.group(1) or match.group(2))


def resolve_model(flag: str | None, config: LoopConfig) -> str:
    return flag or os.environ.get("LOOP_MODEL") or config.agent.model


def fix(
    repo: Path,
    issue: str | None,
    *,
    issue_file: Path | None = None,
    model: str | None = None,
    forge: Forge | None = None,
    review: bool = False,
    record_cassette: Path | None = None,
    max_iterations: int | None = None,
    keep_sandbox: bool = False,
    cancel: threading.Event | None = None,
    progress: ProgressCallback | None = None,
    runs_root: Path | None = None,
    manage_baseline: bool = True,
    run_id: str | None = None,
) -> RunOutcome:
    """Run the loop on one issue of the repository at `repo`, to a pull request or a failure report."""
    ctx, initial = prepare(
        repo, issue, issue_file=issue_file, model=model, forge=forge, review=review, record_cassette=record_cassette,
        max_iterations=max_iterations, keep_sandbox=keep_sandbox, cancel=cancel, progress=progress,
        runs_root=runs_root, run_id=run_id,
    )
    return _drive(ctx, initial, review=review, manage_baseline=manage_baseline)


def prepare(
    repo: Path,
    issue: str | None,
    *,
    issue_file: Path | None = None,
    model: str | None = None,
    forge: Forge | None = None,
    review: bool = False,
    record_cassette: Path | None = None,
    max_iterations: int | None = None,
    keep_sandbox: bool = False,
    cancel: threading.Event | None = None,
    progress: ProgressCallback | None = None,
    runs_root: Path | None = None,
    run_id: str | None = None,
) -> tuple[RunContext, RunState]:
    """What a run does before its graph: every check (config, git, issue, model, confinement), then its
    record, its context and its initial state. `fix` drives the graph; LangGraph Server (`agentloop.loop.studio`)
    steps through it."""
    root = repo_root(repo)
    config = load_config(root)
    if max_iterations is not None:
        config.agent.max_iterations = max_iterations
    git.ensure_clean(git.open_repo(root))
    base_commit = git.resolve_base(git.open_repo(root), config.base_branch)
    config = load_config_at(root, base_commit, config)  # validated with the base's loop.yaml, not a later one
    if max_iterations is not None:
        config.agent.max_iterations = max_iterations
    forge = forge or open_forge(root, config)
    redactor = _redactor(config, forge)
    # the issue is untrusted and may quote a secret: masked before the run records or sends any of it
    the_issue = Issue.model_validate(redactor.mask_data(_load_issue(forge, issue, issue_file).model_dump(mode="json")))
    chosen_model = resolve_model(model, config).replace("{issue}", str(the_issue.number))
    from agentloop.agent.factory import preflight_model

    # before any work: a run that cannot reach its model makes no worktree, branch, baseline or comment
    preflight_model(chosen_model)
    confinement = project_confinement(config)
    confinement.require()  # before any work: without bubblewrap nothing runs unless the user opted in

    run_id = run_id or new_run_id()
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,80}", run_id):
        raise RunNotFound(f"run id {run_id!r}: use letters, digits, '.', '_' and '-' only")
    if ((runs_root or runs_dir(root)) / run_id / "run.json").exists():
        raise RunNotFound(f"run {run_id} already exists; `loop resume {run_id}` continues it")
    record = RunFolder(runs_root or runs_dir(root), run_id, redactor=redactor)
    record.save_summary(
        RunSummary(
            id=run_id, issue=the_issue.number, issue_title=the_issue.title, repo=str(root), model=chosen_model,
            # named from the start: a run that stops before intake (the baseline failed) still says its branch
            branch=branch_name(the_issue.number, run_id),
            pid=os.getpid(), record_cassette=str(record_cassette) if record_cassette else None,
            review=review, max_iterations=max_iterations, keep_sandbox=keep_sandbox,
        )
    )
    ctx = RunContext(
        repo=root, run_id=run_id, config=config, record=record, forge=forge, model=chosen_model, redactor=redactor,
        record_cassette=record_cassette, cancel=cancel or threading.Event(), keep_sandbox=keep_sandbox,
    )
    ctx.progress = _tracking(record, progress)
    initial: RunState = {
        "run_id": run_id, "repo": str(root), "issue": the_issue, "model": chosen_model,
        "started_at": time.time(), "usage": Usage(), "status": "running",
        "attempts": [], "sandbox": None, "budget_spent": None, "pull_request": None, "base_commit": base_commit,
        "confinement": ConfinementInfo.model_validate(confinement.describe()),
    }
    # kept beside the checkpoints, so a run stopped before its first checkpoint can still be resumed
    record.write_text(INITIAL_STATE, json.dumps(as_json(initial)))
    return ctx, initial


def resume(
    repo: Path,
    run_id: str,
    *,
    forge: Forge | None = None,
    review: bool = False,
    cancel: threading.Event | None = None,
    progress: ProgressCallback | None = None,
    runs_root: Path | None = None,
    manage_baseline: bool = True,
) -> RunOutcome:
    """Continue a run from its last checkpoint: no edit lost, no second branch or pull request."""
    root = repo_root(repo)
    record = open_run(runs_root or runs_dir(root), run_id)
    summary = record.summary()
    if summary.status == "published":
        raise RunNotFound(f"run {run_id} is already published ({summary.pull_request}); nothing to resume")
    if summary.status == "running" and summary.pid not in (None, os.getpid()) and process_alive(summary.pid):
        raise RunNotFound(f"run {run_id} is still running (pid {summary.pid}); stop it first (Ctrl-C or kill)")
    config = load_config(root)
    initial_path = record.dir / INITIAL_STATE
    initial = typed(json.loads(initial_path.read_text(encoding="utf-8"))) if initial_path.exists() else None
    if initial and initial.get("base_commit"):
        config = load_config_at(root, initial["base_commit"], config)
    if summary.max_iterations is not None:
        config.agent.max_iterations = summary.max_iterations
    from agentloop.agent.factory import preflight_model

    preflight_model(summary.model)  # before the baseline starts: the model may have retired since
    forge = forge or open_forge(root, config)
    record.redactor = _redactor(config, forge)
    ctx = RunContext(
        repo=root, run_id=run_id, config=config, record=record, forge=forge, redactor=record.redactor,
        model=summary.model, cancel=cancel or threading.Event(), keep_sandbox=summary.keep_sandbox,
        record_cassette=Path(summary.record_cassette) if summary.record_cassette else None,
    )
    review = review or summary.review
    ctx.progress = _tracking(record, progress)
    record.update_summary(status="running", pid=os.getpid(), ended_at=None, message="resumed")
    return _drive(ctx, initial, review=review, manage_baseline=manage_baseline, resuming=True)


def _redactor(config: LoopConfig, forge: Forge) -> Redactor:
    """The run's secrets: the environment's, those `policy.secrets` names, and the forge's token."""
    extra: list[str] = []
    if isinstance(forge, HoldsSecrets):
        try:
            extra = list(forge.secret_values())
        except LoopError:  # no token yet: then no message can hold one either
            log.debug("the forge's token is not available to mask", exc_info=True)
    return Redactor.for_run(config, extra=extra)


def _load_issue(forge: Forge, ref: str | None, issue_file: Path | None) -> Issue:
    if issue_file is not None:
        if not issue_file.is_file():
            raise IssueNotFound(f"--issue-file {issue_file}: no such file")
        number = parse_issue_ref(ref) if ref else 0
        return parse_issue_file(issue_file, number)
    if not ref:
        raise IssueNotFound("no issue given: `loop fix 123` or `loop fix --issue-file FILE`")
    return forge.get_issue(parse_issue_ref(ref))


@contextmanager
def checkpointer(record: RunFolder) -> Iterator[BaseCheckpointSaver[Any]]:
    url = database_url()
    if url:  # shared checkpoints: a run started in a Kubernetes Job resumes anywhere
        with postgres_checkpointer(url, serde=SERDE) as saver:
            yield saver
        return
    conn = sqlite3.connect(str(record.checkpoints), check_same_thread=False)
    try:
        yield SqliteSaver(conn, serde=SERDE)  # the state's models allowed back (loop.state)
    finally:
        conn.close()


def _drive(
    ctx: RunContext, initial: RunState | None, *, review: bool, manage_baseline: bool, resuming: bool = False
) -> RunOutcome:
    # what the run starts (jailed commands, temporary worktrees) is recorded as its own before it starts;
    # what a killed process of this run left is stopped and removed first, the rest when the run ends
    with owned.owning(owned.run_owner(ctx.repo, ctx.run_id)):
        return _drive_owned(ctx, initial, review=review, manage_baseline=manage_baseline, resuming=resuming)


def _drive_owned(
    ctx: RunContext, initial: RunState | None, *, review: bool, manage_baseline: bool, resuming: bool = False
) -> RunOutcome:
    config: RunnableConfig = {
        "configurable": {"thread_id": ctx.run_id}, "recursion_limit": 10 + 8 * ctx.config.agent.max_iterations,
    }
    baseline = ExitStack()
    status: RunStatus = "error"
    message = ""
    state: RunState = {}
    try:
        if manage_baseline and ctx.has_services:
            ctx.emit(kind="node", node="baseline", event="start", iteration=0)
            started = baseline.enter_context(hold_baseline(ctx))
            ctx.emit(kind="node", node="baseline", event="end", iteration=0, outcome="started" if started else "up")
        with checkpointer(ctx.record) as saver:
            graph = build_graph(saver, review=review)
            if resuming and graph.get_state(config).values:
                initial = None  # continue from the last checkpoint
            graph.invoke(initial, config, context=ctx)
            snapshot = graph.get_state(config)
            state = typed(snapshot.values)
            if snapshot.next:
                status, message = "interrupted", f"waiting before {snapshot.next[0]}: `loop resume {ctx.run_id}` continues"
            else:
                status = state.get("status", "error")
                message = state.get("error") or ""
    except (KeyboardInterrupt, RunInterrupted):
        ctx.cancel.set()  # a node still running in one of LangGraph's worker threads stops at its next check
        status, message = "interrupted", f"stopped; `loop resume {ctx.run_id}` continues from the last step"
    except LoopError as exc:
        status, message = "error", str(exc)
    except Exception as exc:  # noqa: BLE001 -- record it, never lose the run: the checkpoint is still there to resume
        ctx.record.write_text("error.txt", traceback.format_exc())
        status, message = "error", f"internal error: {type(exc).__name__}: {exc} (details: {ctx.record.dir / 'error.txt'})"
    finally:
        kept = _cleanup(ctx, state, baseline=baseline)
        if not kept:  # the forks are gone: their logs can be rewritten with the run's known values masked
            ctx.redactor.mask_tree(ctx.record.dir / "logs")
            if status == "published":
                _remove_worktree(ctx)
    return _conclude(ctx, state, status=status, message=message)


def finish(ctx: RunContext, state: RunState, *, status: RunStatus, message: str,
           baseline: ExitStack) -> RunOutcome:
    """What a run does after its graph, for a graph driven elsewhere (LangGraph Server): stop what it
    started (`baseline` holds what `hold_baseline` entered), then record how it ended."""
    kept = _cleanup(ctx, state, baseline=baseline)
    owned.release(owned.run_owner(ctx.repo, ctx.run_id))
    if not kept:
        ctx.redactor.mask_tree(ctx.record.dir / "logs")
        if status == "published":
            _remove_worktree(ctx)
    return _conclude(ctx, state, status=status, message=message)


def _conclude(ctx: RunContext, state: RunState, *, status: RunStatus, message: str) -> RunOutcome:
    """run.json, evidence.json and the display say how the run ended."""
    message = ctx.redactor.mask(message)
    pull = state.get("pull_request")
    ended_at = time.time()
    branch = {"branch": state["branch"]} if state.get("branch") else {}
    ctx.record.update_summary(
        status=status, ended_at=ended_at, message=message, pull_request=pull.url if pull else None, **branch
    )
    _finalize_evidence(ctx, status=status, message=message, pull=pull, ended_at=ended_at)
    ctx.emit(kind="done", status=status, message=message, pull_request=pull.url if pull else None)
    return RunOutcome(run_id=ctx.run_id, status=status, pull_request=pull, run_dir=ctx.record.dir, message=message)


def _finalize_evidence(ctx: RunContext, *, status: RunStatus, message: str, pull: PullRequest | None,
                       ended_at: float) -> None:
    """evidence.json says how the run ended, even when that happened after publish or report_failure wrote it."""
    try:
        finalize_evidence(ctx.record.dir, status=status, message=message, ended_at=ended_at,
                          pull_request=pull.model_dump(mode="json") if pull else None)
    except (OSError, ValueError):  # a damaged record is for `loop verify` to name; the run's outcome stands
        log.warning("could not write the final status into %s/evidence.json", ctx.record.dir, exc_info=True)


def hold_baseline(ctx: RunContext) -> AbstractContextManager[bool]:
    """The run's hold on the baseline: one it started is stopped when the run ends, unless a sandbox is
    still on it (a kept one) or another run of the repository is alive and may need it."""
    return baseline_held(ctx.backend, stop_if=lambda: not ctx.backend.list() and not _other_runs_alive(ctx))


def _cleanup(ctx: RunContext, state: RunState, *, baseline: ExitStack) -> bool:
    """Stop what the run started; True when its sandbox (and worktree) stay: kept, or under review."""
    kept = keep_for_review(ctx, state)
    if not ctx.has_services or ctx._backend is None:
        return kept
    try:
        if not kept and ctx.backend.get(ctx.run_id) is not None:
            ctx.backend.remove(ctx.run_id)
        baseline.close()  # after the sandbox is gone: see hold_baseline
    except BaseException:  # a second Ctrl-C, or a failure: the run's outcome is still recorded; gc finishes
        log.warning("cleanup of run %s did not finish; run `loop sandbox gc`", ctx.run_id, exc_info=True)
    return kept


def _remove_worktree(ctx: RunContext) -> None:
    """A published run's worktree: its change is on the branch (the pull request), nothing reads it again."""
    path = worktrees_dir(ctx.repo) / ctx.run_id
    try:
        if path.is_symlink():
            path.unlink()  # never followed: only the link is loop's
        elif path.exists():
            git.remove_worktree(git.open_repo(ctx.repo), path)
    except (LoopError, OSError):
        log.warning("could not remove the worktree of run %s; `loop sandbox gc` does", ctx.run_id, exc_info=True)


def _other_runs_alive(ctx: RunContext) -> bool:
    """Another `loop` run of this repository still going: it may need the baseline this run started."""
    return any(
        s.id != ctx.run_id and s.status == "running" and s.pid and process_alive(s.pid)
        for s in list_runs(ctx.record.dir.parent)
    )


def _tracking(record: RunFolder, progress: ProgressCallback | None) -> ProgressCallback:
    """Keep run.json current (iterations, cost) as events arrive, then pass them on."""

    def on_event(event: dict[str, Any]) -> None:
        kind = event.get("kind")
        if kind == "node" and event.get("event") == "start":
            owned.kill_point(f"node:{event.get('node')}")  # tests: a `loop` killed as a node starts
        if kind == "usage":
            record.update_summary(cost_usd=event["cost_usd"], tokens=event["tokens"])
        elif kind == "node" and event.get("event") == "start" and event.get("node") == "edit":
            record.update_summary(iterations=event["iteration"])
        if progress is not None:
            progress(event)

    return on_event
