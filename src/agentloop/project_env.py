"""The project's own environment: the PATH and variables every project command sees (services, suites,
the agent's shell), and the `setup:` steps that install its dependencies into each fresh checkout.

Never loop's own interpreter: `python3` inside a jail is the project's (`path:` first, e.g. `.venv/bin`),
else the host's. Setup steps run confined like everything else from the repository. What a step `creates`
is cached by the hash of its command and its `inputs` (lockfiles), so the baseline, the run's worktree,
the base-commit comparison and every run of a batch share one install:

- an entry is stored only from a checkout of a commit as loop made it (the base), never after the agent
  has edited it, so an agent cannot plant a poisoned virtualenv for later runs;
- entries are scoped to one repository (its git directory) unless `LOOP_SETUP_CACHE` names a directory
  shared on purpose (a team's CI, the test suite): everyone writing there is trusted alike;
- restored trees are copied (never linked) and the old checkout's absolute path is rewritten in their
  text files (scripts' `#!` lines, `pyvenv.cfg`, editable-install finders), as a venv records where it was made.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from agentloop import git, locks
from agentloop.config import LoopConfig, SetupStep
from agentloop.errors import DeployError
from agentloop.paths import state_dir

if TYPE_CHECKING:
    from agentloop.confine import Confinement

log = logging.getLogger(__name__)

_MARKER = "loop-setup.json"  # in the checkout's git admin dir: what is installed there, and from which key
EXCLUDES = "loop-excludes"  # in the same place: what setup made, kept out of diffs and commits (see git.run)
_RELOCATE_MAX_BYTES = 1024 * 1024


class SetupFailed(DeployError):
    """A setup step exited non-zero or timed out. Its output tail goes to the agent like a crash log."""


@dataclass(frozen=True)
class SetupItem:
    name: str  # `setup[0]` or `services.api.setup[1]`: how errors and logs name it
    step: SetupStep
    cwd: str  # relative to the checkout's top: "" or a service's path


@dataclass(frozen=True)
class ProjectEnv:
    """`path:`, `env:` and the setup steps of loop.yaml: what a checkout needs to run the project."""

    path: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    steps: tuple[SetupItem, ...] = ()

    @classmethod
    def of(cls, config: LoopConfig) -> ProjectEnv:
        steps = [SetupItem(f"setup[{i}]", step, "") for i, step in enumerate(config.setup)]
        for service_name, service in config.services.items():
            steps += [SetupItem(f"services.{service_name}.setup[{i}]", step, service.path)
                      for i, step in enumerate(service.setup)]
        return cls(path=tuple(config.path), env=dict(config.env), steps=tuple(steps))

    def path_first(self, checkout: Path) -> list[Path]:
        """The `path:` directories for commands in `checkout` (relative ones inside it)."""
        return [Path(entry) if Path(entry).is_absolute() else checkout / entry for entry in self.path]

    def variables(self, *layers: Mapping[str, str]) -> dict[str, str]:
        """`env:` with later layers (a suite's own `env`, loop's variables) on top."""
        merged = dict(self.env)
        for layer in layers:
            merged.update(layer)
        return merged


@dataclass(frozen=True)
class StepDone:
    name: str
    how: str  # "ran", "restored", "installed" (already there)
    seconds: float


def cache_root(state: Path) -> Path:
    """`$LOOP_SETUP_CACHE` (shared on purpose) or `<state>/setup-cache` (this repository only)."""
    shared = os.environ.get("LOOP_SETUP_CACHE")
    root = Path(shared) if shared else state / "setup-cache"
    root.mkdir(parents=True, exist_ok=True)
    return root


def prepare(checkout: Path, *, repo: Path, confinement: Confinement, share: bool) -> list[StepDone]:
    """Bring `checkout` (a worktree of the user's repository `repo`) to what the project's setup steps
    (`confinement.project`) make: skip what is installed with the same key, restore from the cache, else
    run the step confined, storing its result when `share` (a checkout no agent has touched)."""
    steps = confinement.project.steps
    if not steps:
        return []
    admin_dir = git.git_dir(git.Worktree(repo, checkout))  # out of the checkout's (the agent's) reach
    cache = cache_root(state_dir(repo))
    marker = admin_dir / _MARKER
    installed = _read_marker(marker)
    _write_excludes(admin_dir, steps)
    done: list[StepDone] = []
    for item in steps:
        started = time.monotonic()
        key = step_key(checkout, item)
        creates = [_inside(checkout, item, path) for path in item.step.creates]
        if installed.get(item.name) == key and all(path.exists() for path in creates):
            done.append(StepDone(item.name, "installed", 0.0))
            continue
        with locks.held(cache / f"{key}.lock"):
            entry = cache / key
            if item.step.creates and entry.is_dir():
                _restore(entry, checkout, item)
                how = "restored"
            else:
                for path in creates:  # a fresh install, not one layered over the old inputs' result
                    _remove(path)
                _run(checkout, item, confinement)
                how = "ran"
                if share and item.step.creates:
                    _store(entry, checkout, item)
        installed[item.name] = key
        marker.write_text(json.dumps(installed, indent=1), encoding="utf-8")
        done.append(StepDone(item.name, how, time.monotonic() - started))
        log.info("%s: %s in %.1fs (%s)", item.name, how, done[-1].seconds, checkout)
    return done


def step_key(checkout: Path, item: SetupItem) -> str:
    """What the step's result depends on: its command, where it runs, what it creates, the bytes of its
    inputs (globs expanded, sorted) and the machine's kind."""
    digest = hashlib.sha256()
    for part in (item.step.run, item.cwd, *item.step.creates, platform.machine(), platform.system()):
        digest.update(part.encode() + b"\0")
    base = checkout / item.cwd
    for pattern in item.step.inputs:
        matches = sorted(base.glob(pattern)) if any(c in pattern for c in "*?[") else [base / pattern]
        for path in matches:
            digest.update(str(path.relative_to(base)).encode() + b"\0")
            digest.update(_file_digest(path))
    return digest.hexdigest()[:32]


def _file_digest(path: Path) -> bytes:
    if path.is_symlink() or not path.is_file():
        return b"missing"  # a symlink out of the checkout must not make loop read its target
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").digest()


def _run(checkout: Path, item: SetupItem, confinement: Confinement) -> None:
    home = Path(tempfile.mkdtemp(prefix="loop-setup-home-"))
    project = confinement.project
    try:
        env = confinement.env(project.variables({"LOOP_SETUP": item.name}), home=home,
                              path_first=project.path_first(checkout))
        finished = confinement.run(
            ["/bin/sh", "-c", item.step.run], cwd=checkout / item.cwd, env=env, writable=[checkout], home=home,
            network=item.step.network, timeout=item.step.timeout,
            output_limit=confinement.limits.output_mb * 1024 * 1024,
        )
    finally:
        shutil.rmtree(home, ignore_errors=True)
    if finished.exit_code == 0 and not finished.timed_out:
        return
    why = (f"timed out after {item.step.timeout:.0f}s" if finished.timed_out
           else f"exited {finished.exit_code}")
    tail = finished.output[-4000:]
    raise SetupFailed(f"loop.yaml {item.name} ({item.step.run!r}) {why} in {checkout / item.cwd}; "
                      f"its output ends with:\n{tail}", service="setup", exit_code=finished.exit_code,
                      log_tail=tail)


def _store(entry: Path, checkout: Path, item: SetupItem) -> None:
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=entry.parent))
    try:
        for index, relative in enumerate(item.step.creates):
            made = checkout / item.cwd / relative
            if not made.exists():
                raise SetupFailed(f"loop.yaml {item.name} finished but did not create {relative!r} (its "
                                  "`creates`); fix the command or the list", service="setup")
            _copy(made, staging / str(index))
        (staging / "origin.json").write_text(json.dumps({"checkout": str(checkout)}), encoding="utf-8")
        staging.rename(entry)
    except FileExistsError:
        pass  # someone else stored the same key first; theirs is as good
    except OSError as exc:
        log.warning("could not cache %s in %s (%s); it will run again next time", item.name, entry, exc)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _restore(entry: Path, checkout: Path, item: SetupItem) -> None:
    origin = Path(json.loads((entry / "origin.json").read_text(encoding="utf-8"))["checkout"])
    for index, relative in enumerate(item.step.creates):
        target = _inside(checkout, item, relative)
        _remove(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        _copy(entry / str(index), target)
        if origin != checkout:
            _relocate(target, str(origin).encode(), str(checkout).encode())


def _inside(checkout: Path, item: SetupItem, relative: str) -> Path:
    """`checkout/cwd/relative`, refused when a directory on the way is a symlink out of the checkout:
    loop removes and writes there with its own privileges."""
    path = checkout / item.cwd / relative
    if not path.parent.resolve().is_relative_to(checkout.resolve()):
        raise SetupFailed(f"loop.yaml {item.name}: {item.cwd or '.'}/{relative} leads out of {checkout} through a "
                          "symlink; loop does not write there", service="setup")
    return path


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)


