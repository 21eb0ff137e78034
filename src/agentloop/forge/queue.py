"""The App's durable job queue: SQLite by default, PostgreSQL when several servers share it.

A job is one request to work on one issue. Deliveries are remembered so that a redelivered webhook
starts nothing new; at most one job per issue is queued or running; a server that restarts puts the
jobs it was running back in the queue (keeping their run id, so the worker resumes from the
checkpoint) and jobs whose server stopped heart-beating are taken back the same way.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

from agentloop.errors import ConfigError

log = logging.getLogger(__name__)

JobStatus = Literal["queued", "running", "published", "failed", "error", "interrupted", "cancelled"]
ACTIVE = ("queued", "running")
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


class JobQueue:
    """Open with `JobQueue.open(target)`: a file path (SQLite) or a `postgresql://` URL."""

    def __init__(self, target: str, *, max_attempts: int = 3):
        self.target = target
        self.postgres = target.startswith(("postgresql://", "postgres://"))
        self.max_attempts = max_attempts
        self._lock = threading.Lock()  # SQLite connections are per call; the lock orders writers
        self._create()

    @classmethod
    def open(cls, target: str | Path, **kwargs: Any) -> JobQueue:
        text = str(target)
        if not text.startswith(("postgresql://", "postgres://")):
            Path(text).expanduser().parent.mkdir(parents=True, exist_ok=True)
            text = str(Path(text).expanduser())
        return cls(text, **kwargs)

    # -- webhook side ------------------------------------------------------------------------------

    def record_delivery(self, delivery_id: str) -> bool:
        """True the first time a delivery id is seen; False for a redelivery."""
        with self._tx() as run:
            cursor = run(
                "INSERT INTO loop_deliveries (delivery_id, received_at) VALUES (?, ?) ON CONFLICT DO NOTHING",
                (delivery_id, time.time()),
            )
            return bool(cursor.rowcount == 1)

    def enqueue(
        self, *, repo: str, issue: int, installation_id: int | None, action: str = "fix",
        delivery_id: str | None = None,
    ) -> Job | None:
        """Queue work on an issue, or None when a job for that issue is already queued or running."""
        now = time.time()
        with self._tx() as run:
            busy = run(
                "SELECT id FROM loop_jobs WHERE repo = ? AND issue = ? AND status IN ('queued', 'running')",
                (repo, issue),
            ).fetchall()
            if busy:
                return None
            rows = run(
                "INSERT INTO loop_jobs (delivery_id, repo, issue, installation_id, action, status, attempts, "
                "message, created_at, updated_at) VALUES (?, ?, ?, ?, ?, 'queued', 0, '', ?, ?) "
                f"RETURNING {_COLUMNS}",
                (delivery_id, repo, issue, installation_id, action, now, now),
            ).fetchall()
        return _job(rows[0])

    def cancel_queued(self, repo: str, issue: int) -> list[Job]:
        with self._tx() as run:
            rows = run(
                "UPDATE loop_jobs SET status = 'cancelled', message = 'stopped by /loop stop', updated_at = ? "
                f"WHERE repo = ? AND issue = ? AND status = 'queued' RETURNING {_COLUMNS}",
                (time.time(), repo, issue),
            ).fetchall()
        return [_job(row) for row in rows]

    def active(self, repo: str, issue: int) -> Job | None:
        jobs = self._select("WHERE repo = ? AND issue = ? AND status IN ('queued', 'running')", (repo, issue))
        return jobs[0] if jobs else None

    def jobs(self, limit: int = 100) -> list[Job]:
        return self._select("ORDER BY id DESC LIMIT ?", (limit,))

    def get(self, job_id: int) -> Job | None:
        jobs = self._select("WHERE id = ?", (job_id,))
        return jobs[0] if jobs else None

    def counts(self) -> dict[str, int]:
        with self._tx() as run:
            rows = run("SELECT status, COUNT(*) FROM loop_jobs GROUP BY status", ()).fetchall()
        return {str(status): int(count) for status, count in rows}

    # -- worker side -------------------------------------------------------------------------------

    def claim(self, owner: str) -> Job | None:
        """Take the oldest queued job whose issue has nothing running, marking it running for `owner`."""
        now = time.time()
        lock = " FOR UPDATE SKIP LOCKED" if self.postgres else ""
        with self._tx() as run:
            rows = run(
                "UPDATE loop_jobs SET status = 'running', owner = ?, attempts = attempts + 1, updated_at = ?, "
                "heartbeat_at = ? WHERE id = (SELECT q.id FROM loop_jobs q WHERE q.status = 'queued' AND NOT EXISTS "
                "(SELECT 1 FROM loop_jobs r WHERE r.repo = q.repo AND r.issue = q.issue AND r.status = 'running') "
                f"ORDER BY q.id LIMIT 1{lock}) AND status = 'queued' RETURNING {_COLUMNS}",
                (owner, now, now),
            ).fetchall()
        return _job(rows[0]) if rows else None

    def set_run_id(self, job_id: int, run_id: str) -> None:
        with self._tx() as run:
            run("UPDATE loop_jobs SET run_id = ?, updated_at = ? WHERE id = ?", (run_id, time.time(), job_id))

    def heartbeat(self, owner: str) -> None:
        with self._tx() as run:
            run("UPDATE loop_jobs SET heartbeat_at = ? WHERE owner = ? AND status = 'running'", (time.time(), owner))

    def finish(
        self, job_id: int, status: JobStatus, *, message: str = "", run_id: str | None = None,
        pull_request_url: str | None = None,
    ) -> None:
        with self._tx() as run:
            run(
                "UPDATE loop_jobs SET status = ?, message = ?, run_id = COALESCE(?, run_id), "
                "pull_request_url = COALESCE(?, pull_request_url), updated_at = ? WHERE id = ?",
                (status, message[:2000], run_id, pull_request_url, time.time(), job_id),
            )

    def recover(self, owner: str, *, stale_after: float = 300.0) -> list[Job]:
        """Requeue jobs left running by this server's previous life or by a server gone silent.

        A job that already used all its attempts is marked `error` instead, so a run that kills its
        server every time cannot loop forever."""
        now = time.time()
        with self._tx() as run:
            rows = run(
                "UPDATE loop_jobs SET status = CASE WHEN attempts >= ? THEN 'error' ELSE 'queued' END, "
                "message = CASE WHEN attempts >= ? THEN 'gave up: the server stopped during every attempt' "
                "ELSE 'requeued after a server restart' END, owner = NULL, updated_at = ? "
                "WHERE status = 'running' AND (owner = ? OR heartbeat_at IS NULL OR heartbeat_at < ?) "
                f"RETURNING {_COLUMNS}",
                (self.max_attempts, self.max_attempts, now, owner, now - stale_after),
            ).fetchall()
        jobs = [_job(row) for row in rows]
        for job in jobs:
            log.info("job %s (%s#%s): %s", job.id, job.repo, job.issue, job.message)
        return jobs

    # -- storage -----------------------------------------------------------------------------------

    def _select(self, where: str, params: tuple[Any, ...]) -> list[Job]:
        with self._tx() as run:
            rows = run(f"SELECT {_COLUMNS} FROM loop_jobs {where}", params).fetchall()
        return [_job(row) for row in rows]

    def _create(self) -> None:
        key = "BIGSERIAL PRIMARY KEY" if self.postgres else "INTEGER PRIMARY KEY AUTOINCREMENT"
        number = "BIGINT" if self.postgres else "INTEGER"
        real = "DOUBLE PRECISION" if self.postgres else "REAL"
        with self._tx() as run:
            run(
                f"CREATE TABLE IF NOT EXISTS loop_jobs (id {key}, delivery_id TEXT, repo TEXT NOT NULL, "
                f"issue {number} NOT NULL, installation_id {number}, action TEXT NOT NULL, status TEXT NOT NULL, "
                f"run_id TEXT, attempts {number} NOT NULL DEFAULT 0, message TEXT NOT NULL DEFAULT '', "
                f"pull_request_url TEXT, owner TEXT, created_at {real} NOT NULL, updated_at {real} NOT NULL, "
                f"heartbeat_at {real})",
                (),
            )
            run(
                f"CREATE TABLE IF NOT EXISTS loop_deliveries (delivery_id TEXT PRIMARY KEY, received_at {real})",
                (),
            )
            run("CREATE INDEX IF NOT EXISTS loop_jobs_issue ON loop_jobs (repo, issue, status)", ())

    @contextmanager
    def _tx(self) -> Iterator[Any]:
        if self.postgres:
            yield from self._postgres_tx()
        else:
            yield from self._sqlite_tx()

    def _sqlite_tx(self) -> Iterator[Any]:
        with self._lock:
            try:
                conn = sqlite3.connect(self.target, timeout=30.0, isolation_level=None)
            except sqlite3.Error as exc:
                raise ConfigError(f"--queue {self.target}: cannot open the SQLite queue ({exc})") from None
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("BEGIN IMMEDIATE")

                def run(sql: str, params: tuple[Any, ...]) -> sqlite3.Cursor:
                    return conn.execute(sql, params)

                try:
                    yield run
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
                conn.execute("COMMIT")
            finally:
                conn.close()

    def _postgres_tx(self) -> Iterator[Any]:
        import psycopg

        try:
            conn = psycopg.connect(self.target, connect_timeout=10)
        except psycopg.Error as exc:
            raise ConfigError(f"--queue: cannot connect to PostgreSQL ({type(exc).__name__}); check the URL") from None
        with conn:

            def run(sql: str, params: tuple[Any, ...]) -> Any:
                return conn.execute(sql.replace("?", "%s"), params)

            yield run


def _job(row: Sequence[Any]) -> Job:
    names = [name.strip() for name in _COLUMNS.split(",")]
    return Job.model_validate(dict(zip(names, row, strict=True)))
