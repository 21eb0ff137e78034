"""`Confinement`: how a run confines code — whether bubblewrap works here, as which user, with which
limits — and the argv, environment and run of one jailed command. See the package docstring."""

from __future__ import annotations

import functools
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from agentloop.config import Limits, PolicyConfig
from agentloop.confine.capture import CappedReader, Finished, free_bytes, kill_group
from agentloop.confine.mounts import (
    GitView,
    chown_tree,
    git_binds,
    mount_parents,
    pyenv_root,
    system_binds,
    toolchain_dirs,
)
from agentloop.errors import LoopError
from agentloop.owned import tracked_group
from agentloop.project_env import ProjectEnv

log = logging.getLogger(__name__)


log = logging.getLogger(__name__)


ALLOW_UNCONFINED_ENV = "LOOP_ALLOW_UNCONFINED"


JAIL_UID_ENV = "LOOP_JAIL_UID"


_DEFAULT_JAIL_UID = 65534


_MB = 1024 * 1024


_PASSED_THROUGH = ("LANG", "LC_ALL", "LC_CTYPE", "TZ", "TERM", "SOURCE_DATE_EPOCH", "PYENV_VERSION")


def _is_loops_own(directory: str) -> bool:
    """The bin directory of the virtualenv loop runs in: its `python3` is loop's, never the project's."""
    return sys.prefix != sys.base_prefix and Path(directory).resolve() == (Path(sys.prefix) / "bin").resolve()


class ConfinementUnavailable(LoopError):
    """Bubblewrap is not usable here and the user has not opted in to running unconfined."""


