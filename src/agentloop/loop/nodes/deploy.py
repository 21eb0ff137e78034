"""deploy: the sandbox. First pass creates it with forks of only the changed services; later passes
update only the forks whose code changed (same sandbox, same route key)."""

from __future__ import annotations

from pathlib import Path

from agentloop import project_env
from agentloop.confine import project_confinement
from agentloop.errors import DeployError
from agentloop.loop.context import RunContext
from agentloop.loop.nodes._common import current_attempt
from agentloop.loop.state import Attempt, RunState
from agentloop.project_env import SetupFailed
from agentloop.results import DeployResult
from agentloop.sandbox.factory import services_for_changes


def ensure_sandbox(state: RunState, ctx: RunContext) -> DeployResult:
    """Create or update the run's sandbox so it serves the worktree as it is now."""
    worktree = Path(state["worktree"])
    changed = current_attempt(state).get("changed_files") or []
    wanted = services_for_changes(ctx.config, changed)
    forks = {service: worktree for service in wanted}
    before = ctx.backend.get(ctx.run_id)
    try:
        if before is None:
            info = ctx.backend.create(ctx.run_id, forks, log_dir=ctx.record.logs_dir)
            restarted = wanted
        else:
            info = ctx.backend.update(ctx.run_id, forks)
            restarted = [s for s in wanted if s not in before.forks or
                         before.forks[s].code_hash != info.forks[s].code_hash or before.forks[s].pid != info.forks[s].pid]
    except DeployError as exc:
        return DeployResult(
            ok=False, sandbox=before, forked=wanted, error=str(exc), service=exc.service or None,
            exit_code=exc.process_exit_code, log_tail=exc.log_tail,
        )
    return DeployResult(ok=True, sandbox=info, forked=wanted, restarted=restarted)


def _setup(state: RunState, ctx: RunContext) -> DeployResult | None:
    """Setup steps again where the agent changed their inputs (a requirements file); never cached."""
    try:
        project_env.prepare(Path(state["worktree"]), repo=ctx.repo, confinement=project_confinement(ctx.config),
                            share=False)
    except SetupFailed as exc:
        return DeployResult(ok=False, sandbox=None, error=str(exc), service="setup",
                            exit_code=exc.process_exit_code, log_tail=exc.log_tail)
    return None


def run(state: RunState, ctx: RunContext) -> RunState:
    iteration = state.get("iteration", 1)
    failed_setup = _setup(state, ctx)
    if failed_setup is not None:
        return {"deploy": failed_setup, "attempts": [Attempt(iteration=iteration, deploy=failed_setup)]}
    if not ctx.has_services:
        result = DeployResult(ok=True)
        sandbox = None
    else:
        result = ensure_sandbox(state, ctx)
        sandbox = result.sandbox or state.get("sandbox")
        if result.sandbox:
            ctx.emit(kind="sandbox", sandbox=result.sandbox.name, link=result.sandbox.link)
    return {"sandbox": sandbox, "deploy": result, "attempts": [Attempt(iteration=iteration, deploy=result)]}
