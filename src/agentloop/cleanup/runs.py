"""What finished runs leave behind: worktrees, branches and, past the retention, their records.

A run is *running* while its status says so and its process is alive (the same check `loop resume`
makes), or while its status says so and no pid was recorded (it may run on another machine): nothing of
it is touched. A run paused before publishing (`--review`) waits for `loop resume` until the retention
has passed. Any other run -- failed, errored, published, interrupted, or killed (status `running`, its
process gone) -- loses its worktree and branch now and its record after the retention.

Paths and names come from what loop itself would make for the run (`<worktrees>/<run id>`,
`loop/<issue>-<run id>`), never from what a record claims: a record naming another path or branch is
reported and left alone.
"""

from __future__ import annotations

import logging
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from agentloop import git
from agentloop.cleanup import DAY, Collector, days
from agentloop.config import LoopConfig
from agentloop.errors import RepoError
from agentloop.forge.local import LocalForge
from agentloop.loop.nodes.intake import branch_name
from agentloop.paths import runs_dir, worktrees_dir
from agentloop.runs.folder import CorruptRecord, RunSummary, process_alive, read_summary

log = logging.getLogger(__name__)

BRANCH_PREFIX = "loop/"
# the run ids `loop fix` accepts (runner.prepare); anything else in a record is not loop's
_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,80}")
_BRANCH = re.compile(r"loop/[A-Za-z0-9][A-Za-z0-9._-]*")
# runner._drive's message for a run paused by --review (waiting before publish)
_PAUSED = "waiting before "
_NO_RESUME = "`loop resume` cannot continue it once its worktree is gone"


@dataclass(frozen=True)
class _Verdict:
    running: bool
    why: str
    paused: bool = False


def collect_runs(repo: Path, config: LoopConfig, out: Collector, *, now: float, sandboxes: set[str]) -> None:
    """Decide, and unless `out.dry_run` do, the clean-up of every run recorded under the repo's runs dir.
    `sandboxes`: names of sandboxes still up (their forks run from the run's worktree)."""
    retention = config.retention.days * DAY
    runs_root = runs_dir(repo)
    trees = worktrees_dir(repo)
    branches = _loop_branches(repo)
    forge = LocalForge(repo) if config.forge.kind == "local" else None
    for path in sorted(runs_root.glob("*/run.json")):
        folder = path.parent
        try:
            summary = read_summary(path)
        except CorruptRecord as exc:
            out.kept("record", str(folder), f"unreadable, left for you to look at: {exc}")
            continue
        if summary.id != folder.name or not _RUN_ID.fullmatch(summary.id):
            out.kept("record", str(folder), f"its id {summary.id!r} is not its folder's name; not loop's to remove")
            continue
        if not _same(Path(summary.repo), repo):  # a LOOP_RUNS_DIR shared by several repositories
            log.debug("gc: %s belongs to %s, not %s; left alone", folder, summary.repo, repo)
            continue
        verdict = _state(summary)
        if verdict.running:
            if (trees / summary.id).exists():
                out.kept("worktree", str(trees / summary.id), verdict.why)
            continue
        age = now - (summary.ended_at or summary.started_at)
        expired = age > retention
        if verdict.paused and not expired:
            out.kept("worktree", str(trees / summary.id), f"{verdict.why}; `loop resume {summary.id}` continues it")
            continue
        why = f"{verdict.why}, ended {days(age)} ago, older than the retention of {days(retention)}" \
            if expired else verdict.why
        if summary.id in sandboxes:  # its forks run from the worktree: all of the run stays while they do
            out.kept("worktree", str(trees / summary.id),
                     f"its sandbox {summary.id} is up, kept with --keep-sandbox: `loop sandbox rm {summary.id}` "
                     "removes it")
            continue
        _worktree(repo, trees, summary, out, why)
        _branch(repo, summary, out, why, branches=branches, forge=forge, expired=expired, retention=retention)
        if expired:
            _record(runs_root, folder, summary, out, why)
    if not out.dry_run:
        git.command(["worktree", "prune"], cwd=repo, check=False)


