"""diagnose: each fork's logs sliced to the failing window, errors first, secrets redacted; decides
whether another iteration is in the budget."""

from __future__ import annotations

import time
from typing import Any

from agentloop.loop.context import RunContext
from agentloop.loop.nodes._common import budget_spent, current_attempt, iterations_left, update_attempt
from agentloop.loop.state import RunState
from agentloop.results import DeployResult, SandboxInfo, Verdict
from agentloop.validation.logs import diagnose


def run(state: RunState, ctx: RunContext) -> dict[str, Any]:
    attempt = current_attempt(state)
    deploy = DeployResult.model_validate(state["deploy"]) if state.get("deploy") else None
    verdict = Verdict.model_validate(attempt["verdict"]) if attempt.get("verdict") else None
    sandbox = SandboxInfo.model_validate(state["sandbox"]) if state.get("sandbox") else None
    iteration = state.get("iteration", 1)
    diagnosis = diagnose(
        backend=ctx.backend if ctx.has_services else None,
        sandbox=sandbox,
        verdict=verdict,
        deploy=deploy if deploy is not None and not deploy.ok else None,
        since=attempt.get("started_at", state.get("started_at", time.time())),
        until=time.time(),
        out_dir=ctx.record.iteration_dir(iteration),
        redactor=ctx.redactor,
    )
    dumped = diagnosis.model_dump(mode="json")
    update: dict[str, Any] = {"diagnosis": dumped, "attempts": update_attempt(state, diagnosis=dumped, ended_at=time.time())}
    spent = budget_spent(state, ctx)
    if spent is None and not iterations_left(state, ctx):
        spent = f"iteration budget spent: {iteration} of {ctx.config.agent.max_iterations}"
    if spent:
        update["budget_spent"] = spent
    else:
        update["iteration"] = iteration + 1
    return update
