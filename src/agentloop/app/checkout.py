"""The App's checkouts: one clone per repository, fetched (never cloned again) for each job, and a git
worktree per job, removed when the job is done.

    <workdir>/<owner>/<name>/
        git/         the repository's one clone (bare): its default branch and origin/* fetched per job;
                     the runs' own worktrees (`git/loop/worktrees/<run>`), baseline and sandboxes' state
        jobs/<id>/   job <id>'s worktree, detached at the default branch as fetched for it: the checkout
                     its run starts from (two jobs of a repository never share one)
        runs/<run>/  the run records, kept after the job's worktree is gone
    <workdir>/.locks/<owner>/<name>
                     held while git's shared state changes (fetch, worktree add and remove), so that two
                     jobs of one repository never fetch at once; its time is the repository's last use.
                     Outside the repository's folder, so that `gc` can remove that folder while holding it
                     (no account name starts with a dot: it is no owner's folder)

Every path is checked to stay under the workdir (names come from webhooks).
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from agentloop import git as loopgit
from agentloop.errors import LoopError
from agentloop.forge.github import GitHubForge
from agentloop.forge.names import split_slug
from agentloop.paths import state_dir

log = logging.getLogger(__name__)

LOCKS = ".locks"
_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,80}")  # the run ids `loop fix` makes


@dataclass(frozen=True)
class RepoDirs:
    """Where one repository's clone, job worktrees, run records and lock live."""

    root: Path

    @property
    def git(self) -> Path:
        return self.root / "git"

    @property
    def jobs(self) -> Path:
        return self.root / "jobs"

    @property
    def runs(self) -> Path:
        return self.root / "runs"

    @property
    def lock(self) -> Path:
        return self.root.parent.parent / LOCKS / self.root.parent.name / self.root.name

    def job(self, job_id: int) -> Path:
        return self.jobs / str(int(job_id))

    def run_worktree(self, run_id: str) -> Path:
        """Where intake puts a run's own worktree: the clone's state dir (`git/loop`, or LOOP_STATE_DIR)."""
        return state_dir(self.git) / "worktrees" / run_id


def repo_dirs(workdir: Path, slug: str) -> RepoDirs:
    """`<workdir>/<owner>/<name>`, refused unless the names are GitHub's and it stays inside."""
    owner, name = split_slug(slug)
    root = workdir / owner / name
    inside(root, workdir)
    return RepoDirs(root)


@contextmanager
def locked(dirs: RepoDirs, *, wait: bool = True, use: bool = True) -> Iterator[bool]:
    """The repository's lock (across threads and processes: flock on a file each holder opens). With
    `wait=False`, yields False at once when someone holds it; `use` marks the repository used now."""
    dirs.lock.parent.mkdir(parents=True, exist_ok=True)
    new = not dirs.lock.exists()
    with open(dirs.lock, "a+b") as handle:
        if new and not use:
            os.utime(dirs.lock, (0, 0))  # made by a look (gc), not by a use
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            if use:
                os.utime(dirs.lock)  # the repository's last use, for `loop sandbox gc --app-workdir`
            yield True
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def job_checkout(dirs: RepoDirs, job_id: int, forge: GitHubForge, *, refresh: bool) -> Path:
    """The job's worktree. A new run's (`refresh`) is made anew at the default branch as fetched now; a
    resumed run's is the one it had (made anew only if it is gone)."""
    path = dirs.job(job_id)
    with locked(dirs):
        if not refresh and (path / ".git").is_file():
            return path
        default = str(forge.repository().get("default_branch", "main"))
        _fetch(dirs, forge, default)
        _remove_worktree(dirs, path)  # what an earlier attempt of this job left
        dirs.jobs.mkdir(parents=True, exist_ok=True)
        loopgit.command(["worktree", "add", "--quiet", "--detach", "--force", "--", str(path),
                         f"refs/heads/{default}"], cwd=dirs.git)
    return path


def release(dirs: RepoDirs, job_id: int, run_id: str | None) -> None:
    """The job is done: its worktree and its run's worktree go (the run's records and branch stay)."""
    with locked(dirs):
        _remove_worktree(dirs, dirs.job(job_id))
        if run_id and _RUN_ID.fullmatch(run_id) and (dirs.git / "HEAD").is_file():
            # only as a worktree git has registered in this clone
            loopgit.command(["worktree", "remove", "--force", "--force", str(dirs.run_worktree(run_id))],
                            cwd=dirs.git, check=False)


def _fetch(dirs: RepoDirs, forge: GitHubForge, default: str) -> None:
    """The default branch into the clone's own branch (what runs start from), every branch as origin/*.
    Only these refs are written: the runs' `loop/*` branches in the clone are never touched."""
    if not (dirs.git / "HEAD").is_file():
        if dirs.git.exists() or dirs.git.is_symlink():
            _rmtree(dirs.git, dirs.root)  # a clone that died half-way
        loopgit.command(["init", "--quiet", "--bare", str(dirs.git)])
        loopgit.command(["symbolic-ref", "HEAD", f"refs/heads/{default}"], cwd=dirs.git)
    forge.git(["fetch", "--quiet", "--prune", "--no-tags", "--", forge.clone_url(),
               f"+refs/heads/{default}:refs/heads/{default}", "+refs/heads/*:refs/remotes/origin/*"], cwd=dirs.git)


def _remove_worktree(dirs: RepoDirs, path: Path) -> None:
    if path.exists() or path.is_symlink():
        inside(path.parent, dirs.root)
        done = loopgit.command(["worktree", "remove", "--force", "--force", str(path)], cwd=dirs.git, check=False)
        if done.returncode != 0 and (path.exists() or path.is_symlink()):
            # not a worktree git knows (a kill before git registered it, a replaced `.git`): loop's own folder
            log.warning("%s: git could not remove the worktree (%s); deleting it", path, done.stderr.strip())
            _rmtree(path, dirs.root)
    if (dirs.git / "HEAD").is_file():
        loopgit.command(["worktree", "prune"], cwd=dirs.git, check=False)


def inside(path: Path, root: Path) -> Path:
    """`path` resolved, or LoopError when it (or a symlink on the way) leads outside `root`."""
    resolved = path.resolve()
    if not resolved.is_relative_to(root.resolve()):
        raise LoopError(f"{path}: outside the work directory {root}; refusing to touch it")
    return resolved


def _rmtree(path: Path, root: Path) -> None:
    inside(path.parent, root)
    if path.is_symlink():
        path.unlink()  # never follow a link out of the workdir
    else:
        inside(path, root)
        shutil.rmtree(path)
