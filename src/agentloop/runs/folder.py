"""Run records: `runs/<run-id>/` with `run.json`, `events.jsonl`, the transcript, per-iteration
results and logs, the diff and the PR body. Listing and showing runs reads only these files.

What `RunFolder` writes (`write_text`, events, the summary, here and in the shared database) has the
run's secrets masked by its `Redactor`."""

from __future__ import annotations

import json
import os
import secrets
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError, field_validator

from agentloop.errors import LoopError, RunNotFound
from agentloop.redact import Redactor
from agentloop.runs.store import RunStore, open_store

CHECKPOINTS = "checkpoints.sqlite"

RunStatus = Literal["running", "published", "failed", "error", "interrupted"]


class CorruptRecord(LoopError):
    """A run record file that is not what loop wrote (truncated, edited, not UTF-8)."""


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
    worktree: str | None = None
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

    @field_validator("started_at", "ended_at", mode="before")
    @classmethod
    def _epoch(cls, value: Any) -> Any:
        """Stored as epoch seconds (what every loop so far reads); an ISO 8601 time is read as well."""
        if isinstance(value, str):
            try:
                return datetime.fromisoformat(value).timestamp()
            except ValueError:
                raise ValueError(f"{value!r} is neither epoch seconds nor an ISO 8601 time") from None
        return value

    @property
    def duration(self) -> float:
        return (self.ended_at or time.time()) - self.started_at

    def public(self) -> dict[str, Any]:
        """What `loop runs --json` and `loop show --json` print: times as ISO 8601 in UTC, the duration."""
        data = self.model_dump(mode="json")
        data["started_at"] = iso_time(self.started_at)
        data["ended_at"] = iso_time(self.ended_at) if self.ended_at is not None else None
        return data | {"duration": round(self.duration, 1)}


def iso_time(epoch: float) -> str:
    """`2026-11-30T23:40:00Z`: UTC, whole seconds."""
    return datetime.fromtimestamp(epoch, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


JSON_FIELDS = (*RunSummary.model_fields, "duration")


def json_fields(spec: str) -> list[str]:
    """`--json FIELD,FIELD` as `gh` reads it: the fields in the order given; an unknown one is an error
    naming every available field."""
    fields = list(dict.fromkeys(name.strip() for name in spec.split(",") if name.strip()))
    if not fields:
        raise LoopError(f"--json {spec!r}: name at least one field; available fields: {', '.join(JSON_FIELDS)}")
    unknown = [name for name in fields if name not in JSON_FIELDS]
    if unknown:
        raise LoopError(f"--json: unknown field {', '.join(map(repr, unknown))}; "
                          f"available fields: {', '.join(JSON_FIELDS)}")
    return fields


class RunFolder:
    """One run's folder. Appends events; keeps run.json current."""

    def __init__(self, root: Path, run_id: str, store: RunStore | None = None, redactor: Redactor | None = None):
        self.run_id = run_id
        self.dir = root / run_id
        self.dir.mkdir(parents=True, exist_ok=True)
        # with LOOP_DATABASE_URL the summary and events are mirrored to Postgres, seen from anywhere
        self.store = store or open_store()
        self.redactor = redactor or Redactor.from_environment()

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
        line = self.redactor.mask_data({"time": time.time(), "node": node, "event": event, **fields})
        with (self.dir / "events.jsonl").open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(line, default=str) + "\n")
        if self.store is not None:
            self.store.add_event(self.run_id, line)

    def events(self) -> list[dict[str, Any]]:
        path = self.dir / "events.jsonl"
        if not path.exists():
            return self.store.events(self.run_id) if self.store is not None else []
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, ValueError) as exc:
            raise _corrupt(str(path), exc, f"restore it, or remove the run's folder {path.parent}") from None
        events = []
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                event = json.loads(line)
            except ValueError:
                message = f"{path}: line {number} is not JSON; the record was changed after loop wrote it"
                raise CorruptRecord(message) from None
            events.append(event)
        return events

    def write_text(self, name: str, text: str) -> Path:
        path = self.dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.redactor.mask(text), encoding="utf-8")
        return path

    def summary(self) -> RunSummary:
        path = self.dir / "run.json"
        if not path.exists() and self.store is not None and (shared := self.store.summary(self.run_id)):
            try:
                return RunSummary.model_validate(shared)
            except ValidationError as exc:
                raise _corrupt(f"run {self.run_id} in LOOP_DATABASE_URL", exc, "fix or delete its row") from None
        if not path.exists():
            raise RunNotFound(f"run {self.run_id}: no run.json in {self.dir}")
        return read_summary(path)

    def save_summary(self, summary: RunSummary) -> None:
        summary = RunSummary.model_validate(self.redactor.mask_data(summary.model_dump(mode="json")))
        tmp = self.dir / "run.json.tmp"
        tmp.write_text(summary.model_dump_json(indent=2), encoding="utf-8")
        os.replace(tmp, self.dir / "run.json")
        if self.store is not None:
            self.store.save_summary(summary.model_dump(mode="json"))

    def update_summary(self, **fields: Any) -> RunSummary:
        summary = self.summary().model_copy(update=fields)
        self.save_summary(summary)
        return summary


def open_run(root: Path, run_id: str, redactor: Redactor | None = None) -> RunFolder:
    store = open_store()
    known = (root / run_id / "run.json").exists() or (store is not None and store.summary(run_id) is not None)
    if not run_id or "/" in run_id or run_id in (".", "..") or not known:
        raise RunNotFound(f"unknown run {run_id!r} in {root}; `loop runs` lists the runs")
    return RunFolder(root, run_id, store, redactor)


def read_summary(path: Path) -> RunSummary:
    """`run.json`, or CorruptRecord naming the file and what is wrong with it."""
    try:
        return RunSummary.model_validate_json(path.read_bytes())
    except (OSError, ValueError) as exc:  # ValidationError, and bytes that are not UTF-8 JSON
        raise _corrupt(str(path), exc, f"restore it, or remove the run's folder {path.parent}") from None


def _corrupt(where: str, exc: Exception, remedy: str) -> CorruptRecord:
    if isinstance(exc, ValidationError):
        first = exc.errors(include_url=False, include_input=False)[0]
        field = ".".join(str(part) for part in first["loc"])
        reason = f"field `{field}`: {first['msg']}" if field else first["msg"]
    elif isinstance(exc, OSError):
        reason = exc.strerror or type(exc).__name__
    else:
        reason = type(exc).__name__
    return CorruptRecord(f"{where}: not a run record loop can read ({' '.join(reason.split())}); {remedy}")


def list_runs(root: Path, *, strict: bool = False) -> list[RunSummary]:
    """Every run's summary, newest first. `strict`: a corrupt `run.json` is an error (CorruptRecord)
    instead of being left out -- what a user listing runs should hear about."""
    store = open_store()
    if store is not None:  # the shared database holds every run, this machine's included
        try:
            return [RunSummary.model_validate(summary) for summary in store.summaries()]
        except ValidationError as exc:
            raise _corrupt("a run in LOOP_DATABASE_URL", exc, "fix or delete its row in loop_runs") from None
    summaries = []
    if root.exists():
        for path in root.glob("*/run.json"):
            try:
                summary = read_summary(path)
            except CorruptRecord:
                if strict:
                    raise
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
