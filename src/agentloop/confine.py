"""Confinement: every process that runs code the agent could have written runs in a bubblewrap jail.

That is the agent's bash tool, every suite (in the sandbox, on the baseline, the flaky rerun) and every
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

from __future__ import annotations

import collections
import functools
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from agentloop.config import Limits, PolicyConfig
from agentloop.errors import LoopError

log = logging.getLogger(__name__)

ALLOW_UNCONFINED_ENV = "LOOP_ALLOW_UNCONFINED"
JAIL_UID_ENV = "LOOP_JAIL_UID"
_DEFAULT_JAIL_UID = 65534
_MB = 1024 * 1024

# Read-only in every jail when they exist; symlinks (merged /usr) are recreated as symlinks.
_SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc", "/opt", "/nix/store")
# Files and directories under /etc that hold secrets of the host, hidden behind empty ones.
_ETC_SECRET_FILES = ("/etc/shadow", "/etc/gshadow", "/etc/shadow-", "/etc/gshadow-", "/etc/sudoers",
                     "/etc/security/opasswd", "/etc/.pwd.lock")
_ETC_SECRET_DIRS = ("/etc/ssh", "/etc/ssl/private", "/etc/sudoers.d", "/etc/kubernetes", "/etc/docker",
                    "/etc/rancher", "/etc/letsencrypt", "/etc/pki/private")
# Variables passed from loop's environment into a jail; everything else is built.
_PASSED_THROUGH = ("LANG", "LC_ALL", "LC_CTYPE", "TZ", "TERM", "SOURCE_DATE_EPOCH")


class ConfinementUnavailable(LoopError):
    """Bubblewrap is not usable here and the user has not opted in to running unconfined."""


@dataclass(frozen=True)
class GitView:
    """The parts of the user's git directory a worktree needs for `git diff`/`git status`, read-only."""

    admin_dir: Path  # <common>/worktrees/<name>
    common_dir: Path
    config: Path  # a config with only the format settings of the real one, made by loop


@dataclass
class Finished:
    """A command run to its end (or stopped)."""

    exit_code: int | None
    output: str
    duration: float
    timed_out: bool = False
    truncated: bool = False
    stopped_for: str | None = None  # why loop stopped it, in words for the model and the record


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

    def __init__(self, policy: PolicyConfig, *, use_bwrap: bool | None = None) -> None:
        self.policy = policy
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
            _chown_tree(path, uid)

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
        args = [self._bwrap, *_system_binds(), "--dev", "/dev", "--proc", "/proc"]
        if _tmpfs_size_supported(self._bwrap):
            args += ["--size", str(self.limits.tmp_mb * _MB)]
        args += ["--perms", "1777", "--tmpfs", "/tmp"]
        home.mkdir(parents=True, exist_ok=True)
        # Files loop wrote since the last command (the editor's, a restored snapshot) included.
        self.hand_over(*writable, home)
        binds: list[tuple[str, Path, Path]] = []
        for extra in [*_toolchain_dirs(), *(Path(p) for p in self.policy.readable), *readable]:
            if extra.exists():
                binds.append(("--ro-bind", extra, extra))
        if git is not None:
            binds += _git_binds(git)
        binds += [("--bind", path, path) for path in dict.fromkeys([*writable, home])]
        # bubblewrap makes missing mount points 0700, which the jail's user could not pass through.
        for parent in _mount_parents(target for _, _, target in binds):
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
        host_path = [p for p in os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin").split(os.pathsep) if p]
        env["PATH"] = os.pathsep.join(dict.fromkeys([*(str(p) for p in path_first), *host_path]))
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
    ) -> Finished:
        """Run `command` in the jail; keep `output_limit` characters of output (head and tail), stop it
        at `timeout` seconds or when it grows `watch_disk`'s filesystem past `limits.disk_mb`."""
        argv = self.argv(command, cwd=cwd, writable=writable, home=home, network=network, readable=readable,
                         git=git)
        started = time.monotonic()
        process = subprocess.Popen(argv, cwd=cwd, env=dict(env), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, start_new_session=True)
        assert process.stdout is not None
        reader = _CappedReader(process.stdout, limit_bytes=max(output_limit * 4, 64 * 1024),
                               keep_bytes=self.limits.output_mb * _MB)
        reader.start()
        stopped_for: str | None = None
        timed_out = False
        free_before = _free_bytes(watch_disk)
        try:
            while process.poll() is None:
                if time.monotonic() - started > timeout:
                    timed_out = True
                    stopped_for = f"killed after {timeout:g}s"
                    break
                if free_before is not None and watch_disk is not None:
                    grown = free_before - (_free_bytes(watch_disk) or free_before)
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