@functools.lru_cache(maxsize=8)
def _probe(bwrap: str, uid: int | None) -> bool:
    """Whether bubblewrap can start a jail here with the PID namespace and `/proc` we ask for
    (containers often lack user namespaces)."""
    argv = [bwrap, "--ro-bind", "/", "/", "--dev", "/dev", "--unshare-pid", "--proc", "/proc",
            "--die-with-parent", "--", *_drop_privileges(uid), "true"]
    try:
        probe = subprocess.run(argv, check=False, capture_output=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return False
    if probe.returncode != 0:
        log.debug("bubblewrap probe failed: %s", probe.stderr.decode(errors="replace").strip())
    return probe.returncode == 0


@functools.lru_cache(maxsize=4)
def _tmpfs_size_supported(bwrap: str) -> bool:
    try:
        help_text = subprocess.run([bwrap, "--help"], check=False, capture_output=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return False
    return b"--size" in help_text


def _drop_privileges(uid: int | None) -> list[str]:
    """Run inside the jail, after bubblewrap (as root) made the mounts: become `uid` with no
    capabilities and no way back (no_new_privs)."""
    if uid is None:
        return []
    return ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--no-new-privs",
            "--inh-caps=-all", "--bounding-set=-all", "--"]


def jail_uid() -> int | None:
    """The uid jails run as: an unprivileged one when loop is root (and setpriv exists), else loop's own."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        return None
    raw = os.environ.get(JAIL_UID_ENV, "")
    try:
        uid = int(raw) if raw else _DEFAULT_JAIL_UID
    except ValueError:
        raise LoopError(f"{JAIL_UID_ENV}={raw!r} is not a number; unset it or give an unprivileged uid") from None
    if uid == 0:
        raise LoopError(f"{JAIL_UID_ENV}=0 would run agent-written code as root; give an unprivileged uid")
    return uid


def allowed_unconfined(policy: PolicyConfig) -> bool:
    return policy.allow_unconfined or os.environ.get(ALLOW_UNCONFINED_ENV, "") in ("1", "true", "yes")


class Confinement:
    """How this run confines code: built once per run (or per backend) from the policy.

    `use_bwrap` None probes bubblewrap on first use; True/False forces the choice (tests).
    """

    def __init__(self, policy: PolicyConfig, *, use_bwrap: bool | None = None,
                 project: ProjectEnv | None = None) -> None:
        self.policy = policy
        # The project's own PATH (`path:`) and variables (`env:`), under every command this jail runs.
        self.project = project or ProjectEnv()
        self.limits: Limits = policy.limits
        self._use_bwrap = use_bwrap
        self._bwrap = shutil.which("bwrap")
        self._uid = jail_uid()
        self._warned = False

    # -- what this machine allows ---------------------------------------------------------------------

    @property
    def confined(self) -> bool:
        if self._use_bwrap is None:
            self._use_bwrap = self._bwrap is not None and self._usable()
        return bool(self._use_bwrap) and self._bwrap is not None

    def _usable(self) -> bool:
        assert self._bwrap is not None
        if _probe(self._bwrap, self._uid):
            return True
        if self._uid is not None and _probe(self._bwrap, None):
            # setpriv cannot drop to that uid here; a root jail still hides the host.
            log.warning("jails cannot switch to uid %s here; they run as root (no process limit)", self._uid)
            self._uid = None
            return True
        return False

    @property
    def uid(self) -> int | None:
        """The uid jails run as when it differs from loop's."""
        return self._uid if self.confined else None

    def require(self) -> None:
        """Raise unless code can run confined, or the user opted in to running it unconfined."""
        if self.confined:
            return
        if not allowed_unconfined(self.policy):
            raise ConfinementUnavailable(
                "bubblewrap (bwrap) is not usable here, and agent-written code does not run unconfined: install "
                "it (`make system-deps` or `apt-get install bubblewrap`) and allow user namespaces, or opt in with "
                "`--allow-unconfined` / `policy.allow_unconfined: true` in loop.yaml"
            )
        if not self._warned:
            self._warned = True
            log.warning("bubblewrap is not usable: agent-written code runs UNCONFINED (opted in); the evidence "
                        "and the pull request say so")

    def describe(self) -> dict[str, object]:
        """What the evidence records about confinement."""
        return {"confined": self.confined, "jail_uid": self.uid, "network_for_commands": self.policy.network,
                "limits": self.limits.model_dump()}

    # -- handing the worktree to the jail's user ------------------------------------------------------

    def hand_over(self, *paths: Path) -> None:
        """Make `paths` (recursively) owned by the jail's user, so confined code can write them; no-op
        when jails run as loop's own user."""
        uid = self.uid
        if uid is None:
            return
        for path in paths:
            if not path.exists():
                continue
            chown_tree(path, uid)

    # -- building the jail ----------------------------------------------------------------------------

    def argv(
        self,
        command: Sequence[str],
        *,
        cwd: Path,
        writable: Sequence[Path],
        home: Path,
        network: bool,
        readable: Sequence[Path] = (),
        git: GitView | None = None,
    ) -> list[str]:
        """`command` wrapped in the jail (or, unconfined by opt-in, only in the resource limits)."""
        self.require()
        limited = self._rlimits() + _drop_privileges(self.uid) + list(command)
        if not self.confined:
            return limited
        assert self._bwrap is not None
        args = [self._bwrap, *system_binds(), "--dev", "/dev", "--proc", "/proc"]
        if _tmpfs_size_supported(self._bwrap):
            args += ["--size", str(self.limits.tmp_mb * _MB)]
        args += ["--perms", "1777", "--tmpfs", "/tmp"]
        home.mkdir(parents=True, exist_ok=True)
        # Files loop wrote since the last command (the editor's, a restored snapshot) included.
        self.hand_over(*writable, home)
        binds: list[tuple[str, Path, Path]] = []
        for extra in [*toolchain_dirs(), *(Path(p) for p in self.policy.readable), *readable]:
            if extra.exists():
                binds.append(("--ro-bind", extra, extra))
        if git is not None:
            binds += git_binds(git)
        binds += [("--bind", path, path) for path in dict.fromkeys([*writable, home])]
        # bubblewrap makes missing mount points 0700, which the jail's user could not pass through.
        for parent in mount_parents(target for _, _, target in binds):
            args += ["--perms", "0755", "--dir", str(parent)]
        for option, source, target in binds:
            args += [option, str(source), str(target)]
        args += ["--chdir", str(cwd), "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--hostname", "jail",
                 "--die-with-parent", "--new-session"]
        if not network:
            args.append("--unshare-net")
        return [*args, "--", *limited]

    def env(self, extra: Mapping[str, str], *, home: Path, path_first: Sequence[Path] = ()) -> dict[str, str]:
        """A jail's environment, built from nothing: PATH, HOME, TMPDIR, locale, then `extra`."""
        env = {name: os.environ[name] for name in _PASSED_THROUGH if name in os.environ}
        host_path = [p for p in os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin").split(os.pathsep)
                     if p and not _is_loops_own(p)]
        env["PATH"] = os.pathsep.join(dict.fromkeys([*(str(p) for p in path_first), *host_path]))
        manager = pyenv_root()
        if manager is not None:
            env["PYENV_ROOT"] = str(manager)
        env.update({"HOME": str(home), "TMPDIR": "/tmp", "USER": "loop", "LOGNAME": "loop",
                    # git inside the jail: the worktree belongs to the jail's user, the objects to loop's.
                    "GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": "safe.directory", "GIT_CONFIG_VALUE_0": "*",
                    "GIT_CONFIG_NOSYSTEM": "1", "GIT_TERMINAL_PROMPT": "0"})
        env.update(extra)
        return env

    def _rlimits(self) -> list[str]:
        if shutil.which("prlimit") is None:
            return []
        limits = self.limits
        nproc = limits.processes
        if self._uid is None and os.geteuid() != 0:
            # RLIMIT_NPROC counts every process of the user, not just the jail's.
            nproc += _processes_of(os.getuid())
        return ["prlimit", f"--nproc={nproc}", f"--fsize={limits.file_size_mb * _MB}",
                f"--as={limits.memory_mb * _MB}", "--core=0", "--"]

    # -- running a command to its end -----------------------------------------------------------------

    def run(
        self,
        command: Sequence[str],
        *,
        cwd: Path,
        env: Mapping[str, str],
        writable: Sequence[Path],
        home: Path,
        network: bool,
        timeout: float,
        output_limit: int,
        readable: Sequence[Path] = (),
        git: GitView | None = None,
        watch_disk: Path | None = None,
        on_start: Callable[[], None] | None = None,
    ) -> Finished:
        """Run `command` in the jail; keep `output_limit` characters of output (head and tail), stop it
        at `timeout` seconds or when it grows `watch_disk`'s filesystem past `limits.disk_mb`. Its process
        group is recorded as the current run's while it runs (`agentloop.owned`), so a resumed run stops it
        if this `loop` is killed; `on_start` is called once it is recorded."""
        argv = self.argv(command, cwd=cwd, writable=writable, home=home, network=network, readable=readable,
                         git=git)
        started = time.monotonic()
        process = subprocess.Popen(argv, cwd=cwd, env=dict(env), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, start_new_session=True)
        try:
            with tracked_group(process.pid):
                if on_start is not None:
                    on_start()
                return self._wait(process, started=started, timeout=timeout, output_limit=output_limit,
                                  watch_disk=watch_disk)
        except BaseException:  # the record could not be written, a Ctrl-C: the command must not outlive the run
            kill_group(process)
            raise

    def _wait(self, process: subprocess.Popen[bytes], *, started: float, timeout: float, output_limit: int,
              watch_disk: Path | None) -> Finished:
        assert process.stdout is not None
        reader = CappedReader(process.stdout, limit_bytes=max(output_limit * 4, 64 * 1024),
                               keep_bytes=self.limits.output_mb * _MB)
        reader.start()
        stopped_for: str | None = None
        timed_out = False
        free_before = free_bytes(watch_disk)
        try:
            while process.poll() is None:
                if time.monotonic() - started > timeout:
                    timed_out = True
                    stopped_for = f"killed after {timeout:g}s"
                    break
                if free_before is not None and watch_disk is not None:
                    grown = free_before - (free_bytes(watch_disk) or free_before)
                    if grown > self.limits.disk_mb * _MB:
                        stopped_for = (f"killed: it wrote more than {self.limits.disk_mb} MB to disk "
                                       "(policy.limits.disk_mb)")
                        break
                try:
                    process.wait(timeout=0.1)
                except subprocess.TimeoutExpired:
                    continue
        except BaseException:  # Ctrl-C, a stop request: the command must not outlive the run
            kill_group(process)
            raise
        if stopped_for is not None:
            kill_group(process)
        process.wait()
        reader.join(timeout=30)
        output, truncated = reader.text(output_limit)
        code = process.returncode
        if stopped_for is None and code in (-signal.SIGXFSZ, 128 + signal.SIGXFSZ):
            stopped_for = f"a file grew past {self.limits.file_size_mb} MB (policy.limits.file_size_mb)"
        return Finished(exit_code=None if timed_out else code, output=output, duration=time.monotonic() - started,
                        timed_out=timed_out, truncated=truncated, stopped_for=stopped_for)


def _processes_of(uid: int) -> int:
    count = 0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if entry.stat().st_uid == uid:
                    count += 1
            except OSError:
                continue
    return count
