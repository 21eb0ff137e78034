"""Loop's own git: the user's repository and the runs' worktrees. The user's checkout is never edited.

A run's worktree is written by the agent, its `.git` entry included, so nothing in it may steer the git
that loop runs on the host with its own privileges:

- a worktree's git dir is found from the user's side (the `<common>/worktrees/<name>` whose `gitdir`
  file names `<worktree>/.git`) and passed with `--git-dir`/`--work-tree`, never discovered; before each
  call the worktree's `.git` must still be the file loop made, else `WorktreeTampered` stops the run;
- settings that run commands are switched off on the command line, which wins over every config file:
  fsmonitor, hooks, the untracked cache, the pager, automatic gc; diffs use `--no-ext-diff
  --no-textconv` and never look inside a nested repository's working tree (its own config would run);
- every git process gets an environment without secret-looking variables and without any inherited
  `GIT_*` variable (`GIT_DIR`, `GIT_INDEX_FILE`, `GIT_CONFIG_*`, `GIT_EXEC_PATH`, `GIT_SSH*`...), and
  never prompts. A push gets its credential passed to that one call (`env=`).

Clean/smudge filters (git-lfs) still apply: a `.gitattributes` can only pick drivers the user's own
config defines, and a commit made without them would be wrong.
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import git

from agentloop import locks
from agentloop.errors import RepoError, WorktreeTampered
from agentloop.redact import redact, scrubbed_env

log = logging.getLogger(__name__)

SAFE_CONFIG = (
    "core.fsmonitor=false",
    "core.hooksPath=/dev/null",
    "core.untrackedCache=false",
    "core.pager=cat",
    "gc.auto=0",
    "maintenance.auto=false",
    "status.submoduleSummary=false",
    "submodule.recurse=false",
    "protocol.ext.allow=never",
)
# Diffs on a worktree: no external or textconv drivers, and a nested repository is compared by its commit
# only (looking at its working tree runs `git status` there, under that repository's own config).
_DIFF_FLAGS = ("--no-ext-diff", "--no-textconv", "--ignore-submodules=dirty")
# Only for talking to a remote: where to find the user's certificate authorities.
_NETWORK_VARS = ("GIT_SSL_CAINFO", "GIT_SSL_CAPATH", "GIT_SSL_NO_VERIFY", "GIT_PROXY_SSL_CAINFO")
_LOOP_IDENTITY = {"GIT_AUTHOR_NAME": "loop", "GIT_AUTHOR_EMAIL": "loop@localhost",
                  "GIT_COMMITTER_NAME": "loop", "GIT_COMMITTER_EMAIL": "loop@localhost"}
_MAX_DOT_GIT = 4096


@dataclass(frozen=True)
class Worktree:
    """A checkout of the user's repository `repo` at `path`: a linked worktree registered in `repo`'s git
    directory, or `repo`'s own working tree. `repo` is trusted; what is under `path` is not."""

    repo: Path
    path: Path


def environment(extra: Mapping[str, str] | None = None, *, network: bool = False) -> dict[str, str]:
    """The environment of every git process loop starts: no secrets, no inherited GIT_* variables."""
    keep = _NETWORK_VARS if network else ()
    env = {k: v for k, v in scrubbed_env().items() if not k.startswith("GIT_") or k in keep}
    env.update({"GIT_TERMINAL_PROMPT": "0", "GIT_PAGER": "cat", "PAGER": "cat"})
    env.update(extra or {})
    return env


