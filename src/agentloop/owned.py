"""What a run owns on this machine besides its sandbox: the process groups of the commands it runs in jails
(suites, setup steps, the agent's bash tool) and its temporary worktrees (the base-commit comparison,
`loop verify --rerun`, `loop doctor`). Each is recorded before it starts, so a `loop` killed at any moment
leaves a record of everything it left behind:

  <state>/owned/run-<run id>/owner.json             the loop process driving the run now (pid + start time)
  <state>/owned/run-<run id>/groups/<pgid>.json     a jailed command's process group, while it runs
  <state>/owned/run-<run id>/worktrees/<name>/tree  a temporary worktree of the user's repository

Outside a run (`loop doctor`, `loop verify --rerun`) the owner is the process itself, `pid-<pid>-<start time>`,
and only its worktrees are recorded.

`release` kills every recorded group still alive (its leader's start time checked first, so a pid the
kernel gave to another process since is never signalled) and removes every worktree, from git's list too.
A run releases what a killed process before it left (`owning`, when `loop resume` starts) and everything
when it ends; `loop sandbox gc` releases owners whose process is gone. Nothing outside `<state>/owned` is
ever deleted, whatever a record says.

`kill_point` is the hook the kill-and-resume tests use (`LOOP_TEST_KILL_AT`).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path

from agentloop import git, processes
from agentloop.errors import LoopError
from agentloop.paths import state_dir
from agentloop.processes import ProcessRecord

log = logging.getLogger(__name__)

OWNED = "owned"
KILL_AT_ENV = "LOOP_TEST_KILL_AT"
_OWNER_FILE = "owner.json"
_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,80}")
_PROCESS_OWNER = re.compile(r"pid-(\d+)-(\d+)")
_KILL_WAIT = 5.0


@dataclass(frozen=True)
class Owner:
    """Who the recorded things belong to: a run (`run_id`) or, outside a run, this process."""

    repo: Path
    root: Path  # <state>/owned/<name>
    run_id: str | None = None


_current: ContextVar[Owner | None] = ContextVar("agentloop_owner", default=None)


def kill_point(name: str) -> None:
    """Tests only: SIGKILL this process here when `$LOOP_TEST_KILL_AT` is `name` (`node:deploy`, `fork`,
    `suite`, `comparison`, `baseline`), the way a crash or the OOM killer would stop it."""
    if os.environ.get(KILL_AT_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)


def run_owner(repo: Path, run_id: str) -> Owner:
    if not _RUN_ID.fullmatch(run_id):
        raise LoopError(f"run id {run_id!r}: use letters, digits, '.', '_' and '-' only")
    return Owner(repo, state_dir(repo) / OWNED / f"run-{run_id}", run_id)


def current_run() -> str | None:
    """The run this code works for (see `owning`), or None outside a run."""
    owner = _current.get()
    return owner.run_id if owner is not None else None


@contextmanager
def owning(owner: Owner) -> Iterator[Owner]:
    """Within this block (this thread and what it calls), jailed commands and temporary worktrees are
    `owner`'s. What a killed process left under the same owner is released first; all of it at the end."""
    previous = _read_owner(owner.root)
    if previous is not None and previous.pid != os.getpid() and processes.alive(previous):
        raise LoopError(f"run {owner.run_id} is still running (pid {previous.pid}); stop it first (Ctrl-C or kill)")
    release(owner)
    if previous is not None and owner.run_id is not None:
        _clear_index_lock(owner.repo, owner.run_id)
    _write_owner(owner.root)
    token = _current.set(owner)
    try:
        yield owner
    finally:
        _current.reset(token)
        release(owner)


def _clear_index_lock(repo: Path, run_id: str) -> None:
    """A loop killed while git wrote the run worktree's index (the commit before validating) left git's
    `index.lock`, and every later `git add` there fails. The killed owner is gone, and no other process
    runs git in a run's worktree, so the lock is stale: removed."""
    path = state_dir(repo) / "worktrees" / run_id
    if not path.is_dir():
        return
    try:
        lock = git.git_dir(git.Worktree(repo, path)) / "index.lock"
    except LoopError:  # not a worktree of the repository any more: nothing of git's to unlock
        return
    if lock.is_file() and not lock.is_symlink():
        log.warning("removing %s, left by the killed loop process before this one", lock)
        lock.unlink()


@contextmanager
def tracked_group(pid: int) -> Iterator[None]:
    """Record the process group `pid` leads (a jailed command just started) for as long as it runs."""
    owner = _current.get()
    if owner is None:
        yield
        return
    record = owner.root / "groups" / f"{pid}.json"
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(processes.record_of(pid).model_dump_json(), encoding="utf-8")
    try:
        yield
    finally:
        record.unlink(missing_ok=True)


@contextmanager
def scratch_worktree(repo: Path, commit: str, *, prefix: str) -> Iterator[Path]:
    """A detached worktree of the user's repository `repo` at `commit`, under the current owner's folder
    (recorded there before git makes it) and removed at the end."""
    owner = _current.get()
    if owner is None or owner.root.parent != state_dir(repo) / OWNED:  # another repository's run
        owner = _process_owner(repo)
    folder = _make_folder(owner.root / "worktrees", prefix)
    path = folder / "tree"
    try:
        git.add_worktree(git.open_repo(repo), path, branch=None, commit=commit)
        yield path
    finally:
        _remove_folder(repo, folder)
        git.command(["worktree", "prune"], cwd=repo, check=False)
        if owner.run_id is None:  # a process owner's folder goes with its last worktree
            for empty in (owner.root / "worktrees", owner.root):
                try:
                    empty.rmdir()
                except OSError:
                    break


