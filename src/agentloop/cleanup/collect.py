"""One `loop sandbox gc`: sandboxes first (a kept sandbox's forks run from its run's worktree), then the
runs, the base results (the cached base runs) and the App's clones."""

from __future__ import annotations

import re
import time
from pathlib import Path

from agentloop.app.queue import JobQueue
from agentloop.cleanup import DAY, Collector, Item
from agentloop.cleanup.base_results import collect_base_results
from agentloop.cleanup.clones import collect_clones
from agentloop.cleanup.runs import collect_runs
from agentloop.config import LoopConfig, RetentionConfig
from agentloop.owned import release_orphans
from agentloop.sandbox.base import SandboxBackend

_WHAT_WHY = re.compile(r"(?:sandbox )?(.+?) \((.+)\)")


def collect(
    repo: Path | None, config: LoopConfig | None, backend: SandboxBackend | None, *, dry_run: bool,
    app_workdir: Path | None = None, queue: str | None = None, now: float | None = None,
) -> list[Item]:
    """Everything gc removes (or with `dry_run` would remove) and keeps on purpose, in the order decided."""
    now = time.time() if now is None else now
    out = Collector(dry_run=dry_run)
    if repo is not None and config is not None:
        up = _sandboxes(backend, out, now) if backend is not None else set()
        for kind, what, why in release_orphans(repo, dry_run=dry_run):  # what killed `loop`s left running or made
            out.removed(kind, what, why)
        collect_runs(repo, config, out, now=now, sandboxes=up)
        collect_base_results(repo, config, out, now=now)
    if app_workdir is not None:
        retention = (config.retention if config is not None else RetentionConfig()).days * DAY
        collect_clones(app_workdir, _queue(app_workdir, queue), out, now=now, retention=retention)
    return out.items


def _sandboxes(backend: SandboxBackend, out: Collector, now: float) -> set[str]:
    """Expired sandboxes (and what a killed loop left) removed; the names of those still up."""
    if out.dry_run:
        boxes = backend.list()
        for box in boxes:
            if box.expires_at and now > box.expires_at:
                out.removed("sandbox", box.name, "expired")
        return {box.name for box in boxes if not (box.expires_at and now > box.expires_at)}
    for text in backend.gc():
        match = _WHAT_WHY.fullmatch(text)
        what, why = (match.group(1), match.group(2)) if match else (text, "expired")
        out.removed("sandbox", what, why)
    return {box.name for box in backend.list()}


def _queue(workdir: Path, queue: str | None) -> JobQueue | None:
    if queue:
        return JobQueue.open(queue)
    default = workdir / "queue.sqlite3"  # `loop serve`'s default queue in its workdir
    return JobQueue.open(default) if default.is_file() else None
