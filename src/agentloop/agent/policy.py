"""What the agent's commands may do, and where they run.

Every command runs in the jail of `agentloop.confine` (bubblewrap: its own PID namespace, the system
read-only, only the worktree and a throwaway HOME writable, a private bounded /tmp, no network unless
`policy.network`, an environment built from nothing, resource limits), with a time limit and capped
output. The jail is the boundary. `policy.commands` and `policy.deny` are only defence in depth:
fnmatch patterns checked against each simple command of a shell line, so `true && git push` is refused
like `git push`.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path

from pydantic import BaseModel

from agentloop import git
from agentloop.agent.command_policy import CommandPolicy, simple_commands  # noqa: F401
from agentloop.config import PolicyConfig
from agentloop.confine import Confinement, GitView, git_view
from agentloop.project_env import ProjectEnv
from agentloop.redact import scrubbed_env

logger = logging.getLogger(__name__)



class CommandResult(BaseModel):
    exit_code: int | None
    output: str
    timed_out: bool = False
    truncated: bool = False


def bwrap_works(bwrap: str | None = None) -> bool:
    """Whether bubblewrap can start a jail here (containers often lack user namespaces)."""
    confinement = Confinement(PolicyConfig())
    return confinement.confined if bwrap is None else shutil.which(bwrap) is not None and confinement.confined


class ConfinedShell:
    """Runs the agent's shell commands in `worktree` under `policy`, in the jail of `agentloop.confine`.

    `use_bwrap` None probes bubblewrap once (on first use); True/False forces the choice (False means
    unconfined, which the policy or `LOOP_ALLOW_UNCONFINED` must allow). `extra_env` (the sandbox's URLs
    and routing headers) is added to the jail's environment. With `repo` (the user's repository), git in
    the jail can read the worktree's objects and refs.
    """

    def __init__(
        self,
        worktree: Path,
        policy: PolicyConfig,
        *,
        extra_env: Mapping[str, str] | None = None,
        use_bwrap: bool | None = None,
        repo: Path | None = None,
        project: ProjectEnv | None = None,
    ) -> None:
        self.worktree = worktree.resolve()
        self.repo = repo
        self.policy = policy
        self.rules = CommandPolicy(policy)
        self._extra_env = dict(extra_env or {})
        self.confinement = Confinement(policy, use_bwrap=use_bwrap, project=project)
        self._git: GitView | None = None
        self._scratch: Path | None = None

    @property
    def confined(self) -> bool:
        return self.confinement.confined

    def _env(self, home: Path) -> dict[str, str]:
        extra = scrubbed_env(self._extra_env)  # nothing secret-named comes in through extra_env either
        extra.update({"PWD": str(self.worktree), "PAGER": "cat", "GIT_PAGER": "cat",
                      # Caches written into the worktree would end up in the pull request.
                      "PYTHONDONTWRITEBYTECODE": "1", "PYTEST_ADDOPTS": "-p no:cacheprovider"})
        # `python3`/`pytest` resolve to the project's own (`path:` in loop.yaml), as for suites and services.
        project = self.confinement.project
        return self.confinement.env(project.variables(extra), home=home,
                                    path_first=project.path_first(self.worktree))

    def run(self, command: str) -> CommandResult:
        """Run an already-allowed command; output (stdout+stderr) is capped at policy.output_limit."""
        if self._scratch is None:
            self._scratch = Path(tempfile.mkdtemp(prefix="loop-shell-"))
            if self.confined and self.repo is not None:
                # From the repository's side, never from the worktree's own `.git`.
                admin = git.git_dir(git.Worktree(self.repo, self.worktree))
                self._git = git_view(admin, self._scratch / "git")
        home = Path(tempfile.mkdtemp(prefix="home-", dir=self._scratch))
        try:
            finished = self.confinement.run(
                ["/bin/bash", "-c", command], cwd=self.worktree, env=self._env(home), writable=[self.worktree],
                home=home, network=self.policy.network, timeout=self.policy.command_timeout,
                output_limit=self.policy.output_limit, git=self._git, watch_disk=self.worktree,
            )
        finally:
            shutil.rmtree(home, ignore_errors=True)
        output = finished.output
        if finished.stopped_for:
            limit = "policy.command_timeout" if finished.timed_out else "the jail's limits"
            output += f"\n[command {finished.stopped_for} ({limit})]"
        return CommandResult(exit_code=finished.exit_code, output=output, timed_out=finished.timed_out,
                             truncated=finished.truncated)

    def close(self) -> None:
        """Remove this shell's scratch directory."""
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None
