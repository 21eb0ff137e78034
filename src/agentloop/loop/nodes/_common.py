"""Small helpers the nodes share."""

from __future__ import annotations

import time
from typing import Any

from agentloop.forge.base import Step
from agentloop.loop.context import RunContext
from agentloop.loop.state import Attempt, RunState
from agentloop.results import Usage


def current_attempt(state: RunState) -> Attempt:
    attempts = state.get("attempts") or []
    iteration = state.get("iteration", 1)
    if attempts and attempts[-1].get("iteration") == iteration:
        return attempts[-1]
    return Attempt(iteration=iteration, started_at=time.time())


def update_attempt(state: RunState, **fields: Any) -> list[Attempt]:
    """The attempts list with the current iteration's entry updated (appended when new)."""
    attempts = list(state.get("attempts") or [])
    attempt = dict(current_attempt(state))
    attempt.update(fields)
    if attempts and attempts[-1].get("iteration") == attempt["iteration"]:
        attempts[-1] = Attempt(**attempt)  # type: ignore[typeddict-item]
    else:
        attempts.append(Attempt(**attempt))  # type: ignore[typeddict-item]
    return attempts


def step_of(state: RunState, ctx: RunContext, node: str) -> Step:
    """What this node's comments and pull request carry: the same on a resumed run's retry of the node,
    so that the forge finds what the killed attempt already made."""
    return Step(ctx.run_id, node, int(state.get("iteration") or 0))


def usage_of(state: RunState) -> Usage:
    return Usage.model_validate(state.get("usage") or {})


def budget_spent(state: RunState, ctx: RunContext, usage: Usage | None = None) -> str | None:
    """Why the run must stop now (dollars, tokens, minutes), or None."""
    budget = ctx.config.agent.budget
    usage = usage or usage_of(state)
    if budget.usd is not None and usage.cost_usd >= budget.usd:
        return f"dollar budget spent: ${usage.cost_usd:.2f} of ${budget.usd:.2f}"
    if budget.tokens is not None and usage.total_tokens >= budget.tokens:
        return f"token budget spent: {usage.total_tokens} of {budget.tokens}"
    if budget.minutes is not None:
        elapsed = (time.time() - state.get("started_at", time.time())) / 60
        if elapsed >= budget.minutes:
            return f"time budget spent: {elapsed:.1f} of {budget.minutes:g} minutes"
    return None


def iterations_left(state: RunState, ctx: RunContext) -> bool:
    return state.get("iteration", 1) < ctx.config.agent.max_iterations
