"""The jobs of a run's pull request (`review_events`): a review iteration, or the end of its review.

The job's issue number is the pull request's. The run is found from the pull request's branch,
`loop/<issue>-<run>`, and must be one of this App's runs (its folder under the repository's `runs/`).
A review job reads the members' feedback written since the run's last pass ended (inline comments with
file and line, reviews, `/loop <text>`) and runs the next iteration on it (`agentloop.loop.review`),
which pushes to the same pull request. A close job removes the run's sandbox and worktree.

A close that arrives while a review job of the pull request is queued or running finds the pull request
busy: the server asks the running job to stop (as `/loop stop` does), and the review job, seeing the pull
request closed on GitHub -- before iterating, or once its iteration ends -- removes the sandbox itself.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agentloop.app import checkout
from agentloop.app.queue import Job, JobStatus
from agentloop.errors import LoopError
from agentloop.forge.github import GitHubForge
from agentloop.forge.github_reviews import pull_request, review_notes
from agentloop.runs.folder import open_run

log = logging.getLogger(__name__)

PULL_ACTIONS = ("review", "close")
Result = tuple[JobStatus, str, str | None, str | None]


def sandbox_kept(run_dir: Path) -> bool:
    """Whether the run's sandbox was last kept for its review (`agentloop.loop.review_sandbox`), not removed."""
    try:
        lines = (run_dir / "events.jsonl").read_text(encoding="utf-8").splitlines()
    except OSError:
        return False
    for line in reversed(lines):
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict) and event.get("node") == "sandbox":
            return event.get("event") == "kept"
    return False


def default_review(*args: Any, **kwargs: Any) -> Any:
    from agentloop.loop.review import iterate_on_review

    return iterate_on_review(*args, **kwargs)


def run_pull_job(job: Job, forge: GitHubForge, dirs: checkout.RepoDirs, *, cancel: threading.Event,
                 run_review: Callable[..., Any]) -> Result:
    """(status, message, run id, pull request url) of a review or close job."""
    from agentloop.loop.review_sandbox import run_of_branch

    pull = pull_request(forge, job.issue)
    branch = str((pull.get("head") or {}).get("ref") or "")
    run_id = run_of_branch(branch)
    if run_id is None or not (dirs.runs / run_id / "run.json").is_file():
        return "failed", f"#{job.issue} is not the pull request of a run of this App (branch {branch!r})", None, None
    path = checkout.job_checkout(dirs, job.id, forge, refresh=True)
    if job.action == "close" or pull.get("state") == "closed":  # a review queued before the close: no iteration
        return "done", "pull request closed: " + _remove(job, path, run_id, dirs), run_id, None
    try:
        since = open_run(dirs.runs, run_id).summary().ended_at
    except LoopError:
        since = None
    notes = review_notes(forge, job.issue, since=since)
    if not notes:
        return "failed", "no review feedback from a member since the run's last pass", run_id, None
    outcome = run_review(path, run_id, notes, forge=forge, cancel=cancel, runs_root=dirs.runs)
    status: JobStatus = outcome.status if outcome.status in ("published", "failed", "error", "interrupted") \
        else "error"
    url = outcome.pull_request.url if outcome.pull_request else None
    message = str(outcome.message)
    if _closed_meanwhile(forge, job.issue):  # its close found this job running: it stopped it, the end is here
        message += "; the pull request was closed meanwhile: " + _remove(job, path, run_id, dirs)
    return status, message, run_id, url


def _remove(job: Job, path: Path, run_id: str, dirs: checkout.RepoDirs) -> str:
    from agentloop.loop.review_sandbox import remove_review_sandbox

    removed = remove_review_sandbox(path, run_id, runs_root=dirs.runs)
    log.info("%s#%s closed: sandbox of run %s %s", job.repo, job.issue, run_id, "removed" if removed else "already gone")
    return "sandbox removed" if removed else "no sandbox left"


def _closed_meanwhile(forge: GitHubForge, number: int) -> bool:
    """Whether the pull request is closed now (GitHub is the record: the close's webhook may have reached
    another server, or this one before a restart). Unknown counts as open: the sandbox's TTL ends it then."""
    try:
        return pull_request(forge, number).get("state") == "closed"
    except Exception as exc:  # noqa: BLE001 -- the review's outcome stands whatever GitHub answers now
        log.warning("%s#%s: could not tell whether it was closed: %s", forge.repo_slug, number, type(exc).__name__)
        return False
