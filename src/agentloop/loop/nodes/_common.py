"""Small helpers the nodes share."""

from __future__ import annotations

from agentloop.agent import budget
from agentloop.forge.base import Step
from agentloop.loop.context import RunContext
from agentloop.loop.state import Attempt, RunState
from agentloop.results import Usage
from agentloop.run_links import run_page_url


def current_attempt(state: RunState) -> Attempt:
    """The current iteration's entry of `attempts` (only its number before its edit has ended). A node
    adds to it by returning ``{"attempts": [Attempt(iteration=..., field=...)]}``: the reducer merges."""
    attempts = state.get("attempts") or []
    iteration = state.get("iteration", 1)
    if attempts and attempts[-1]["iteration"] == iteration:
        return attempts[-1]
    return Attempt(iteration=iteration)


def step_of(state: RunState, ctx: RunContext, node: str) -> Step:
    """What this node's comments and pull request carry: the same on a resumed run's retry of the node,
    so that the forge finds what the killed attempt already made."""
    return Step(ctx.run_id, node, int(state.get("iteration") or 0))


def run_deadline(state: RunState, ctx: RunContext) -> float | None:
    """When the run's minutes budget ends (None: no time budget)."""
    started = state.get("started_at")
    return budget.deadline(ctx.config.agent, started) if started is not None else None


def budget_spent(state: RunState, ctx: RunContext, usage: Usage | None = None, *,
                 between_iterations: bool = False) -> str | None:
    """Why the run must stop now, or None: `agent.budget.spent`, the check the coding agent makes between
    model calls, with the run's usage (or `usage`); `between_iterations` counts the iterations too."""
    return budget.spent(
        ctx.config.agent, usage or state.get("usage") or Usage(), deadline=run_deadline(state, ctx),
        iteration=state.get("iteration", 1) if between_iterations else None,
    )


def with_run_page(body: str, run_id: str) -> str:
    """`body` with a link to the run's page when loop serves pages (LOOP_PUBLIC_URL and a pages secret set).
    Added after masking: its token opens this run's page only, and a secret scanner would take it for a JWT."""
    url = run_page_url(run_id)
    if url is None:
        return body
    return f"{body.rstrip()}\n\n**Run page:** {url} (verdict, timeline, diffs, tests and logs)\n"
