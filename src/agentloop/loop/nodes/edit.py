"""edit: the coding agent changes the worktree; on later iterations it is given what failed and the logs.

An edit interrupted half-way (a killed run) is redone from the worktree as it was when the node
started, so a resumed run repeats exactly one model turn and never stacks a half edit on a whole one.
"""

from __future__ import annotations

import time
from pathlib import Path

from agentloop import git
from agentloop.agent.base import EditTask
from agentloop.loop.context import RunContext
from agentloop.loop.nodes._common import budget_spent, run_deadline
from agentloop.loop.state import Attempt, RunState
from agentloop.results import Diagnosis, EditResult, Usage
from agentloop.snapshot import restore_tree, snapshot_tree


def run(state: RunState, ctx: RunContext) -> RunState:
    worktree = git.Worktree(ctx.repo, Path(state["worktree"]))
    iteration = state.get("iteration", 1)
    folder = ctx.record.iteration_dir(iteration)
    _restart_cleanly(worktree, folder / "pre-edit.tree")
    # what an interrupted attempt at this edit already spent still counts against the budget; its calls
    # do not (the replay cursor follows `calls`, and the redone edit makes them again)
    spent_before = _interrupted_spend(folder / INTERRUPTED_SPEND)
    usage_before = (state.get("usage") or Usage()) + spent_before
    diagnosis = state.get("diagnosis") or Diagnosis()
    task = EditTask(
        run_id=ctx.run_id,
        worktree=worktree.path,
        repo=ctx.repo,
        issue=state["issue"],
        iteration=iteration,
        services={name: svc.path for name, svc in ctx.config.services.items()},
        checks=[s.suite + ": " + s.run for s in ctx.config.suites] + [p.plan for p in ctx.config.plans],
        failures=diagnosis.summary if iteration > 1 else "",
        logs="\n\n".join(f"## {svc}\n{text}" for svc, text in diagnosis.excerpts.items()) if iteration > 1 else "",
        diff=ctx.redactor.mask(git.diff(worktree, state["base_commit"])) if iteration > 1 else "",
        sandbox_env=_sandbox_env(state),
        usage_so_far=usage_before,
        deadline=run_deadline(state, ctx),
    )

    def on_usage(turn_usage: Usage) -> None:
        so_far = spent_before + turn_usage.model_copy(update={"calls": 0})
        (folder / INTERRUPTED_SPEND).write_text(so_far.model_dump_json(), encoding="utf-8")
        total = usage_before + turn_usage
        ctx.emit(kind="usage", node="edit", iteration=iteration, cost_usd=total.cost_usd, tokens=total.total_tokens)

    result: EditResult = ctx.coder.edit(task, on_usage=on_usage)
    usage = usage_before + result.usage
    changed = git.changed_files(worktree, state["base_commit"])
    ctx.record.write_text(f"iterations/{iteration}/diff.patch", git.diff(worktree, state["base_commit"]))
    spent = budget_spent(state, ctx, usage)
    if result.stop_reason == "budget":
        spent = spent or result.error or "budget spent during the edit"
    elif result.stop_reason == "error":
        spent = f"the model failed: {result.error}"
    # the iteration's entry begins here: its logs are read from the end of its edit on (diagnose)
    attempt = Attempt(iteration=iteration, edit=result, changed_files=changed, started_at=time.time())
    return {"usage": usage, "attempts": [attempt], "budget_spent": spent}


INTERRUPTED_SPEND = "edit-spend.json"


def _interrupted_spend(path: Path) -> Usage:
    if not path.exists():
        return Usage()
    return Usage.model_validate_json(path.read_text(encoding="utf-8")).model_copy(update={"calls": 0})


def _restart_cleanly(worktree: git.Worktree, marker: Path) -> None:
    if marker.exists():
        restore_tree(worktree, marker.read_text(encoding="utf-8").strip())
    else:
        marker.write_text(snapshot_tree(worktree), encoding="utf-8")


def _sandbox_env(state: RunState) -> dict[str, str]:
    from agentloop.results import SandboxInfo
    from agentloop.sandbox.client import client_env

    sandbox = state.get("sandbox")
    return client_env(SandboxInfo.model_validate(sandbox)) if sandbox else {}
