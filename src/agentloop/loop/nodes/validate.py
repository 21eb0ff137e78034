"""validate: every suite and plan against the sandbox, compared with the base run. The verdict, not
the model, decides whether the work is done. Around it, the run's draft pull request and its check run
(`_home`): opened or updated before, told the verdict after."""

from __future__ import annotations

from pathlib import Path

from agentloop.loop.context import RunContext
from agentloop.loop.nodes import _home
from agentloop.loop.nodes.deploy import ensure_sandbox
from agentloop.loop.state import Attempt, RunState
from agentloop.results import Verdict
from agentloop.validation import run_validation


def run(state: RunState, ctx: RunContext) -> RunState:
    iteration = state.get("iteration", 1)
    sandbox = state.get("sandbox") if ctx.has_services else None
    update: RunState = {}
    if ctx.has_services and (sandbox is None or ctx.backend.get(ctx.run_id) is None):
        # The sandbox went away (Ctrl-C, gc) between deploy and here: make it again before testing.
        redeploy = ensure_sandbox(state, ctx)
        if not redeploy.ok:  # report it as the deploy failure it is, with the fork's log tail
            failed = Verdict(passed=False, reasons=[f"the sandbox could not be made again: {redeploy.error}"])
            return {"deploy": redeploy, "verdict": failed,
                    "attempts": [Attempt(iteration=iteration, deploy=redeploy, verdict=failed)]}
        if redeploy.sandbox is not None:
            sandbox = update["sandbox"] = redeploy.sandbox
    pull, check = _home.open_home(state, ctx)
    try:
        verdict = run_validation(
            config=ctx.config,
            worktree=Path(state["worktree"]),
            repo=ctx.repo,
            base_commit=state["base_commit"],
            sandbox=sandbox,
            backend=ctx.backend if ctx.has_services else None,
            out_dir=ctx.record.iteration_dir(iteration) / "validate",
        )
        # validation masks what it writes with the environment's secrets as it goes; the run also knows
        # `policy.secrets` and the forge's token, so its records (logs, JUnit, plan steps) get a last pass
        ctx.redactor.mask_tree(ctx.record.iteration_dir(iteration) / "validate")
    except BaseException as exc:
        _home.report_crash(state, ctx, exc, pull, check)  # else the check would stay in_progress forever
        raise
    ctx.emit(kind="verdict", iteration=iteration, passed=verdict.passed, reasons=verdict.reasons)
    pull = _home.report_iteration(state, ctx, verdict, pull, check)
    if pull is not None:
        update["pull_request"] = pull
    return {**update, "verdict": verdict, "attempts": [Attempt(iteration=iteration, verdict=verdict)]}
