"""Confinement: every process that runs code the agent could have written runs in a bubblewrap jail.

That is the agent's bash tool, every suite (in the sandbox, in the base run, the flaky rerun) and every
service process (forks and the baseline). A jail has:

- its own PID namespace and `/proc`: loop's processes, their environment and memory are invisible;
- read-only system directories (`/usr`, `/etc` without its secret files, the toolchains on PATH and the
  Python loop runs under), and nothing else of the host: no home directory, no host `/tmp`, no run
  records, no `.git/loop`, no other worktree; the git objects and refs of the run's own worktree are
  read-only so `git diff` works inside;
- writable: only the paths the caller names (the worktree, a per-run scratch `HOME`, a fork's database
  directory) and a private `/tmp` of bounded size;
- an environment built from nothing: PATH, HOME, locale, what loop.yaml gives, the `LOOP_*` variables;
- limits (`policy.limits`): processes, file size, address space, `/tmp` size; commands run through
  `run()` also get a disk-growth watchdog, a wall-time limit and output kept to a head and a tail;
- when loop runs as root, the jail runs as an unprivileged user (`LOOP_JAIL_UID`, default 65534), so the
  process limit holds and files only root may read stay unreadable even if bound.

Network: services and suites share the host's network namespace, because they must reach the router,
the baseline and each other on loopback; the agent's bash tool gets none unless `policy.network`.

Without a usable bubblewrap, agent-written code does not run unless the user opts in
(`policy.allow_unconfined: true`, `--allow-unconfined`, or `LOOP_ALLOW_UNCONFINED=1`); a run that ran
unconfined says so in its evidence and in the pull request.
"""

from agentloop.config import LoopConfig
from agentloop.confine.capture import Finished, kill_group
from agentloop.confine.jail import (
    ALLOW_UNCONFINED_ENV,
    JAIL_UID_ENV,
    Confinement,
    ConfinementUnavailable,
    allowed_unconfined,
    jail_uid,
)
from agentloop.confine.mounts import GitView, git_view
from agentloop.project_env import ProjectEnv


def project_confinement(config: LoopConfig) -> Confinement:
    """The jail for the project's own commands under `config`: its policy, PATH, env and setup steps."""
    return Confinement(config.policy, project=ProjectEnv.of(config))


__all__ = [
    "ALLOW_UNCONFINED_ENV", "JAIL_UID_ENV", "Confinement", "ConfinementUnavailable", "Finished", "GitView",
    "allowed_unconfined", "git_view", "jail_uid", "kill_group", "project_confinement",
]
