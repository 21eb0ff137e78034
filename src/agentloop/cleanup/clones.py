"""The GitHub App's checkouts under `<workdir>/repos` (layout: `agentloop.app.checkout`).

For each repository, holding its lock (a repository whose lock a job holds right now is left alone):

- a **job worktree** (`jobs/<id>`) goes once its job is neither queued nor running (the queue says): the
  worker removes it when the job ends, so one left means a crash in between;
- a **run's worktree** goes once its run is not running and no queued or running job carries the run;
- a **run record** (`runs/<run>`), with the run's branch in the clone, goes once the run ended longer
  ago than the retention;
- the **whole repository** (its clone, records and all) goes when nothing of it is in use and nothing
  has used it for the retention: its last use is the newest of a job's start or end (the lock's time),
  the last fetch, and the run records.

Clones of the earlier layout (`<owner>/<name>/issue-<n>`, one per issue) go when no job for their issue
is queued or running, no run in them is running, and they are idle past the retention. Without a queue to
ask, nothing is removed.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from agentloop import git
from agentloop.app.checkout import LOCKS, RepoDirs, locked
from agentloop.app.queue import JobQueue
from agentloop.cleanup import Collector, days
from agentloop.errors import LoopError
from agentloop.forge.names import split_slug
from agentloop.loop.nodes.intake import branch_name
from agentloop.runs.folder import CorruptRecord, RunSummary, process_alive, read_summary

_ISSUE = re.compile(r"issue-([1-9][0-9]{0,9})")
_JOB = re.compile(r"[1-9][0-9]{0,17}")
_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,80}")
# what the worker and a run write to as they use an earlier-layout clone
_TOUCHED = (".", ".git", ".git/FETCH_HEAD", ".git/index", ".git/HEAD", ".git/logs/HEAD", ".loop/runs")
_ACTIVE = ("queued", "running")


def collect_clones(workdir: Path, queue: JobQueue | None, out: Collector, *, now: float, retention: float) -> None:
    """The App's idle checkouts under `workdir/repos` (the App's `--workdir`)."""
    repos = workdir / "repos"
    if not repos.is_dir():
        raise LoopError(f"--app-workdir {workdir}: no `repos` folder of App clones there; give the directory "
                        "`loop serve --workdir` uses (by default ~/.local/state/loop/serve)")
    if queue is None:
        out.kept("clone", str(repos), f"no job queue at {workdir / 'queue.sqlite3'} to say which clones are in "
                 "use; give the App's queue with --queue")
        return
    root = repos.resolve()
    for folder in sorted(repos.glob("*/*")):
        if folder.parent.name == LOCKS:
            continue
        slug = f"{folder.parent.name}/{folder.name}"
        if not _named_by_github(slug) or folder.is_symlink() or not folder.is_dir() \
                or folder.resolve().parent.parent != root:
            out.kept("clone", str(folder), "not a folder the App made; not loop's to remove")
            continue
        dirs = RepoDirs(folder)
        with locked(dirs, wait=False, use=False) as ours:
            if not ours:
                out.kept("clone", str(folder), f"a job of {slug} is fetching or cleaning up right now")
                continue
            _collect_repository(dirs, slug, queue, out, now=now, retention=retention)


def _collect_repository(dirs: RepoDirs, slug: str, queue: JobQueue, out: Collector, *, now: float,
                        retention: float) -> None:
    busy = _legacy_clones(dirs, slug, queue, out, now=now, retention=retention)
    active_runs: set[str] = set()
    for path in sorted(dirs.jobs.iterdir()) if dirs.jobs.is_dir() else []:
        job = queue.get(int(path.name)) if _JOB.fullmatch(path.name) else None
        if job is not None and job.status in _ACTIVE:
            out.kept("worktree", str(path), f"job {job.id} for {slug}#{job.issue} is {job.status}")
            busy, active_runs = True, active_runs | ({job.run_id} if job.run_id else set())
            continue
        why = f"job {path.name} is {job.status}" if job is not None else f"no job {path.name} in the queue"
        _remove(dirs, path, "worktree", f"{why}; its worktree was left behind", out)
    for summary in _runs(dirs):
        running = _running(summary)
        if running or summary.id in active_runs:
            busy = True
            continue
        tree = dirs.run_worktree(summary.id) if (dirs.git / "HEAD").is_file() else None
        if tree is not None and tree.exists():
            _remove(dirs, tree, "worktree", f"{summary.status} run {summary.id}: its job is done", out)
        age = now - (summary.ended_at or summary.started_at)
        if age > retention:
            _old_run(dirs, summary, out, f"{summary.status} run {summary.id}, ended {days(age)} ago, older than "
                     f"the retention of {days(retention)}")
    if busy:
        return
    idle = now - _last_use(dirs)
    if idle <= retention:
        return
    why = f"{slug}: no job queued or running, unused for {days(idle)} (retention {days(retention)})"
    if _remove(dirs, dirs.root, "clone", why, out) and not out.dry_run and not any(dirs.root.parent.iterdir()):
        dirs.root.parent.rmdir()  # the owner's folder, left empty


def _legacy_clones(dirs: RepoDirs, slug: str, queue: JobQueue, out: Collector, *, now: float,
                   retention: float) -> bool:
    """The earlier layout's per-issue clones; True while one of them is kept."""
    kept = False
    for clone in sorted(dirs.root.glob("issue-*")):
        number = _ISSUE.fullmatch(clone.name)
        if number is None or clone.is_symlink() or not clone.is_dir():
            out.kept("clone", str(clone), "not a clone the App made; not loop's to remove")
            kept = True
            continue
        issue = int(number.group(1))
        job = queue.active(slug, issue)
        running = next((f"run {s.id} in it is running" for s in _runs_in(clone / ".loop" / "runs") if _running(s)), "")
        if job is not None or running:
            out.kept("clone", str(clone), f"job {job.id} for {slug}#{issue} is {job.status}" if job else running)
            kept = True
            continue
        idle = now - _legacy_last_use(clone)
        if idle <= retention:
            kept = True
            continue
        why = f"{slug}#{issue}: no job queued or running, unused for {days(idle)} (retention {days(retention)})"
        kept = not _remove(dirs, clone, "clone", why, out) or kept
    return kept


