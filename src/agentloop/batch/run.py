"""`loop batch`: many runs in parallel on one shared baseline.

Each run is its own `loop fix` process (own worktree, branch, sandbox, route key, database copies),
so a crashing run cannot take the others down and every run stays resumable on its own. The batch
starts the baseline once when none is up (each run then finds it up and leaves it alone) and stops it
at the end only if it started it. Ctrl-C asks every run to stop cleanly (SIGINT: sandbox removed,
status interrupted); a second Ctrl-C kills them at once. `--resume ID` finishes what is left.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from agentloop.batch.executors.base import Executor, RunHandle
from agentloop.errors import LoopError, RunNotFound
from agentloop.inputs import read_text
from agentloop.runs.folder import new_run_id

FINAL = ("published", "failed", "error")


class BatchItem(BaseModel):
    issue: str
    run_id: str
    status: str = "queued"
    exit_code: int | None = None
    pull_request: str | None = None
    duration: float = 0.0
    cost_usd: float = 0.0
    tokens: int = 0
    node: str = ""
    iteration: int = 0
    started_at: float | None = None


class BatchRecord(BaseModel):
    id: str
    repo: str
    model: str | None = None
    parallel: int
    items: list[BatchItem]
    started_at: float = Field(default_factory=time.time)
    ended_at: float | None = None
    status: Literal["running", "done", "interrupted"] = "running"

    def totals(self) -> dict[str, Any]:
        wall = (self.ended_at or time.time()) - self.started_at
        run_time = sum(item.duration for item in self.items)
        return {
            "resolved": sum(item.status == "published" for item in self.items),
            "failed": sum(item.status in ("failed", "error") for item in self.items),
            "interrupted": sum(item.status in ("interrupted", "queued", "running") for item in self.items),
            "pull_requests": [item.pull_request for item in self.items if item.pull_request],
            "cost_usd": round(sum(item.cost_usd for item in self.items), 4),
            "wall_seconds": round(wall, 2),
            "run_seconds": round(run_time, 2),
            "speedup": round(run_time / wall, 2) if wall > 0 else 0.0,
        }


def new_batch_id() -> str:
    return f"b-{datetime.now(tz=UTC).strftime('%Y%m%d')}-{secrets.token_hex(3)}"


def batch_path(runs_root: Path, batch_id: str) -> Path:
    return runs_root / f"batch-{batch_id}.json"


def save(record: BatchRecord, runs_root: Path) -> None:
    path = batch_path(runs_root, record.id)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record.model_dump(mode="json") | {"totals": record.totals()}, indent=2), encoding="utf-8")
    os.replace(tmp, path)


def load(runs_root: Path, batch_id: str) -> BatchRecord:
    path = batch_path(runs_root, batch_id)
    if not path.is_file():
        raise RunNotFound(f"unknown batch {batch_id!r}: no {path}")
    data = json.loads(path.read_text(encoding="utf-8"))
    data.pop("totals", None)
    return BatchRecord.model_validate(data)


def read_issue_list(path: Path) -> list[str]:
    if not path.is_file():
        raise LoopError(f"--from {path}: no such file; give one issue reference per line")
    text = read_text(path, what="issue list", error=LoopError)
    lines = [line.split("#", 1)[0].strip() if not line.strip().startswith("#") else "" for line in text.splitlines()]
    refs = [line for line in lines if line]
    if not refs:
        raise LoopError(f"--from {path}: no issue references in it (one per line, `#` starts a comment)")
    return refs


Renderer = Callable[[BatchRecord], None]


class BatchExecutor:
    """Runs the items of a batch through an executor, at most `parallel` at once."""

    def __init__(self, record: BatchRecord, runs_root: Path, executor: Executor, *,
                 render: Renderer | None = None, poll: float = 0.3):
        self.record = record
        self.runs_root = runs_root
        self.executor = executor
        self.render = render
        self.poll = poll
        self._running: dict[str, tuple[BatchItem, RunHandle]] = {}

    def run(self) -> BatchRecord:
        save(self.record, self.runs_root)
        try:
            self._loop()
        except KeyboardInterrupt:
            self._interrupt()
        self.record.ended_at = time.time()
        if self.record.status == "running":
            self.record.status = "done"
        self._refresh_all()
        save(self.record, self.runs_root)
        if self.render:
            self.render(self.record)
        return self.record

    def _loop(self) -> None:
        pending = [item for item in self.record.items if item.status not in FINAL]
        while pending or self._running:
            while pending and len(self._running) < self.record.parallel:
                item = pending.pop(0)
                self._running[item.run_id] = (item, self.executor.start(item))
                item.status, item.started_at = "running", item.started_at or time.time()
            time.sleep(self.poll)
            self._reap()
            self._refresh_all()
            save(self.record, self.runs_root)
            if self.render:
                self.render(self.record)

    def _reap(self) -> None:
        for run_id, (item, handle) in list(self._running.items()):
            code = handle.poll()
            if code is None:
                continue
            handle.close()
            item.exit_code = code
            del self._running[run_id]
            self._refresh(item, finished=True)

    def _refresh_all(self) -> None:
        for item in self.record.items:
            if item.status not in FINAL or item.pull_request is None:
                self._refresh(item, finished=False)

    def _refresh(self, item: BatchItem, *, finished: bool) -> None:
        summary = self.executor.summary(item.run_id)
        if summary is not None:
            item.status = summary.status if (finished or summary.status != "running") else "running"
            item.pull_request, item.cost_usd, item.tokens = summary.pull_request, summary.cost_usd, summary.tokens
            item.iteration, item.duration = summary.iterations, round(summary.duration, 2)
            item.node = self.executor.last_node(item.run_id) or item.node
        if finished and item.status in ("running", "queued"):
            # the run ended without saying how: it crashed before or outside the graph
            stopped = (130, -signal.SIGINT, -signal.SIGKILL, -signal.SIGTERM)
            item.status = "interrupted" if item.exit_code in stopped else "error"

    def _interrupt(self) -> None:
        """First Ctrl-C: every run stops cleanly. A second one while they do: stop them at once."""
        self.record.status = "interrupted"
        for _, handle in self._running.values():
            handle.interrupt()
        try:
            while self._running:
                time.sleep(self.poll)
                self._reap()
        except KeyboardInterrupt:
            for _, handle in self._running.values():
                handle.kill()
            self._reap()
        finally:
            # Every run has stopped. What follows (the record, gc, stopping a baseline the batch started) takes
            # seconds and must finish: a Ctrl-C landing in it would leave the baseline running with no owner.
            if threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGINT, signal.SIG_IGN)


def new_batch(repo: Path, refs: list[str], *, model: str | None, parallel: int) -> BatchRecord:
    if not refs:
        raise LoopError("no issues to run: give issue references, --label L or --from FILE")
    unique = list(dict.fromkeys(refs))
    return BatchRecord(
        id=new_batch_id(), repo=str(repo), model=model, parallel=parallel,
        items=[BatchItem(issue=ref, run_id=new_run_id()) for ref in unique],
    )
