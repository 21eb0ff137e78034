"""Shared run records in PostgreSQL, used when `LOOP_DATABASE_URL` is set.

Runs started anywhere (a Kubernetes Job, another machine) write their summary and events here as
well as to their local folder, so `loop runs` and `loop show` on any machine pointed at the same
database see every run. The tables live in the connection's search_path (set a schema with
`?options=-csearch_path%3Dloop` in the URL). Checkpoints go to the same database through langgraph's
PostgresSaver.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from agentloop.errors import LoopError
from agentloop.redact import redact

if TYPE_CHECKING:  # psycopg and the Postgres checkpointer are the optional `postgres` extra
    import psycopg
    from langgraph.checkpoint.postgres import PostgresSaver
    from langgraph.checkpoint.serde.base import SerializerProtocol
    from psycopg.rows import DictRow

DATABASE_ENV = "LOOP_DATABASE_URL"
# one arbitrary key for pg_advisory_lock: table creation by many Jobs at once must not race
_SETUP_LOCK = 0x6C6F6F70
_SETUP_WAIT_SECONDS = 60

_SCHEMA = (
    ("CREATE TABLE IF NOT EXISTS loop_runs (id text PRIMARY KEY, started_at double precision NOT NULL, "
     "summary jsonb NOT NULL)"),
    ("CREATE TABLE IF NOT EXISTS loop_run_events (run_id text NOT NULL, seq bigserial, event jsonb NOT NULL, "
     "PRIMARY KEY (run_id, seq))"),
)


class DatabaseError(LoopError):
    """The run database named by LOOP_DATABASE_URL could not be used."""


def database_url() -> str | None:
    return os.environ.get(DATABASE_ENV) or None


@contextmanager
def _connect(url: str) -> Iterator[psycopg.Connection[DictRow]]:
    try:
        import psycopg
        from psycopg.rows import dict_row
    except ImportError:
        raise DatabaseError(f"{DATABASE_ENV} is set but psycopg is not installed: "
                            "pip install 'agentloop[postgres]' (or unset it)") from None
    try:
        conn = psycopg.connect(url, autocommit=True, prepare_threshold=0, row_factory=dict_row, connect_timeout=10)
    except psycopg.Error as exc:
        raise DatabaseError(redact(f"{DATABASE_ENV}: cannot connect ({exc}); check the URL, e.g. "
                                   "postgresql://user@host:5432/db, and that the server is up")) from None
    try:
        yield conn
    except psycopg.Error as exc:
        raise DatabaseError(redact(f"{DATABASE_ENV}: the run database refused a request ({exc})")) from None
    finally:
        conn.close()


class RunStore:
    """Run summaries (as the `run.json` documents) and events, one row each."""

    def __init__(self, url: str):
        self.url = url
        with _connect(url) as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SETUP_LOCK,))
            for statement in _SCHEMA:
                conn.execute(statement)

    def save_summary(self, summary: dict[str, Any]) -> None:
        with _connect(self.url) as conn:
            conn.execute(
                "INSERT INTO loop_runs (id, started_at, summary) VALUES (%s, %s, %s) "
                "ON CONFLICT (id) DO UPDATE SET summary = EXCLUDED.summary",
                (summary["id"], summary["started_at"], json.dumps(summary)),
            )

    def add_event(self, run_id: str, event: dict[str, Any]) -> None:
        with _connect(self.url) as conn:
            conn.execute("INSERT INTO loop_run_events (run_id, event) VALUES (%s, %s)",
                         (run_id, json.dumps(event, default=str)))

    def summary(self, run_id: str) -> dict[str, Any] | None:
        with _connect(self.url) as conn:
            row = conn.execute("SELECT summary FROM loop_runs WHERE id = %s", (run_id,)).fetchone()
        return dict(row["summary"]) if row else None

    def summaries(self) -> list[dict[str, Any]]:
        with _connect(self.url) as conn:
            rows = conn.execute("SELECT summary FROM loop_runs ORDER BY started_at DESC").fetchall()
        return [dict(row["summary"]) for row in rows]

    def events(self, run_id: str) -> list[dict[str, Any]]:
        with _connect(self.url) as conn:
            rows = conn.execute("SELECT event FROM loop_run_events WHERE run_id = %s ORDER BY seq", (run_id,)).fetchall()
        return [dict(row["event"]) for row in rows]


def open_store() -> RunStore | None:
    """The shared store when LOOP_DATABASE_URL is set, else None (run folders only)."""
    url = database_url()
    return RunStore(url) if url else None


@contextmanager
def postgres_checkpointer(url: str, serde: SerializerProtocol | None = None) -> Iterator[PostgresSaver]:
    """langgraph's PostgresSaver on its own connection, its tables made once (under a lock); `serde`: the
    serializer of the states it holds (the engine's, which allows its state's types back)."""
    from langgraph.checkpoint.postgres import PostgresSaver

    with _connect(url) as conn:
        saver = PostgresSaver(conn, serde=serde)
        _setup_locked(conn, saver)
        yield saver


def _setup_locked(conn: psycopg.Connection[DictRow], saver: PostgresSaver) -> None:
    # Polled, not waited on: setup() may build an index CONCURRENTLY, which waits for every open
    # statement, a blocked pg_advisory_lock included -- a deadlock when many Jobs start at once.
    deadline = time.monotonic() + _SETUP_WAIT_SECONDS
    while not conn.execute("SELECT pg_try_advisory_lock(%s) AS ok", (_SETUP_LOCK + 1,)).fetchone()["ok"]:  # type: ignore[index]
        if time.monotonic() > deadline:
            raise DatabaseError(f"{DATABASE_ENV}: another loop has held the checkpoint set-up lock for "
                                f"{_SETUP_WAIT_SECONDS} s; check the database for stuck sessions")
        time.sleep(0.1)
    try:
        saver.setup()
    finally:
        conn.execute("SELECT pg_advisory_unlock(%s)", (_SETUP_LOCK + 1,))
