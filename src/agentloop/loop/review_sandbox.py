"""A published run's sandbox lives as long as its pull request's review.

When a run ends with a pull request (published now, or by an earlier pass of the same run), its sandbox
is not removed: its TTL is set to `sandbox.review_ttl_hours` from now and it is owned by no process, so
`loop sandbox gc` leaves it alone until it expires. Each review iteration uses it again and, when it
ends, sets the TTL anew. Closing (or merging) the pull request removes it (`remove_review_sandbox`, from
the App's `pull_request` webhook). The run's worktree stays with it: the forks run from it.
"""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path

from agentloop.config import LoopConfig, load_config
from agentloop.errors import LoopError
from agentloop.loop.context import RunContext
from agentloop.loop.state import RunState
from agentloop.paths import runs_dir, worktrees_dir
from agentloop.redact import Redactor
from agentloop.results import SandboxInfo
from agentloop.runs.folder import open_run
from agentloop.sandbox.base import Extendable
from agentloop.sandbox.factory import open_backend

log = logging.getLogger(__name__)

DEFAULT_REVIEW_TTL_HOURS = 24.0
_BRANCH = re.compile(r"^loop/(?:\d+|file)-([A-Za-z0-9][A-Za-z0-9._-]{0,80})$")


def run_of_branch(branch: str) -> str | None:
    """The run id of a run's branch `loop/<issue>-<run>` (None for any other branch)."""
    match = _BRANCH.fullmatch(branch)
    return match.group(1) if match else None


def review_hours(config: LoopConfig) -> float | None:
    """How long a published run's sandbox is kept for review: `sandbox.review_ttl_hours`, else 24 h with the
    GitHub forge; None (not kept) with the local forge unless set."""
    hours = config.sandbox.review_ttl_hours
    if hours is None and config.forge.kind != "local":
        hours = DEFAULT_REVIEW_TTL_HOURS
    return hours


def refresh_on_use(repo: Path, info: SandboxInfo) -> SandboxInfo:
    """A sandbox kept for review that someone uses (a preview from the run page) lives another review period
    from now. Refreshed only once less than half of that period is left, so that a page loading many files
    does not rewrite the sandbox registry on every request. A failure leaves the sandbox as it was."""
    config = load_config(repo)
    hours = review_hours(config)
    if hours is None or not info.expires_at or info.expires_at - time.time() > hours * 1800:
        return info
    backend = open_backend(repo, config)
    if not isinstance(backend, Extendable):
        return info
    try:
        return backend.extend(info.name, time.time() + hours * 3600) or info
    except (LoopError, OSError):
        log.warning("could not refresh the review sandbox %s", info.name, exc_info=True)
        return info


def keep_for_review(ctx: RunContext, state: RunState) -> bool:
    """Whether the run's sandbox stays up when the run ends: asked for (`--keep-sandbox`), or under review
    (the run published a pull request, now or in an earlier pass), its TTL then extended to
    `sandbox.review_ttl_hours` from now."""
    if ctx.keep_sandbox:
        return True
    if state.get("pull_request") is None or not ctx.has_services or ctx._backend is None:
        return False
    if state.get("status") != "published" and not _kept_before(ctx):
        return False  # a draft of a run that failed is not under review; a failed review iteration's run is
    backend = ctx.backend
    if not isinstance(backend, Extendable):
        return False
    hours = review_hours(ctx.config)
    if hours is None:
        return False  # a local pull request has no reviewer to open its sandbox: stop what the run started
    until = time.time() + hours * 3600
    try:
        info = backend.extend(ctx.run_id, until)
    except (LoopError, OSError):  # the run's outcome stands; the sandbox is then removed as usual
        log.warning("could not keep the sandbox of run %s for its review", ctx.run_id, exc_info=True)
        return False
    if info is None:
        return False
    ctx.record.event("sandbox", "kept", iteration=state.get("iteration", 1), expires_at=round(until, 3))
    ctx.emit(kind="sandbox", sandbox=info.name, link=info.link, expires_at=until)
    return True


def _kept_before(ctx: RunContext) -> bool:
    """An earlier pass of the run published it and kept its sandbox (this is a review iteration's end)."""
    return any(e.get("node") == "sandbox" and e.get("event") == "kept" for e in ctx.record.events())


def remove_review_sandbox(repo: Path, run_id: str, *, runs_root: Path | None = None) -> bool:
    """The pull request of run `run_id` was closed or merged: its sandbox and worktree go, and the logs its
    forks wrote are masked now that nothing writes them. True when a sandbox was removed."""
    from agentloop import git

    config = load_config(repo)
    removed = False
    if config.services:
        backend = open_backend(repo, config)
        if backend.get(run_id) is not None:
            backend.remove(run_id)
            removed = True
    try:
        record = open_run(runs_root or runs_dir(repo), run_id)
    except LoopError:
        record = None
    if record is not None:
        Redactor.for_run(config).mask_tree(record.dir / "logs")
        record.event("sandbox", "removed", iteration=0, reason="pull request closed")
    worktree = worktrees_dir(repo) / run_id
    try:
        if worktree.exists() and not worktree.is_symlink():
            git.remove_worktree(git.open_repo(repo), worktree)
    except (LoopError, OSError):
        log.warning("could not remove the worktree of run %s; `loop sandbox gc` does", run_id, exc_info=True)
    return removed
