"""The App's durable job queue: SQLite by default, PostgreSQL when several servers share it.

A job is one request to work on one issue. A delivery is recorded and its job queued in one transaction
(`accept`), so that a server killed at any point either did both or neither: the redelivery of a
delivery that left nothing behind is handled as new, and that of one already handled starts nothing.
At most one job per issue is queued or running; a worker that stops mid-run leaves its job `running`
under its name, and it is put back in the queue (keeping its run id, so that the run resumes from its
checkpoint) when that worker starts again, when its server restarts, or when it stops heart-beating.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

from agentloop.app.db import POSTGRES_SCHEMES, Database, QueueUnavailable, Run, open_database
from agentloop.app.schema import ACTIVE_WHERE as _ACTIVE_WHERE
from agentloop.app.schema import create_schema

log = logging.getLogger(__name__)

__all__ = ["Accepted", "Job", "JobQueue", "JobStatus", "QueueUnavailable", "Work"]

JobStatus = Literal["queued", "running", "published", "failed", "error", "interrupted", "cancelled", "done"]
Outcome = Literal["queued", "busy", "ignored", "stopped", "redelivery"]
_JOB_ROW = "(?, ?, ?, ?, ?, 'queued', 0, '', ?, ?)"
_COLUMNS = (
    "id, delivery_id, repo, issue, installation_id, action, status, run_id, attempts, message, "
    "pull_request_url, owner, created_at, updated_at, heartbeat_at"
)


class Job(BaseModel):
    id: int
    delivery_id: str | None = None
    repo: str
    issue: int
    installation_id: int | None = None
    action: str = "fix"
    status: JobStatus = "queued"
    run_id: str | None = None
    attempts: int = 0
    message: str = ""
    pull_request_url: str | None = None
    owner: str | None = None
    created_at: float = 0.0
    updated_at: float = 0.0
    heartbeat_at: float | None = None


@dataclass(frozen=True)
class Work:
    """What a delivery asks for: `action` ("fix", "retry", "stop") on one issue, or ("review", "close", "stop")
    on a run's pull request (`issue` is then the pull request's number; see `review_events`)."""

    action: str
    repo: str
    issue: int
    installation_id: int | None = None


@dataclass(frozen=True)
class Accepted:
    """What became of a delivery: its job when one was queued, the jobs a stop cancelled."""

    outcome: Outcome
    job: Job | None = None
    cancelled: list[Job] = field(default_factory=list)


Step = Callable[[str], None]


def _no_step(name: str) -> None:
    return None


class JobQueue:
    """Open with `JobQueue.open(target)`: a file path (SQLite) or a `postgresql://` URL."""

    def __init__(self, target: str, *, max_attempts: int = 3, pool_size: int = 10):
        self.target = target
        self.max_attempts = max_attempts
        self._db: Database = open_database(target, pool_size=pool_size)
        self.postgres = self._db.postgres
        try:
            with self._db.tx() as run:
                create_schema(run, postgres=self.postgres, target=_shown(target))
        except BaseException:
            self._db.close()
            raise

    @classmethod
    def open(cls, target: str | Path, **kwargs: Any) -> JobQueue:
        text = str(target)
        if not text.startswith(POSTGRES_SCHEMES):
            Path(text).expanduser().parent.mkdir(parents=True, exist_ok=True)
            text = str(Path(text).expanduser())
        return cls(text, **kwargs)

    def close(self) -> None:
        self._db.close()

    # -- webhook side ------------------------------------------------------------------------------

    def accept(self, delivery_id: str | None, work: Work | None, *, step: Step = _no_step) -> Accepted:
        """Record `delivery_id` and do what it asks -- queue, cancel, or nothing when `work` is None --
        in one transaction. `step(name)` is called at "after-record" and "before-commit" (a test hook)."""
        [result] = self.accept_many([(delivery_id, work)], step=step)
        if isinstance(result, Exception):
            raise result
        return result

    def accept_many(
        self, items: Sequence[tuple[str | None, Work | None]], *, step: Step = _no_step
    ) -> list[Accepted | Exception]:
        """`accept` for several deliveries, in order, in one transaction of a few statements whatever
        their number (one commit, one wait for the disk). Each delivery's record and job still commit
        together; should the batch fail, each is tried alone, so that a bad one fails only itself."""
        try:
            with self._db.tx() as run:
                results: list[Accepted | Exception] = list(self._accept_batch(run, items, step))
                step("before-commit")
            return results
        except Exception:
            if len(items) == 1:
                raise
            log.warning("a batch of %d deliveries failed; recording them one by one", len(items), exc_info=True)
        alone: list[Accepted | Exception] = []
        for delivery_id, work in items:
            try:
                alone.append(self.accept(delivery_id, work, step=step))
            except Exception as exc:  # noqa: BLE001 -- this delivery's own failure, answered to it alone
                alone.append(exc)
        return alone

    def _accept_batch(self, run: Run, items: Sequence[tuple[str | None, Work | None]], step: Step) -> list[Accepted]:
        fresh = self._record(run, [d for d, _ in items if d is not None])
        step("after-record")
        results: list[Accepted | None] = [None] * len(items)
        todo: list[int] = []
        for index, (delivery_id, _) in enumerate(items):
            if delivery_id is not None and delivery_id not in fresh:
                results[index] = Accepted("redelivery")
                continue
            fresh.discard(delivery_id or "")  # the same delivery twice in a batch: the second is a redelivery
            todo.append(index)
        if any(items[i][1] is not None and items[i][1].action == "stop" for i in todo):  # type: ignore[union-attr]
            for index in todo:  # a stop cancels what was queued before it: keep their order exactly
                results[index] = self._act(run, *items[index])
        else:
            for index, queued in zip(todo, self._queue_all(run, [items[i] for i in todo]), strict=True):
                results[index] = queued
        by_outcome: dict[str, list[str]] = {}
        for (delivery_id, _), accepted in zip(items, results, strict=True):
            if delivery_id is not None and accepted is not None and accepted.outcome != "redelivery":
                by_outcome.setdefault(accepted.outcome, []).append(delivery_id)
        for outcome, ids in by_outcome.items():
            run(f"UPDATE loop_deliveries SET outcome = ? WHERE delivery_id IN ({_marks(len(ids))})", (outcome, *ids))
        return [accepted for accepted in results if accepted is not None]

    def _record(self, run: Run, delivery_ids: list[str]) -> set[str]:
        """Record the deliveries; those to act on: the new ones, and those known but left with no outcome
        and no job (a server before one-transaction deliveries recorded them, then died before queuing)."""
        unique = list(dict.fromkeys(delivery_ids))
        if not unique:
            return set()
        now = time.time()
        rows = run(
            f"INSERT INTO loop_deliveries (delivery_id, received_at) VALUES {_marks(len(unique), '(?, ?)')} "
            "ON CONFLICT DO NOTHING RETURNING delivery_id",
            tuple(value for delivery_id in unique for value in (delivery_id, now)),
        ).fetchall()
        fresh = {str(row[0]) for row in rows}
        known = [delivery_id for delivery_id in unique if delivery_id not in fresh]
        if known:
            lost = run(
                f"SELECT delivery_id FROM loop_deliveries d WHERE delivery_id IN ({_marks(len(known))}) "
                "AND outcome IS NULL AND NOT EXISTS (SELECT 1 FROM loop_jobs j WHERE j.delivery_id = d.delivery_id)",
                tuple(known),
            ).fetchall()
            for (delivery_id,) in lost:
                log.warning("delivery %s was recorded but never queued (an older server died); queuing it now",
                            delivery_id)
                fresh.add(str(delivery_id))
        return fresh

    def _queue_all(self, run: Run, items: Sequence[tuple[str | None, Work | None]]) -> list[Accepted]:
        """Queue a job for each item's issue in one statement; the first item of an issue gets it (unless
        the issue is busy already), the others find it busy."""
        first: dict[tuple[str, int], int] = {}  # issue -> index of its first item
        for index, (_, work) in enumerate(items):
            if work is not None:
                first.setdefault((work.repo, work.issue), index)
        queued: dict[tuple[str, int], Job] = {}
        if first:
            now = time.time()
            rows = run(
                "INSERT INTO loop_jobs (delivery_id, repo, issue, installation_id, action, status, attempts, message, "
                f"created_at, updated_at) VALUES {_marks(len(first), _JOB_ROW)} "
                f"ON CONFLICT (repo, issue) WHERE {_ACTIVE_WHERE} DO NOTHING RETURNING {_COLUMNS}",
                tuple(value for i in first.values() for value in _job_values(items[i], now)),
            ).fetchall()
            queued = {(job.repo, job.issue): job for job in map(_job, rows)}
        results = []
        for index, (_, work) in enumerate(items):
            if work is None:
                results.append(Accepted("ignored"))
                continue
            job = queued.get((work.repo, work.issue))
            mine = job is not None and first[(work.repo, work.issue)] == index
            results.append(Accepted("queued", job=job) if mine else Accepted("busy"))
        return results

    def _act(self, run: Run, delivery_id: str | None, work: Work | None) -> Accepted:
        if work is None or work.action != "stop":
            return self._queue_all(run, [(delivery_id, work)])[0]
        rows = run(
            "UPDATE loop_jobs SET status = 'cancelled', message = 'stopped by /loop stop', updated_at = ? "
            f"WHERE repo = ? AND issue = ? AND status = 'queued' RETURNING {_COLUMNS}",
            (time.time(), work.repo, work.issue),
        ).fetchall()
        return Accepted("stopped", cancelled=[_job(row) for row in rows])

    def enqueue(
        self, *, repo: str, issue: int, installation_id: int | None, action: str = "fix",
        delivery_id: str | None = None,
    ) -> Job | None:
        """Queue work on an issue, or None when a job for that issue is already queued or running."""
        return self.accept(delivery_id, Work(action, repo, issue, installation_id)).job

    def cancel_queued(self, repo: str, issue: int) -> list[Job]:
        return self.accept(None, Work("stop", repo, issue)).cancelled

    def active(self, repo: str, issue: int) -> Job | None:
        jobs = self._select("WHERE repo = ? AND issue = ? AND status IN ('queued', 'running')", (repo, issue))
        return jobs[0] if jobs else None

    def jobs(self, limit: int = 100) -> list[Job]:
        return self._select("ORDER BY id DESC LIMIT ?", (limit,))

    def get(self, job_id: int) -> Job | None:
        jobs = self._select("WHERE id = ?", (job_id,))
        return jobs[0] if jobs else None

    def counts(self) -> dict[str, int]:
        with self._db.tx(write=False) as run:
            rows = run("SELECT status, COUNT(*) FROM loop_jobs GROUP BY status").fetchall()
        return {str(status): int(count) for status, count in rows}

    # -- worker side -------------------------------------------------------------------------------

    def claim(self, owner: str) -> Job | None:
        """Take the oldest queued job whose issue has nothing running, marking it running for `owner`."""
        now = time.time()
        lock = " FOR UPDATE SKIP LOCKED" if self.postgres else ""
        with self._db.tx() as run:
            rows = run(
                "UPDATE loop_jobs SET status = 'running', owner = ?, attempts = attempts + 1, updated_at = ?, "
                "heartbeat_at = ? WHERE id = (SELECT q.id FROM loop_jobs q WHERE q.status = 'queued' AND NOT EXISTS "
                "(SELECT 1 FROM loop_jobs r WHERE r.repo = q.repo AND r.issue = q.issue AND r.status = 'running') "
                f"ORDER BY q.id LIMIT 1{lock}) AND status = 'queued' RETURNING {_COLUMNS}",
                (owner, now, now),
            ).fetchall()
        return _job(rows[0]) if rows else None

    def set_run_id(self, job_id: int, run_id: str) -> None:
        with self._db.tx() as run:
            run("UPDATE loop_jobs SET run_id = ?, updated_at = ? WHERE id = ?", (run_id, time.time(), job_id))

    def heartbeat(self, owner: str) -> None:
        with self._db.tx() as run:
            run("UPDATE loop_jobs SET heartbeat_at = ? WHERE owner = ? AND status = 'running'", (time.time(), owner))

    def finish(
        self, job_id: int, status: JobStatus, *, message: str = "", run_id: str | None = None,
        pull_request_url: str | None = None,
    ) -> None:
        with self._db.tx() as run:
            run(
                "UPDATE loop_jobs SET status = ?, message = ?, run_id = COALESCE(?, run_id), "
                "pull_request_url = COALESCE(?, pull_request_url), updated_at = ? WHERE id = ?",
                (status, message[:2000], run_id, pull_request_url, time.time(), job_id),
            )

    def recover(self, owner: str, *, stale_after: float = 300.0) -> list[Job]:
        """Requeue jobs left running by `owner` (or its workers, `<owner>#...`) or by anyone gone silent.

        A job that already used all its attempts is marked `error` instead, so that a run that kills
        its worker every time cannot loop forever."""
        now = time.time()
        with self._db.tx() as run:
            rows = run(
                "UPDATE loop_jobs SET status = CASE WHEN attempts >= ? THEN 'error' ELSE 'queued' END, "
                "message = CASE WHEN attempts >= ? THEN 'gave up: its worker stopped during every attempt' "
                "ELSE 'requeued: its worker stopped mid-run' END, owner = NULL, updated_at = ? "
                "WHERE status = 'running' AND (owner = ? OR substr(owner, 1, ?) = ? OR heartbeat_at IS NULL "
                f"OR heartbeat_at < ?) RETURNING {_COLUMNS}",
                (self.max_attempts, self.max_attempts, now, owner, len(owner) + 1, owner + "#", now - stale_after),
            ).fetchall()
        jobs = [_job(row) for row in rows]
        for job in jobs:
            log.info("job %s (%s#%s): %s", job.id, job.repo, job.issue, job.message)
        return jobs

    # -- storage -----------------------------------------------------------------------------------

    def _select(self, where: str, params: tuple[Any, ...]) -> list[Job]:
        with self._db.tx(write=False) as run:
            rows = run(f"SELECT {_COLUMNS} FROM loop_jobs {where}", params).fetchall()
        return [_job(row) for row in rows]


def _job_values(item: tuple[str | None, Work | None], now: float) -> tuple[Any, ...]:
    delivery_id, work = item
    assert work is not None
    return delivery_id, work.repo, work.issue, work.installation_id, work.action, now, now


def _marks(count: int, one: str = "?") -> str:
    return ", ".join([one] * count)


def _shown(target: str) -> str:
    """The queue's name for a message: a URL without its password."""
    return re.sub(r"://([^:/@]*):[^@]*@", r"://\1:***@", target)


def _job(row: Sequence[Any]) -> Job:
    names = [name.strip() for name in _COLUMNS.split(",")]
    return Job.model_validate(dict(zip(names, row, strict=True)))
