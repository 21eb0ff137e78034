"""Run records: `runs/<run-id>/` with `run.json`, `events.jsonl`, the transcript, per-iteration
results and logs, the diff and the PR body. Listing and showing runs reads only these files."""

from __future__ import annotations

import json
import os
import secrets
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from agentloop.errors import RunNotFound
from agentloop.runstore import RunStore, open_store
from agentloop.state import RunStatus

CHECKPOINTS = "checkpoints.sqlite"


def new_run_id(now: float | None = None) -> str:
    stamp = datetime.fromtimestamp(now or time.time(), tz=UTC).strftime("%Y%m%d")
    return f"r-{stamp}-{secrets.token_hex(3)}"


class RunSummary(BaseModel):
    """`run.json`: what `loop runs` lists. Rewritten atomically as the run moves."""

    id: str
    issue: int
    issue_title: str = ""
    repo: str
    branch: str = ""
    model: str = ""
    status: RunStatus = "running"
    iterations: int = 0
    pull_request: str | None = None
    started_at: float = Field(default_factory=time.time)
    ended_at: float | None = None
    cost_usd: float = 0.0
    tokens: int = 0
    message: str = ""
    pid: int | None = None
    record_cassette: str | None = None
    # options a resumed run keeps
    review: bool = False
    max_iterations: int | None = None
    keep_sandbox: bool = False

    @property
    def duration(self) -> float:
        return (self.ended_at or time.time()) - self.started_at


class RunRecord:
    """One run's folder. Appends events; keeps run.json current."""

    def __init__(self, root: Path, run_id: str, store: RunStore | None = None):
        self.run_id = run_id
        self.dir = root / run_id
        self.dir.mkdir(parents=True, exist_ok=True)
        # with LOOP_DATABASE_URL the summary and events are mirrored to Postgres, seen from anywhere
        self.store = store or open_store()

    @property
    def checkpoints(self) -> Path:
        return self.dir / CHECKPOINTS

    @property
    def transcript(self) -> Path:
        return self.dir / "transcript.jsonl"

    @property
    def logs_dir(self) -> Path:
        path = self.dir / "logs"
        path.mkdir(exist_ok=True)
        return path

    def iteration_dir(self, iteration: int) -> Path:
        path = self.dir / "iterations" / str(iteration)
        path.mkdir(parents=True, exist_ok=True)
        return path

    def event(self, node: str, event: str, **fields: Any) -> None:
        line = {"time": time.time(), "node": node, "event": event, **fields}
        with (self.dir / "events.jsonl").open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(line, default=str) + "\n")
        if self.store is not None:
            self.store.add_event(self.run_id, line)

    def events(self) -> list[dict[str, Any]]:
        path = self.dir / "events.jsonl"
        if not path.exists():
            return self.store.events(self.run_id) if self.store is not None else []
        lines = path.read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines if line.strip()]

    def write_text(self, name: str, text: str) -> Path:
        path = self.dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        return path

    def summary(self) -> RunSummary:
        path = self.dir / "run.json"
        if not path.exists() and self.store is not None and (shared := self.store.summary(self.run_id)):
            return RunSummary.model_validate(shared)
        if not path.exists():
            raise RunNotFound(f"run {self.run_id}: no run.json in {self.dir}")
        return RunSummary.model_validate_json(path.read_text(encoding="utf-8"))

    def save_summary(self, summary: RunSummary) -> None:
        tmp = self.dir / "run.json.tmp"
        tmp.write_text(summary.model_dump_json(indent=2), encoding="utf-8")
        os.replace(tmp, self.dir / "run.json")
        if self.store is not None:
            self.store.save_summary(summary.model_dump(mode="json"))

    def update_summary(self, **fields: Any) -> RunSummary:
        summary = self.summary().model_copy(update=fields)
        self.save_summary(summary)
        return summary


def open_run(root: Path, run_id: str) -> RunRecord:
    store = open_store()
    known = (root / run_id / "run.json").exists() or (store is not None and store.summary(run_id) is not None)
    if not run_id or "/" in run_id or not known:
        raise RunNotFound(f"unknown run {run_id!r} in {root}; `loop runs` lists the runs")
    return RunRecord(root, run_id, store)


def list_runs(root: Path) -> list[RunSummary]:
    store = open_store()
    if store is not None:  # the shared database holds every run, this machine's included
        return [RunSummary.model_validate(summary) for summary in store.summaries()]
    summaries = []
    if root.exists():
        for path in root.glob("*/run.json"):
            try:
                summary = RunSummary.model_validate_json(path.read_text(encoding="utf-8"))
            except ValueError:
                continue
            summaries.append(_with_liveness(summary))
    return sorted(summaries, key=lambda s: s.started_at, reverse=True)


def _with_liveness(summary: RunSummary) -> RunSummary:
    """A run whose process died (SIGKILL) without saying so is shown as interrupted: resumable."""
    if summary.status == "running" and summary.pid and not process_alive(summary.pid):
        return summary.model_copy(update={"status": "interrupted", "message": "process gone; loop resume"})
    return summary


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