def release(owner: Owner) -> list[tuple[str, str]]:
    """Kill the owner's recorded process groups that still run and remove its worktrees; what went, as
    (kind, what): ("process group", "123"), ("worktree", "/path")."""
    gone: list[tuple[str, str]] = []
    if owner.root.is_symlink():
        owner.root.unlink()  # never followed: only the link is loop's
        return gone
    if not owner.root.is_dir():
        return gone
    for record in sorted((owner.root / "groups").glob("*.json")):
        group = _read_record(record)
        if group is not None and _kill_group(group):
            gone.append(("process group", str(group.pid)))
        record.unlink(missing_ok=True)
    trees = owner.root / "worktrees"
    folders = sorted(trees.iterdir()) if trees.is_dir() and not trees.is_symlink() else []
    for folder in folders:
        _remove_folder(owner.repo, folder)
        gone.append(("worktree", str(folder / "tree")))
    if folders:
        git.command(["worktree", "prune"], cwd=owner.repo, check=False)
    shutil.rmtree(owner.root, ignore_errors=True)
    for kind, what in gone:
        log.info("released %s %s of %s", kind, what, owner.root.name)
    return gone


def release_orphans(repo: Path, *, dry_run: bool = False) -> list[tuple[str, str, str]]:
    """(kind, what, why) for every owner under the state dir whose process is gone: its groups killed and
    its worktrees removed (unless `dry_run`). `loop sandbox gc` calls this."""
    root = state_dir(repo) / OWNED
    found: list[tuple[str, str, str]] = []
    if not root.is_dir():
        return found
    for folder in sorted(root.iterdir()):
        why = _orphaned(folder)
        if why is None:
            continue
        owner = Owner(repo, folder, folder.name.removeprefix("run-") if folder.name.startswith("run-") else None)
        if dry_run:
            found.append(("leftovers", str(folder), why))
            continue
        found += [(kind, what, why) for kind, what in release(owner)] or [("leftovers", str(folder), why)]
    return found


def _orphaned(folder: Path) -> str | None:
    """Why `folder`'s owner is gone, or None while it lives (or the folder is not an owner's)."""
    if folder.name.startswith("run-") and _RUN_ID.fullmatch(folder.name[4:]) and folder.is_dir():
        owner = _read_owner(folder)
        if owner is None:
            return f"run {folder.name[4:]}: no record of the process that owns it"
        return None if processes.alive(owner) else f"run {folder.name[4:]}: its process {owner.pid} is gone"
    match = _PROCESS_OWNER.fullmatch(folder.name)
    if match and folder.is_dir():
        pid, started = int(match.group(1)), match.group(2)
        return None if processes.start_time(pid) == started else f"its process {pid} is gone"
    return None


def _process_owner(repo: Path) -> Owner:
    pid = os.getpid()
    return Owner(repo, state_dir(repo) / OWNED / f"pid-{pid}-{processes.start_time(pid)}")


def _read_owner(root: Path) -> ProcessRecord | None:
    return _read_record(root / _OWNER_FILE)


def _read_record(path: Path) -> ProcessRecord | None:
    if path.is_symlink() or not path.is_file():
        return None
    try:
        return ProcessRecord.model_validate_json(path.read_bytes())
    except (OSError, ValueError):
        log.warning("%s: unreadable ownership record; ignored", path)
        return None


def _write_owner(root: Path) -> None:
    """owner.json names this process; a new folder appears whole (made aside, then renamed), so gc never
    sees an owner's folder without its owner."""
    payload = processes.record_of(os.getpid()).model_dump_json()
    root.parent.mkdir(parents=True, exist_ok=True)
    if root.is_dir():
        (root / f".{_OWNER_FILE}.tmp").write_text(payload, encoding="utf-8")
        os.replace(root / f".{_OWNER_FILE}.tmp", root / _OWNER_FILE)
        return
    made = Path(tempfile.mkdtemp(prefix=".new-", dir=root.parent))
    (made / _OWNER_FILE).write_text(payload, encoding="utf-8")
    os.rename(made, root)


def _make_folder(parent: Path, prefix: str) -> Path:
    for _ in range(3):  # a process owner's empty parent may be removed by another thread's last worktree
        parent.mkdir(parents=True, exist_ok=True)
        try:
            return Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
        except FileNotFoundError:
            continue
    raise LoopError(f"{parent}: could not make a folder for a temporary worktree")


def _remove_folder(repo: Path, folder: Path) -> None:
    if folder.is_symlink():
        folder.unlink()
        return
    tree = folder / "tree"
    if tree.is_dir() and not tree.is_symlink():
        git.command(["worktree", "remove", "--force", str(tree)], cwd=repo, check=False)
    shutil.rmtree(folder, ignore_errors=True)


def _kill_group(group: ProcessRecord) -> bool:
    """SIGKILL the process group `group` leads when it is still the one recorded; whether it was there."""
    leader = processes.start_time(group.pid)
    if leader is not None and group.start_time is not None and leader != group.start_time:
        return False  # the pid belongs to another process now
    if leader is None and not processes.group_members(group.pid):
        return False
    try:
        os.killpg(group.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        return False
    deadline = time.monotonic() + _KILL_WAIT
    while processes.group_members(group.pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    return True