def _old_run(dirs: RepoDirs, summary: RunSummary, out: Collector, why: str) -> None:
    """A record past the retention, and the run's branch in the clone (pushed, or in the record's diff)."""
    folder = dirs.runs / summary.id
    if _remove(dirs, folder, "record", why, out) and (dirs.git / "HEAD").is_file():
        branch = branch_name(summary.issue, summary.id)
        listed = git.command(["branch", "--list", branch], cwd=dirs.git, check=False).stdout.strip()
        if listed:
            if not out.dry_run:
                git.command(["branch", "-D", branch], cwd=dirs.git, check=False)
            out.removed("branch", f"{branch} in {dirs.git}", why)


def _remove(dirs: RepoDirs, path: Path, kind: str, why: str, out: Collector) -> bool:
    """Remove `path` (a worktree through git first), never outside the repository's folder."""
    inside = path.is_symlink() or path.resolve().is_relative_to(dirs.root.resolve())
    if kind == "worktree" and (dirs.git / "HEAD").is_file():
        registered = _registered(dirs)
        inside = inside or path.resolve() in registered  # a run's worktree under LOOP_STATE_DIR
    if not inside:
        out.kept(kind, str(path), f"it leads outside {dirs.root}; not loop's to remove")
        return False
    if not out.dry_run:
        try:
            if kind == "worktree" and (dirs.git / "HEAD").is_file():
                git.command(["worktree", "remove", "--force", "--force", str(path)], cwd=dirs.git, check=False)
            if path.is_symlink() or path.is_file():
                path.unlink()
            elif path.exists():
                shutil.rmtree(path)
            if kind == "worktree" and (dirs.git / "HEAD").is_file():
                git.command(["worktree", "prune"], cwd=dirs.git, check=False)
        except OSError as exc:
            out.kept(kind, str(path), f"could not delete it: {exc.strerror or exc}")
            return False
    out.removed(kind, str(path), why)
    return True


def _registered(dirs: RepoDirs) -> set[Path]:
    listed = git.command(["worktree", "list", "--porcelain"], cwd=dirs.git, check=False).stdout
    return {Path(line[len("worktree "):]).resolve() for line in listed.splitlines() if line.startswith("worktree ")}


def _runs(dirs: RepoDirs) -> list[RunSummary]:
    return [s for s in _runs_in(dirs.runs) if _RUN_ID.fullmatch(s.id) and (dirs.runs / s.id).is_dir()]


def _runs_in(folder: Path) -> list[RunSummary]:
    summaries = []
    for path in sorted(folder.glob("*/run.json")):
        try:
            summary = read_summary(path)
        except CorruptRecord:
            continue
        if summary.id == path.parent.name:
            summaries.append(summary)
    return summaries


def _running(summary: RunSummary) -> bool:
    return summary.status == "running" and (summary.pid is None or process_alive(summary.pid))


def _last_use(dirs: RepoDirs) -> float:
    paths = [dirs.lock, dirs.git / "FETCH_HEAD", *dirs.runs.glob("*/run.json")]
    return max(path.lstat().st_mtime for path in paths if path.exists() or path.is_symlink())


def _legacy_last_use(clone: Path) -> float:
    times = [(clone / name).lstat().st_mtime for name in _TOUCHED if (clone / name).exists()]
    times += [path.lstat().st_mtime for path in (clone / ".loop" / "runs").glob("*/run.json")]
    return max(times)


def _named_by_github(slug: str) -> bool:
    try:
        split_slug(slug)
    except LoopError:
        return False
    return True
