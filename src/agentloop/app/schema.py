"""The queue's tables, created or brought up to date when a queue is opened (SQLite and PostgreSQL).

`loop_jobs`: one row per job. `loop_deliveries`: every webhook delivery acted on, with its outcome
(queued, busy, ignored, stopped), written in the same transaction as the job it queued. A partial
unique index keeps one job per issue queued or running, even between servers writing at once.
"""

from __future__ import annotations

from agentloop.app.db import Run
from agentloop.errors import ConfigError

ACTIVE_WHERE = "status IN ('queued', 'running')"
_SCHEMA_LOCK = 0x6C6F6F70  # "loop"


def create_schema(run: Run, *, postgres: bool, target: str) -> None:
    key = "BIGSERIAL PRIMARY KEY" if postgres else "INTEGER PRIMARY KEY AUTOINCREMENT"
    number = "BIGINT" if postgres else "INTEGER"
    real = "DOUBLE PRECISION" if postgres else "REAL"
    if postgres:  # servers and workers starting together: one creates, the others find it made
        run("SELECT pg_advisory_xact_lock(?)", (_SCHEMA_LOCK,))
    run(
        f"CREATE TABLE IF NOT EXISTS loop_jobs (id {key}, delivery_id TEXT, repo TEXT NOT NULL, "
        f"issue {number} NOT NULL, installation_id {number}, action TEXT NOT NULL, status TEXT NOT NULL, "
        f"run_id TEXT, attempts {number} NOT NULL DEFAULT 0, message TEXT NOT NULL DEFAULT '', "
        f"pull_request_url TEXT, owner TEXT, created_at {real} NOT NULL, updated_at {real} NOT NULL, "
        f"heartbeat_at {real})"
    )
    run(f"CREATE TABLE IF NOT EXISTS loop_deliveries (delivery_id TEXT PRIMARY KEY, received_at {real})")
    run("CREATE INDEX IF NOT EXISTS loop_jobs_issue ON loop_jobs (repo, issue, status)")
    run("CREATE INDEX IF NOT EXISTS loop_jobs_delivery ON loop_jobs (delivery_id)")
    _one_active_per_issue(run, target)
    # a queue made before deliveries had an outcome gains the column; its old rows stay NULL
    if postgres:
        run("ALTER TABLE loop_deliveries ADD COLUMN IF NOT EXISTS outcome TEXT")
    elif "outcome" not in {row[1] for row in run("PRAGMA table_info(loop_deliveries)").fetchall()}:
        run("ALTER TABLE loop_deliveries ADD COLUMN outcome TEXT")


def _one_active_per_issue(run: Run, target: str) -> None:
    """The index that keeps one job per issue queued or running. A queue that already breaks the rule
    (servers racing before the index existed) is named, with the fix, rather than half-migrated."""
    twice = run(
        f"SELECT repo, issue, MIN(id), MAX(id) FROM loop_jobs WHERE {ACTIVE_WHERE} "
        "GROUP BY repo, issue HAVING COUNT(*) > 1 LIMIT 1"
    ).fetchall()
    if twice:
        repo, issue, first, last = twice[0]
        raise ConfigError(
            f"--queue {target}: jobs {first} and {last} are both queued or running for {repo}#{issue}; cancel one "
            f"(UPDATE loop_jobs SET status = 'cancelled' WHERE id = {last}) and start loop serve again"
        )
    run(f"CREATE UNIQUE INDEX IF NOT EXISTS loop_jobs_one_active ON loop_jobs (repo, issue) WHERE {ACTIVE_WHERE}")