def command(
    args: Sequence[str], *, cwd: Path | None = None, env: Mapping[str, str] | None = None, check: bool = True,
    network: bool = False, timeout: float | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run `git args` with the hardened settings and environment; a failure (when `check`) is a RepoError
    with git's message, secrets masked (including any value of `env`)."""
    argv = ["git", *(item for setting in SAFE_CONFIG for item in ("-c", setting)), *args]
    try:
        done = subprocess.run(argv, cwd=cwd, env=environment(env, network=network), stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, encoding="utf-8", errors="replace",
                              timeout=timeout, check=False)
    except (FileNotFoundError, NotADirectoryError):
        if cwd is not None and not cwd.is_dir():
            raise RepoError(f"{cwd}: no such directory") from None
        raise RepoError("git is not installed (or not on PATH); install git") from None
    if check and done.returncode != 0:
        detail = redact(_gist(done.stderr), extra=(env or {}).values())
        raise RepoError(f"git {_verb(args)} in {cwd or Path.cwd()} failed (exit {done.returncode}): {detail}")
    return done


def _gist(stderr: str) -> str:
    """git's own error lines (`fatal:`, `error:`), else its last line: one line for the user."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith(("fatal:", "error:"))]
    return " ".join(errors or lines[-1:])[:1000] or "(no message)"


def _verb(args: Sequence[str]) -> str:
    """The git subcommand in `args` (after global options and their values)."""
    words = iter(args)
    for word in words:
        if word in ("--git-dir", "--work-tree", "-c", "-C"):
            next(words, None)
        elif not word.startswith("-"):
            return word
    return ""


# -- the user's repository -------------------------------------------------------------------------------


def open_repo(path: Path) -> git.Repo:
    try:
        return git.Repo(path)
    except (git.InvalidGitRepositoryError, git.NoSuchPathError):
        raise RepoError(f"{path}: not a git repository; run `git init` or cd to your repository") from None


def _top(repo: git.Repo) -> Path:
    return Path(str(repo.working_tree_dir or repo.git_dir))


def ensure_clean(repo: git.Repo) -> None:
    """Refuse a dirty checkout: the run's base must be a commit the user can see."""
    top = _top(repo)
    if command(["rev-parse", "--verify", "-q", "HEAD^{commit}"], cwd=top, check=False).returncode != 0:
        raise RepoError(f"{top}: no commits yet; commit your code first")
    # GIT_OPTIONAL_LOCKS: looking must not rewrite the user's index.
    listed = command(["status", "--porcelain=v1", "-z", "--untracked-files=no"], cwd=top,
                     env={"GIT_OPTIONAL_LOCKS": "0"}).stdout
    changed: list[str] = []
    entries = iter(listed.split("\0"))
    for entry in entries:
        if len(entry) > 3:
            changed.append(entry[3:])
            if entry[0] in "RC":  # a rename or copy is followed by its source
                next(entries, None)
    if changed:
        names = ", ".join(sorted(set(changed))[:5])
        raise RepoError(f"{top}: uncommitted changes ({names}); commit or stash them first")


def resolve_base(repo: git.Repo, base_branch: str) -> str:
    for ref in (base_branch, f"origin/{base_branch}"):
        if ref.startswith("-"):
            continue
        done = command(["rev-parse", "--verify", "-q", f"{ref}^{{commit}}"], cwd=_top(repo), check=False)
        if done.returncode == 0 and done.stdout.strip():
            return done.stdout.strip()
    raise RepoError(f"base branch {base_branch!r} not found; set `base_branch` in loop.yaml")


def add_worktree(repo: git.Repo, path: Path, *, branch: str | None, commit: str) -> Path:
    """A worktree at `path` on a new `branch` (or detached when branch is None) at `commit`."""
    if path.exists() and (path / ".git").exists():
        return path
    args = ["worktree", "add", "--force", "--quiet"]
    args += ["-B", branch] if branch else ["--detach"]
    top = _top(repo)
    with _worktrees_locked(top):
        command([*args, str(path), commit], cwd=top)
    return path


def remove_worktree(repo: git.Repo, path: Path) -> None:
    top = _top(repo)
    with _worktrees_locked(top):
        if path.exists() or path.is_symlink():
            done = command(["worktree", "remove", "--force", str(path)], cwd=top, check=False)
            if done.returncode == 0:
                return
            # git refuses a worktree whose `.git` was replaced; it is loop's own scratch copy, so it goes anyway
            log.warning("%s: git could not remove the worktree (%s); deleting it", path, done.stderr.strip())
            shutil.rmtree(path, ignore_errors=True)
        command(["worktree", "prune"], cwd=top)


@contextmanager
def _worktrees_locked(top: Path) -> Iterator[None]:
    """One worktree add/remove/prune at a time per repository, across loop's processes: a prune (or any
    listing) while another process is half-way through an add reads an admin dir without `commondir`
    and fails, or prunes the new worktree."""
    lock = Path(command(["rev-parse", "--git-common-dir"], cwd=top).stdout.strip())
    with locks.held((lock if lock.is_absolute() else top / lock) / "loop-worktrees.lock"):
        yield


def common_dir(repo: Path) -> Path:
    """The user's repository's common git directory (where `worktrees/` and `config` live)."""
    out = command(["rev-parse", "--git-common-dir"], cwd=repo).stdout.strip()
    return (repo / out).resolve() if not Path(out).is_absolute() else Path(out).resolve()


def has_commit(repo: Path, sha: str) -> bool:
    return command(["cat-file", "-e", f"{sha}^{{commit}}"], cwd=repo, check=False).returncode == 0


def diff_commits(repo: Path, base: str, head: str) -> str:
    """The change from `base` to `head` as a binary-safe patch (commits of the user's repository)."""
    return command(["diff", "--binary", *_DIFF_FLAGS, base, head, "--"], cwd=repo).stdout


# -- a run's worktree ------------------------------------------------------------------------------------


def _repo_dirs(repo: Path) -> tuple[Path, Path, Path]:
    """The repository's top, its own git dir and its common git dir."""
    out = command(["rev-parse", "--show-toplevel", "--absolute-git-dir", "--git-common-dir"],
                  cwd=repo).stdout.splitlines()
    common = Path(out[2])
    return Path(out[0]).resolve(), Path(out[1]).resolve(), (common if common.is_absolute() else repo / common).resolve()


def find_worktree(repo: Path, path: Path) -> Worktree | None:
    """`path` as a checkout of `repo` (its own working tree or a registered worktree), else None."""
    top, _, common = _repo_dirs(repo)
    real = Path(os.path.realpath(path))
    return Worktree(repo, path) if real == top or _admin_dirs(common, real) else None


def git_dir(worktree: Worktree) -> Path:
    """The worktree's git directory, from the repository's side, after checking the worktree's `.git`."""
    top, own, common = _repo_dirs(worktree.repo)
    path = Path(os.path.realpath(worktree.path))
    if path == top:
        return own  # the user's own checkout: its `.git` is the user's
    admins = _admin_dirs(common, path)
    if not admins:
        raise WorktreeTampered(
            f"{worktree.path}: no worktree of {worktree.repo} is registered there any more (its .git was "
            "removed or replaced); the run stops because the worktree's .git was changed"
        )
    return _checked(worktree.path, admins)


def _admin_dirs(common: Path, path: Path) -> list[Path]:
    """`<common>/worktrees/*` whose `gitdir` file names `<path>/.git`."""
    found: list[Path] = []
    registered = common / "worktrees"
    for gitdir_file in sorted(registered.glob("*/gitdir")) if registered.is_dir() else []:
        try:
            named = Path(gitdir_file.read_text(encoding="utf-8").strip())
        except (OSError, UnicodeDecodeError):
            continue
        named = named if named.is_absolute() else gitdir_file.parent / named
        if named.name == ".git" and Path(os.path.realpath(named.parent)) == path:
            found.append(Path(os.path.realpath(gitdir_file.parent)))
    return found


def _checked(path: Path, admins: list[Path]) -> Path:
    """The admin dir that `<path>/.git` names, when it is a plain file saying exactly `gitdir: <admin>`."""
    dot_git = path / ".git"
    expected = f"gitdir: {admins[0]}"

    def tampered(what: str) -> WorktreeTampered:
        return WorktreeTampered(
            f"{dot_git} {what}, not the file `{expected}` loop made: the run stops because the worktree's "
            ".git was changed (loop runs no git there); see what the agent did in the run's transcript"
        )

    try:  # O_NOFOLLOW: a symlink is refused, not followed; O_NONBLOCK: a FIFO cannot hang loop
        fd = os.open(dot_git, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        raise tampered("is missing") from None
    except OSError:
        kind = "is a symlink" if dot_git.is_symlink() else "cannot be read"
        raise tampered(kind) from None
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise tampered("is a directory")
        if not stat.S_ISREG(mode):
            raise tampered("is not a regular file")
        data = os.read(fd, _MAX_DOT_GIT + 1)
    finally:
        os.close(fd)
    text = data.decode("utf-8", errors="replace")
    if len(data) > _MAX_DOT_GIT or not text.startswith("gitdir: ") or "\n" in text.rstrip("\n"):
        raise tampered("has other content")
    named = Path(text[len("gitdir: "):].rstrip("\n"))
    named = Path(os.path.realpath(named if named.is_absolute() else path / named))
    for admin in admins:
        if named == admin:
            return admin
    raise tampered(f"names {named}")


def run(worktree: Worktree, *args: str, env: Mapping[str, str] | None = None, check: bool = True,
        network: bool = False, timeout: float | None = None) -> subprocess.CompletedProcess[str]:
    """`git args` on a worktree with its trusted git dir passed explicitly (see the module docstring)."""
    directory = git_dir(worktree)
    # What the project's setup steps made (a .venv) is not part of the change; see project_env.
    excludes = directory / "loop-excludes"
    ignore = ["-c", f"core.excludesFile={excludes}"] if excludes.is_file() else []
    return command([*ignore, "--git-dir", str(directory), "--work-tree", str(worktree.path), *args], cwd=worktree.path,
                   env=env, check=check, network=network, timeout=timeout)


def diff(worktree: Worktree, base: str) -> str:
    """The worktree's whole change against `base`, new files included."""
    run(worktree, "add", "--all", "--intent-to-add")
    return run(worktree, "diff", "--binary", *_DIFF_FLAGS, base, "--").stdout


def changed_files(worktree: Worktree, base: str) -> list[str]:
    run(worktree, "add", "--all", "--intent-to-add")
    names = run(worktree, "diff", "--name-only", "-z", *_DIFF_FLAGS, base, "--").stdout
    return [name for name in names.split("\0") if name]


def ls_files(worktree: Worktree) -> list[str]:
    """Tracked and new (not ignored) files."""
    listed = run(worktree, "ls-files", "-z", "--cached", "--others", "--exclude-standard").stdout
    return [name for name in listed.split("\0") if name]


def commit_all(worktree: Worktree, message: str) -> str:
    """Commit everything in the worktree (one commit per published run); return the head sha."""
    run(worktree, "add", "--all")
    staged = run(worktree, "diff", "--cached", "--quiet", *_DIFF_FLAGS, check=False)
    if staged.returncode not in (0, 1):
        raise RepoError(f"git diff --cached in {worktree.path} failed: {staged.stderr.strip()[-500:]}")
    if staged.returncode == 1:
        run(worktree, "commit", "--quiet", "--no-verify", "-m", message, env=_LOOP_IDENTITY)
    return head(worktree)


def head(worktree: Worktree) -> str:
    return run(worktree, "rev-parse", "--verify", "HEAD^{commit}").stdout.strip()


def push(worktree: Worktree, remote: str, refspec: str, *, env: Mapping[str, str],
         timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Push from the worktree; `env` carries the credential for this call only. The caller reads the
    result (its errors need the forge's own redaction)."""
    return run(worktree, "push", "--force", "--", remote, refspec, env=env, check=False, network=True,
               timeout=timeout)
