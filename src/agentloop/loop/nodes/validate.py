"""validate: every suite and plan against the sandbox, compared with the baseline. The verdict, not
the model, decides whether the work is done."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from agentloop.loop.context import RunContext
from agentloop.loop.nodes._common import update_attempt
from agentloop.loop.nodes.deploy import ensure_sandbox
from agentloop.loop.state import RunState
from agentloop.results import SandboxInfo, Verdict
from agentloop.validation import run_validation


def run(state: RunState, ctx: RunContext) -> dict[str, Any]:
    sandbox = None
    update: dict[str, Any] = {}
    if ctx.has_services:
        if state.get("sandbox") is None or ctx.backend.get(ctx.run_id) is None:
            # The sandbox went away (Ctrl-C, gc) between deploy and here: make it again before testing.
            redeploy = ensure_sandbox(state, ctx)
            if not redeploy.ok:  # report it as the deploy failure it is, with the fork's log tail
                failed = Verdict(passed=False, reasons=[f"the sandbox could not be made again: {redeploy.error}"])
                deploy = redeploy.model_dump(mode="json")
                return {"deploy": deploy, "verdict": failed.model_dump(mode="json"),
                        "attempts": update_attempt(state, deploy=deploy, verdict=failed.model_dump(mode="json"))}
            if redeploy.sandbox is not None:
                update["sandbox"] = redeploy.sandbox.model_dump(mode="json")
        sandbox = SandboxInfo.model_validate(update.get("sandbox") or state["sandbox"])
    iteration = state.get("iteration", 1)
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
    dumped = verdict.model_dump(mode="json")
    ctx.emit(kind="verdict", iteration=iteration, passed=verdict.passed, reasons=verdict.reasons)
    return {**update, "verdict": dumped, "attempts": update_attempt(state, verdict=dumped)}