def _copy(source: Path, target: Path) -> None:
    if source.is_dir() and not source.is_symlink():
        shutil.copytree(source, target, symlinks=True)
    else:
        shutil.copy2(source, target, follow_symlinks=False)


def _relocate(root: Path, old: bytes, new: bytes) -> None:
    """Rewrite `old` (the checkout a tree was made in) to `new` in the tree's text files, and in the
    targets of its absolute symlinks."""
    for path in _files(root):
        if path.is_symlink():
            target = os.readlink(path)
            if target.encode().startswith(old):
                path.unlink()
                path.symlink_to(new.decode() + target[len(old.decode()):])
            continue
        try:
            if path.stat().st_size > _RELOCATE_MAX_BYTES:
                continue
            data = path.read_bytes()
        except OSError:
            continue
        if old in data and b"\0" not in data:
            mode = path.stat().st_mode
            path.write_bytes(data.replace(old, new))
            path.chmod(mode)


def _files(root: Path) -> Iterator[Path]:
    if not root.is_dir() or root.is_symlink():
        yield root
        return
    for directory, dirs, files in os.walk(root):
        base = Path(directory)
        yield from (base / name for name in files)
        yield from (base / name for name in dirs if (base / name).is_symlink())


def _read_marker(marker: Path) -> dict[str, str]:
    try:
        data = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def _write_excludes(admin_dir: Path, steps: Sequence[SetupItem]) -> None:
    lines = {"/" + "/".join(p for p in (item.cwd.strip("/"), created.strip("/")) if p)
             for item in steps for created in item.step.creates}
    (admin_dir / EXCLUDES).write_text("".join(f"{line}\n" for line in sorted(lines)), encoding="utf-8")
