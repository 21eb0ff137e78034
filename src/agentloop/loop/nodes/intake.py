"""intake: the run's own git worktree on branch `loop/<issue>-<run>`, at the base branch's head."""

from __future__ import annotations

from agentloop import git, project_env
from agentloop.confine import project_confinement
from agentloop.loop.context import RunContext
from agentloop.loop.nodes._common import step_of
from agentloop.loop.state import RunState
from agentloop.paths import worktrees_dir


def branch_name(issue_number: int, run_id: str) -> str:
    """`loop/<issue>-<run>`; an issue read from a file with no number is `loop/file-<run>`."""
    return f"loop/{issue_number or 'file'}-{run_id}"


def run(state: RunState, ctx: RunContext) -> RunState:
    repo = git.open_repo(ctx.repo)
    base = state.get("base_commit") or git.resolve_base(repo, ctx.config.base_branch)
    branch = branch_name(state["issue"].number, ctx.run_id)
    worktree = worktrees_dir(ctx.repo) / ctx.run_id
    git.add_worktree(repo, worktree, branch=branch, commit=base)
    ctx.record.update_summary(branch=branch, worktree=str(worktree))  # what `loop sandbox gc` removes
    # The project's dependencies, as at the base commit (no agent has touched it yet: shareable).
    project_env.prepare(worktree, repo=ctx.repo, confinement=project_confinement(ctx.config), share=True)
    ctx.forge.comment(
        state["issue"],
        f"loop run `{ctx.run_id}` is working on this issue on branch `{branch}`; "
        "this comment will say how it ends.",
        step=step_of(state, ctx, "intake"),
    )
    return {
        "base_commit": base,
        "branch": branch,
        "worktree": str(worktree),
        "iteration": 1,
        "status": "running",
    }