class _CappedReader(threading.Thread):
    """Drains a pipe so the child never blocks, keeping the first and last bytes only: a runaway command
    can fill neither loop's memory nor a host disk."""

    def __init__(self, stream: object, *, limit_bytes: int, keep_bytes: int) -> None:
        super().__init__(daemon=True)
        self._stream = stream
        self._head = bytearray()
        self._tail: collections.deque[bytes] = collections.deque()
        self._tail_size = 0
        self._half = max(min(limit_bytes, keep_bytes) // 2, 1024)
        self.total = 0

    def run(self) -> None:
        read = self._stream.read1  # type: ignore[attr-defined]
        while True:
            chunk: bytes = read(65536)
            if not chunk:
                return
            self.total += len(chunk)
            room = self._half - len(self._head)
            if room > 0:
                self._head += chunk[:room]
                chunk = chunk[room:]
            if chunk:
                self._tail.append(chunk)
                self._tail_size += len(chunk)
                while self._tail and self._tail_size - len(self._tail[0]) >= self._half:
                    self._tail_size -= len(self._tail.popleft())

    def text(self, limit_chars: int) -> tuple[str, bool]:
        tail = b"".join(self._tail)[-self._half:]
        kept = len(self._head) + len(tail)
        if kept >= self.total:
            text = (bytes(self._head) + tail).decode("utf-8", errors="replace")
            if len(text) <= limit_chars:
                return text, False
            half = limit_chars // 2
            return f"{text[:half]}\n[... {len(text) - 2 * half} characters cut ...]\n{text[-half:]}", True
        head_text = bytes(self._head).decode("utf-8", errors="replace")[: limit_chars // 2]
        tail_text = tail.decode("utf-8", errors="replace")[-(limit_chars // 2):]
        return f"{head_text}\n[... {self.total - kept} bytes of output cut ...]\n{tail_text}", True


def kill_group(process: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _free_bytes(path: Path | None) -> int | None:
    if path is None:
        return None
    try:
        stats = os.statvfs(path)
    except OSError:
        return None
    return stats.f_bavail * stats.f_frsize


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


def _chown_tree(root: Path, uid: int) -> None:
    """Give `root`'s contents to `uid`. The top directory keeps its owner and is opened to the jail's
    group instead, and a top-level `.git` is left alone: git refuses to work in a repository whose top
    directory or git directory another user owns, and loop's own git must keep working there."""

    def chown(path: str) -> None:
        try:
            if os.lstat(path).st_uid != uid:
                os.lchown(path, uid, uid)
        except OSError:
            pass

    if root.is_symlink() or not root.is_dir():
        chown(str(root))
        return
    try:
        stats = root.stat()
        if stats.st_gid != uid or stats.st_mode & 0o070 != 0o070:
            os.chown(root, -1, uid)
            root.chmod(stats.st_mode | 0o070)
    except OSError:
        pass
    for directory, dirs, files in os.walk(root):
        if directory == str(root):
            dirs[:] = [d for d in dirs if d != ".git"]
            files = [f for f in files if f != ".git"]
        for name in [*dirs, *files]:
            chown(os.path.join(directory, name))


@functools.lru_cache(maxsize=1)
def _system_binds() -> tuple[str, ...]:
    args: list[str] = []
    for name in _SYSTEM_DIRS:
        path = Path(name)
        if path.is_symlink():
            args += ["--symlink", os.readlink(path), name]
        elif path.is_dir():
            args += ["--ro-bind", name, name]
    for secret in _ETC_SECRET_FILES:
        if Path(secret).is_file():
            args += ["--ro-bind", "/dev/null", secret]
    for secret in _ETC_SECRET_DIRS:
        if Path(secret).is_dir() and not Path(secret).is_symlink():
            args += ["--tmpfs", secret]
    return tuple(args)


def _toolchain_dirs() -> list[Path]:
    """The Python loop runs under and the PATH directories outside the system ones (pyenv, cargo, a
    venv): read-only, so `python3`, `pytest` and the project's tools resolve inside the jail."""
    found: list[Path] = []
    for raw in [sys.prefix, sys.base_prefix, *os.environ.get("PATH", "").split(os.pathsep)]:
        if not raw:
            continue
        path = Path(raw).resolve()
        if not path.is_dir() or any(_under(path, Path(system)) for system in _SYSTEM_DIRS):
            continue
        if path == Path.home().resolve() or path == Path("/"):
            continue  # never a whole home directory
        found.append(path)
    return list(dict.fromkeys(found))


def _under(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def _mount_parents(targets: Iterable[Path]) -> list[Path]:
    """Directories to create (0755) before mounting `targets`: their ancestors outside the system dirs."""
    parents: set[Path] = set()
    for target in targets:
        for parent in target.parents:
            if parent == Path("/") or any(_under(parent, Path(system)) for system in _SYSTEM_DIRS):
                continue
            if parent == Path("/tmp"):
                continue
            parents.add(parent)
    return sorted(parents, key=lambda path: len(path.parts))


def _git_binds(git: GitView) -> list[tuple[str, Path, Path]]:
    common = git.common_dir
    binds: list[tuple[str, Path, Path]] = []
    for name in ("objects", "refs", "packed-refs", "HEAD", "info", "shallow"):
        part = common / name
        if part.exists():
            binds.append(("--ro-bind", part, part))
    binds += [("--ro-bind", git.admin_dir, git.admin_dir), ("--ro-bind", git.config, common / "config")]
    return binds


def git_view(admin_dir: Path, scratch: Path) -> GitView | None:
    """The read-only git view for the jail of a linked worktree whose admin directory loop found from the
    repository's side (`agentloop.git.git_dir`); None for anything else (the user's own checkout)."""
    try:
        commondir = (admin_dir / "commondir").read_text(encoding="utf-8").strip()
    except OSError:
        return None
    common = Path(commondir) if Path(commondir).is_absolute() else admin_dir / commondir
    admin, common = admin_dir.resolve(), common.resolve()
    if admin.parent != common / "worktrees":
        return None  # not one of the repository's own worktree admin directories
    scratch.mkdir(parents=True, exist_ok=True)
    config = scratch / "gitconfig"
    config.write_text(_format_config(common / "config"), encoding="utf-8")
    return GitView(admin_dir=admin, common_dir=common, config=config)


def _format_config(real: Path) -> str:
    """Only what git needs to read the repository (its format), none of its remotes, hooks or helpers."""
    try:
        out = subprocess.run(["git", "config", "--file", str(real), "--get-regexp",
                              r"^(core\.repositoryformatversion|extensions\..*)$"],
                             capture_output=True, text=True, check=False, timeout=10,
                             env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "GIT_CONFIG_NOSYSTEM": "1",
                                  "HOME": "/nonexistent"}).stdout
    except (OSError, subprocess.SubprocessError):
        out = ""
    core = ["[core]", "\tbare = false"]
    extensions: list[str] = []
    for line in out.splitlines():
        key, _, value = line.partition(" ")
        section, _, name = key.partition(".")
        if section == "core":
            core.append(f"\t{name} = {value}")
        elif section == "extensions":
            extensions.append(f"\t{name} = {value}")
    return "\n".join([*core, *(["[extensions]", *extensions] if extensions else []), ""])

