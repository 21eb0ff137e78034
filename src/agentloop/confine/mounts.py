"""What a jail sees: the host paths bound into it (system, toolchains, the worktree's git view) and the
hand-over of writable paths to the jail's user."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc", "/opt", "/nix/store")


_ETC_SECRET_FILES = ("/etc/shadow", "/etc/gshadow", "/etc/shadow-", "/etc/gshadow-", "/etc/sudoers",
                     "/etc/security/opasswd", "/etc/.pwd.lock")


_ETC_SECRET_DIRS = ("/etc/ssh", "/etc/ssl/private", "/etc/sudoers.d", "/etc/kubernetes", "/etc/docker",
                    "/etc/rancher", "/etc/letsencrypt", "/etc/pki/private")


@dataclass(frozen=True)
class GitView:
    """The parts of the user's git directory a worktree needs for `git diff`/`git status`, read-only."""

    admin_dir: Path  # <common>/worktrees/<name>
    common_dir: Path
    config: Path  # a config with only the format settings of the real one, made by loop


def chown_tree(root: Path, uid: int) -> None:
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
def system_binds() -> tuple[str, ...]:
    args: list[str] = []
    for name in SYSTEM_DIRS:
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


def toolchain_dirs() -> list[Path]:
    """The Python loop runs under and the PATH directories outside the system ones (pyenv, cargo, a
    venv): read-only, so `python3`, `pytest` and the project's tools resolve inside the jail."""
    found: list[Path] = []
    for raw in [sys.prefix, sys.base_prefix, *os.environ.get("PATH", "").split(os.pathsep)]:
        if not raw:
            continue
        path = Path(raw).resolve()
        if not path.is_dir() or any(_under(path, Path(system)) for system in SYSTEM_DIRS):
            continue
        if path == Path.home().resolve() or path == Path("/"):
            continue  # never a whole home directory
        found.append(path)
    manager = pyenv_root()
    if manager is not None:
        found.append(manager)
    return list(dict.fromkeys(found))


def pyenv_root() -> Path | None:
    """pyenv's root when PATH goes through its shims: a shim runs `<root>/libexec/pyenv`, which reads the
    version files there, so the jail needs the root (read-only) and PYENV_ROOT to find it."""
    for raw in os.environ.get("PATH", "").split(os.pathsep):
        shims = Path(raw)
        if shims.name != "shims" or not raw:
            continue
        for root in (shims.parent, shims.parent.parent.parent):  # <root>/shims, <root>/plugins/<p>/shims
            if (root / "libexec" / "pyenv").is_file():
                return root.resolve()
    return None


def _under(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def mount_parents(targets: Iterable[Path]) -> list[Path]:
    """Directories to create (0755) before mounting `targets`: their ancestors outside the system dirs."""
    parents: set[Path] = set()
    for target in targets:
        for parent in target.parents:
            if parent == Path("/") or any(_under(parent, Path(system)) for system in SYSTEM_DIRS):
                continue
            if parent == Path("/tmp"):
                continue
            parents.add(parent)
    return sorted(parents, key=lambda path: len(path.parts))


def git_binds(git: GitView) -> list[tuple[str, Path, Path]]:
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
