"""What the agent's commands may do, and where they run.

Every command runs in the worktree with a scrubbed environment (no keys or tokens), a time limit and
capped output. Where bubblewrap works, it also runs with the system read-only, only the worktree (and a
private /tmp) writable, and no network unless `policy.network`. `policy.commands` and `policy.deny` are
fnmatch patterns checked against each simple command of a shell line, so `true && git push` is refused
like `git push`.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path

from pydantic import BaseModel

from agentloop.config import PolicyConfig
from agentloop.redact import scrubbed_env

logger = logging.getLogger(__name__)

_OPERATORS = {";", "&&", "||", "|", "&", "|&", "(", ")", ";;", "\n"}
_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
_SUBSHELL = re.compile(r"\$\(([^()]*)\)|`([^`]*)`")


class CommandResult(BaseModel):
    exit_code: int | None
    output: str
    timed_out: bool = False
    truncated: bool = False


def simple_commands(command: str) -> list[str]:
    """The simple commands of a shell line (split on ; && || | & and newlines, $(...) and `...` too),
    each without leading VAR=value assignments."""
    pieces = [command] + [a or b for a, b in _SUBSHELL.findall(command)]
    found: list[str] = []
    for piece in pieces:
        lexer = shlex.shlex(piece.replace("\n", " ; "), posix=True, punctuation_chars=";&|()")
        lexer.whitespace_split = True
        current: list[str] = []
        try:
            tokens = list(lexer)
        except ValueError:  # unbalanced quotes: judge the raw text as one command
            tokens = piece.split()
        for token in tokens + [";"]:
            if token in _OPERATORS:
                while current and _ASSIGNMENT.match(current[0]):
                    current.pop(0)
                if current:
                    found.append(" ".join(current))
                current = []
            else:
                current.append(token)
    return found


class CommandPolicy:
    """Allow/deny patterns from `loop.yaml`'s policy."""

    def __init__(self, policy: PolicyConfig) -> None:
        self._allow = policy.commands
        self._deny = policy.deny

    def refusal(self, command: str) -> str | None:
        """Why `command` may not run, or None when it may."""
        if not command.strip():
            return "empty command"
        for simple in simple_commands(command):
            for pattern in self._deny:
                if fnmatch.fnmatchcase(simple, pattern) or fnmatch.fnmatchcase(simple, pattern.rstrip("*").rstrip()):
                    return f"`{simple}` is denied by policy.deny pattern {pattern!r} in loop.yaml"
            if not any(fnmatch.fnmatchcase(simple, pattern) for pattern in self._allow):
                allowed = ", ".join(repr(p) for p in self._allow)
                return f"`{simple}` matches none of the allowed policy.commands patterns ({allowed}) in loop.yaml"
        return None


def bwrap_works(bwrap: str | None = None) -> bool:
    """Whether bubblewrap can actually start a sandbox here (containers often lack user namespaces)."""
    binary = bwrap or shutil.which("bwrap")
    if binary is None:
        return False
    try:
        probe = subprocess.run([binary, "--ro-bind", "/", "/", "true"], check=False, capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return probe.returncode == 0


def _cap(data: bytes, limit: int) -> tuple[str, bool]:
    text = data.decode("utf-8", errors="replace")
    if len(text) <= limit:
        return text, False
    head, tail = text[: limit // 2], text[-(limit // 2):]
    return f"{head}\n[... {len(text) - len(head) - len(tail)} characters cut ...]\n{tail}", True


class ConfinedShell:
    """Runs the agent's shell commands in `worktree` under `policy`.

    `use_bwrap` None probes bubblewrap once (on first use); True/False forces the choice.
    `extra_env` (e.g. the sandbox's URLs and routing headers) is added to the scrubbed environment.
    """

    def __init__(
        self,
        worktree: Path,
        policy: PolicyConfig,
        *,
        extra_env: Mapping[str, str] | None = None,
        use_bwrap: bool | None = None,
    ) -> None:
        self.worktree = worktree.resolve()
        self.policy = policy
        self.rules = CommandPolicy(policy)
        self._extra_env = dict(extra_env or {})
        self._use_bwrap = use_bwrap

    @property
    def confined(self) -> bool:
        if self._use_bwrap is None:
            self._use_bwrap = bwrap_works()
            if not self._use_bwrap:
                logger.warning(
                    "bubblewrap is not available or not usable here: the agent's commands run unconfined "
                    "(scrubbed environment, time limit and output cap still apply); install bubblewrap "
                    "and allow user namespaces to confine them"
                )
        return self._use_bwrap

    def _argv(self, command: str) -> list[str]:
        shell = ["/bin/bash", "-c", command]
        if not self.confined:
            return shell
        wt = str(self.worktree)
        argv = ["bwrap", "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp"]
        git_dir = _git_common_dir(self.worktree)
        if git_dir is not None:  # under the private /tmp it would vanish, and `git diff` with it
            argv += ["--ro-bind", str(git_dir), str(git_dir)]
        argv += ["--bind", wt, wt, "--chdir", wt, "--unshare-pid", "--unshare-ipc", "--die-with-parent",
                 "--new-session"]
        if not self.policy.network:
            argv.append("--unshare-net")
        return argv + ["--"] + shell

    def _env(self) -> dict[str, str]:
        env = scrubbed_env()
        env.update({k: v for k, v in self._extra_env.items()})
        env = scrubbed_env(env)  # nothing secret-named comes in through extra_env either
        # `python3`/`pytest` resolve to the environment loop runs in, as they do for the suites.
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        env.update({"PWD": str(self.worktree), "GIT_TERMINAL_PROMPT": "0", "PAGER": "cat", "GIT_PAGER": "cat",
                    # Caches written into the worktree would end up in the pull request.
                    "PYTHONDONTWRITEBYTECODE": "1",
                    "PYTEST_ADDOPTS": (env.get("PYTEST_ADDOPTS", "") + " -p no:cacheprovider").strip()})
        return env

    def run(self, command: str) -> CommandResult:
        """Run an already-allowed command; output (stdout+stderr) is capped at policy.output_limit."""
        with tempfile.TemporaryFile() as sink:
            process = subprocess.Popen(
                self._argv(command), cwd=self.worktree, env=self._env(), stdin=subprocess.DEVNULL,
                stdout=sink, stderr=subprocess.STDOUT, start_new_session=True,
            )
            timed_out = False
            try:
                process.wait(timeout=self.policy.command_timeout)
            except subprocess.TimeoutExpired:
                timed_out = True
                _kill_group(process)
            sink.seek(0)
            # Read at most a bounded amount: a runaway command must not fill our memory.
            size = os.fstat(sink.fileno()).st_size
            budget = self.policy.output_limit * 4
            if size <= budget:
                data = sink.read()
            else:
                head = sink.read(budget // 2)
                sink.seek(size - budget // 2)
                data = head + b"\n[...]\n" + sink.read()
        output, truncated = _cap(data, self.policy.output_limit)
        truncated = truncated or size > budget
        if timed_out:
            output += f"\n[command killed after {self.policy.command_timeout:g}s (policy.command_timeout)]"
        return CommandResult(exit_code=None if timed_out else process.returncode, output=output,
                             timed_out=timed_out, truncated=truncated)


def _git_common_dir(worktree: Path) -> Path | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--git-common-dir"], cwd=worktree, capture_output=True,
                             text=True, check=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    path = Path(out.stdout.strip())
    return (path if path.is_absolute() else worktree / path).resolve()


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait(timeout=10)

