"""diagnose: each fork's logs sliced to the failing window, errors first, secrets redacted; decides
whether another iteration is in the budget."""

from __future__ import annotations

import time

from agentloop.loop.context import RunContext
from agentloop.loop.nodes import _home
from agentloop.loop.nodes._common import budget_spent, current_attempt
from agentloop.loop.state import Attempt, RunState
from agentloop.validation.logs import diagnose


def run(state: RunState, ctx: RunContext) -> RunState:
    attempt = current_attempt(state)
    deploy = state.get("deploy")
    iteration = state.get("iteration", 1)
    diagnosis = diagnose(
        backend=ctx.backend if ctx.has_services else None,
        sandbox=state.get("sandbox"),
        verdict=attempt.get("verdict"),
        deploy=deploy if deploy is not None and not deploy.ok else None,
        since=attempt.get("started_at", state.get("started_at", time.time())),
        until=time.time(),
        out_dir=ctx.record.iteration_dir(iteration),
        redactor=ctx.redactor,
    )
    _home.report_deploy_failure(state, ctx)  # the run's draft says this iteration never got to its tests
    update: RunState = {"diagnosis": diagnosis,
                        "attempts": [Attempt(iteration=iteration, diagnosis=diagnosis, ended_at=time.time())]}
    spent = budget_spent(state, ctx, between_iterations=True)
    if spent:
        update["budget_spent"] = spent
    else:
        update["iteration"] = iteration + 1
    return update