def _state(summary: RunSummary) -> _Verdict:
    if summary.status == "running":
        if summary.pid is None:
            return _Verdict(True, "running, with no pid recorded: it may run on another machine")
        if process_alive(summary.pid):
            return _Verdict(True, f"running as pid {summary.pid}")
        return _Verdict(False, f"killed run {summary.id}: its process {summary.pid} is gone; {_NO_RESUME}")
    if summary.status == "interrupted" and summary.message.startswith(_PAUSED):
        return _Verdict(False, f"run {summary.id} paused for review", paused=True)
    if summary.status == "interrupted":
        return _Verdict(False, f"interrupted run {summary.id}; {_NO_RESUME}")
    word = {"published": "published", "failed": "failed", "error": "errored"}
    return _Verdict(False, f"{word.get(summary.status, summary.status)} run {summary.id}")


def _worktree(repo: Path, trees: Path, summary: RunSummary, out: Collector, why: str) -> None:
    own = trees / summary.id
    if summary.worktree and not _same(Path(summary.worktree), own):
        out.kept("worktree", summary.worktree,
                 f"run {summary.id}'s record names it, but loop's worktree for that run is {own}; "
                 "gc only removes paths under its own worktrees directory")
    if not (own.exists() or own.is_symlink()):
        return
    if not own.is_symlink() and own.resolve().parent != trees.resolve():
        out.kept("worktree", str(own), f"it leads outside {trees}; not loop's to remove")
        return
    if not out.dry_run:
        try:
            _remove_worktree(repo, own)
        except OSError as exc:
            out.kept("worktree", str(own), f"could not delete it: {exc.strerror or exc}")
            return
    out.removed("worktree", str(own), why)


def _remove_worktree(repo: Path, own: Path) -> None:
    if own.is_symlink():
        own.unlink()  # never followed: only the link is loop's
        return
    done = git.command(["worktree", "remove", "--force", str(own)], cwd=repo, check=False)
    if done.returncode != 0 and own.exists():
        # git refuses a worktree whose `.git` the agent replaced; the folder is loop's own scratch copy
        log.warning("%s: git could not remove the worktree (%s); deleting it", own, done.stderr.strip())
        shutil.rmtree(own)


def _branch(repo: Path, summary: RunSummary, out: Collector, why: str, *, branches: set[str],
            forge: LocalForge | None, expired: bool, retention: float) -> None:
    own = branch_name(summary.issue, summary.id)
    if summary.branch and summary.branch != own:
        out.kept("branch", summary.branch, f"run {summary.id}'s record names it, but loop's branch for that run "
                 f"is {own}; gc only removes loop's own branches")
    if own not in branches or not own.startswith(BRANCH_PREFIX) or not _BRANCH.fullmatch(own):
        return
    pull = forge.find_pull_request(own) if forge is not None else None
    if pull is not None:
        out.kept("branch", own, f"pull request open: local #{pull.number}, which is this branch")
        return
    if summary.pull_request and forge is None and not expired:
        out.kept("branch", own, f"pull request {summary.pull_request}; kept until the retention of "
                 f"{days(retention)} has passed")
        return
    if not out.dry_run:
        done = git.command(["branch", "-D", own], cwd=repo, check=False)
        if done.returncode != 0:  # checked out somewhere (the user's own checkout): git keeps it, and so do we
            out.kept("branch", own, f"git refused to delete it: {' '.join(done.stderr.split())}")
            return
    out.removed("branch", own, why)


def _record(runs_root: Path, folder: Path, summary: RunSummary, out: Collector, why: str) -> None:
    if folder.is_symlink() or folder.resolve().parent != runs_root.resolve():
        out.kept("record", str(folder), f"it leads outside {runs_root}; not loop's to remove")
        return
    if not out.dry_run:
        try:
            shutil.rmtree(folder)
        except OSError as exc:
            out.kept("record", str(folder), f"could not delete it: {exc.strerror or exc}")
            return
    out.removed("record", str(folder), why)


def _loop_branches(repo: Path) -> set[str]:
    try:
        listed = git.command(["for-each-ref", "--format=%(refname)", f"refs/heads/{BRANCH_PREFIX}"], cwd=repo)
    except RepoError:
        log.warning("%s: could not list loop's branches; none is removed", repo, exc_info=True)
        return set()
    return {line.removeprefix("refs/heads/") for line in listed.stdout.splitlines() if line.strip()}


def _same(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False
