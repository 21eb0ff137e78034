"""The GitHub App's per-issue clones (`<workdir>/repos/<owner>/<name>/issue-<n>`, made by the worker).

A clone goes when no job for its issue is queued or running (the queue says), no run in it is running
(its records say), and nothing has used it for the retention: its last use is the newest of the times
the worker or a run last wrote to it (a fetch, a reset, a run record). Without a queue to ask, nothing
is removed.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from agentloop.cleanup import Collector, days
from agentloop.errors import LoopError
from agentloop.forge.names import split_slug
from agentloop.forge.queue import JobQueue
from agentloop.runs import CorruptRecord, process_alive, read_summary

_ISSUE = re.compile(r"issue-([1-9][0-9]{0,9})")
# what the worker and a run write to as they use a clone
_TOUCHED = (".", ".git", ".git/FETCH_HEAD", ".git/index", ".git/HEAD", ".git/logs/HEAD", ".loop/runs")


def collect_clones(workdir: Path, queue: JobQueue | None, out: Collector, *, now: float, retention: float) -> None:
    """Clones under `workdir/repos` (the App's `--workdir`) idle for `retention` seconds."""
    repos = workdir / "repos"
    if not repos.is_dir():
        raise LoopError(f"--app-workdir {workdir}: no `repos` folder of App clones there; give the directory "
                        "`loop serve --workdir` uses (by default ~/.local/state/loop/serve)")
    if queue is None:
        out.kept("clone", str(repos), f"no job queue at {workdir / 'queue.sqlite3'} to say which clones are in "
                 "use; give the App's queue with --queue")
        return
    root = repos.resolve()
    for clone in sorted(repos.glob("*/*/issue-*")):
        owner, name, number = clone.parent.parent.name, clone.parent.name, _ISSUE.fullmatch(clone.name)
        try:
            split_slug(f"{owner}/{name}")
        except LoopError:
            number = None
        if number is None or clone.is_symlink() or not clone.is_dir() or clone.resolve().parent.parent.parent != root:
            out.kept("clone", str(clone), "not a clone the App made; not loop's to remove")
            continue
        slug, issue = f"{owner}/{name}", int(number.group(1))
        job = queue.active(slug, issue)
        if job is not None:
            out.kept("clone", str(clone), f"job {job.id} for {slug}#{issue} is {job.status}")
            continue
        running = _running_run(clone)
        if running:
            out.kept("clone", str(clone), running)
            continue
        idle = now - _last_use(clone)
        if idle <= retention:
            continue
        why = f"{slug}#{issue}: no job queued or running, unused for {days(idle)} (retention {days(retention)})"
        if not out.dry_run:
            try:
                shutil.rmtree(clone)
            except OSError as exc:
                out.kept("clone", str(clone), f"could not delete it: {exc.strerror or exc}")
                continue
            for parent in (clone.parent, clone.parent.parent):  # owner/name folders left empty
                if parent.resolve() != root and not any(parent.iterdir()):
                    parent.rmdir()
        out.removed("clone", str(clone), why)


def _running_run(clone: Path) -> str:
    for path in (clone / ".loop" / "runs").glob("*/run.json"):
        try:
            summary = read_summary(path)
        except CorruptRecord:
            continue
        if summary.status == "running" and (summary.pid is None or process_alive(summary.pid)):
            return f"run {summary.id} in it is running"
    return ""


def _last_use(clone: Path) -> float:
    times = [(clone / name).lstat().st_mtime for name in _TOUCHED if (clone / name).exists()]
    times += [path.lstat().st_mtime for path in (clone / ".loop" / "runs").glob("*/run.json")]
    return max(times)
