"""The run's budget, checked in one place: `agent.budget` (dollars, tokens, minutes) and `agent.max_iterations`.

The coding agent checks it between model calls (`agent.coder`), the engine after each edit and before
another iteration (`loop.nodes`); both call `spent`, so a budget reads the same wherever it ran out: one
order (dollars, tokens, minutes, iterations), one wording, each message naming its config field. The
time message names the budget, not the minutes elapsed, so that it does not depend on when it is read.
"""

from __future__ import annotations

import time

from agentloop.config import AgentConfig
from agentloop.results import Usage


def deadline(agent: AgentConfig, started_at: float) -> float | None:
    """Epoch seconds when the minutes budget of a run started at `started_at` ends (None: no time budget)."""
    minutes = agent.budget.minutes
    return started_at + minutes * 60 if minutes is not None else None


def spent(agent: AgentConfig, usage: Usage, *, deadline: float | None, iteration: int | None = None) -> str | None:
    """Why the run must stop now, or None. `usage` is the run's whole spend so far; `deadline` comes from
    `deadline()`; `iteration`, given between iterations, is the one just finished (None: mid-edit, where
    the iteration under way is always allowed to finish)."""
    budget = agent.budget
    if budget.usd is not None and usage.cost_usd >= budget.usd:
        return f"dollar budget spent: ${usage.cost_usd:.4f} of ${budget.usd:g} (agent.budget.usd)"
    if budget.tokens is not None and usage.total_tokens >= budget.tokens:
        return f"token budget spent: {usage.total_tokens} of {budget.tokens} tokens (agent.budget.tokens)"
    if budget.minutes is not None and deadline is not None and time.time() >= deadline:
        return f"time budget spent: {budget.minutes:g} minutes (agent.budget.minutes)"
    if iteration is not None and iteration >= agent.max_iterations:
        return f"iteration budget spent: {iteration} of {agent.max_iterations} (agent.max_iterations)"
    return None
