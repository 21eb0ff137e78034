"""Connections for the App's queue: pooled, so that a webhook answer costs one short transaction.

SQLite (one machine): one connection per thread, kept open, in WAL mode so that readers never wait for
the writer; `synchronous=FULL` so that a 202 answer means the job is on disk. Writers in this process
take turns on a lock held only for the few statements of their transaction (SQLite allows one writer
at a time anyway, and its own busy wait sleeps in steps of up to 100 ms, far longer than a write);
writers in other processes (the workers) meet `busy_timeout`.

PostgreSQL (a team, several servers): a psycopg_pool connection pool per process.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol

from agentloop.errors import ConfigError, LoopError

log = logging.getLogger(__name__)

POSTGRES_SCHEMES = ("postgresql://", "postgres://")


class QueueUnavailable(LoopError):
    """The queue's database cannot be reached or refused a statement (it may come back)."""


class Run(Protocol):
    def __call__(self, sql: str, params: tuple[Any, ...] = ()) -> Any: ...


class Database(Protocol):
    postgres: bool

    def tx(self, *, write: bool = True) -> Any: ...  # a context manager yielding a `Run`
    def close(self) -> None: ...


def open_database(target: str, *, pool_size: int = 10) -> Database:
    if target.startswith(POSTGRES_SCHEMES):
        return _Postgres(target, pool_size=pool_size)
    return _SQLite(target)


class _SQLite:
    postgres = False

    def __init__(self, path: str):
        self.path = path
        self._local = threading.local()
        self._write_lock = threading.Lock()
        self._all: list[sqlite3.Connection] = []
        self._all_lock = threading.Lock()
        conn = self._conn()
        try:
            conn.execute("PRAGMA journal_mode=WAL")  # kept in the file: every later connection uses it
        except sqlite3.Error as exc:
            raise ConfigError(f"--queue {path}: cannot open the SQLite queue ({exc})") from None

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            try:
                # check_same_thread off only so that close() can reach every thread's connection
                conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=False)
                conn.execute("PRAGMA busy_timeout=30000")
                conn.execute("PRAGMA synchronous=FULL")
            except sqlite3.Error as exc:
                raise ConfigError(f"--queue {self.path}: cannot open the SQLite queue ({exc})") from None
            self._local.conn = conn
            with self._all_lock:
                self._all.append(conn)
        return conn

    @contextmanager
    def tx(self, *, write: bool = True) -> Iterator[Run]:
        conn = self._conn()

        def run(sql: str, params: tuple[Any, ...] = ()) -> sqlite3.Cursor:
            return conn.execute(sql, params)

        lock = self._write_lock if write else None
        if lock is not None:
            lock.acquire()
        try:
            try:
                conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            except sqlite3.Error as exc:
                raise QueueUnavailable(f"SQLite queue {self.path}: {exc}") from None
            try:
                yield run
                conn.execute("COMMIT")
            except BaseException as exc:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                if isinstance(exc, sqlite3.OperationalError):  # locked past busy_timeout, disk full, I/O
                    raise QueueUnavailable(f"SQLite queue {self.path}: {exc}") from None
                raise
        finally:
            if lock is not None:
                lock.release()

    def close(self) -> None:
        with self._all_lock:
            conns, self._all = self._all, []
        for conn in conns:
            conn.close()
        self._local = threading.local()


class _Postgres:
    postgres = True

    def __init__(self, url: str, *, pool_size: int):
        try:
            import psycopg
            from psycopg_pool import ConnectionPool, PoolTimeout
        except ImportError:
            raise ConfigError(
                "--queue postgresql://...: psycopg and psycopg_pool are not installed; "
                "pip install 'agentloop[postgres]'"
            ) from None
        self._errors: tuple[type[BaseException], ...] = (psycopg.OperationalError, PoolTimeout)
        self._pool = ConnectionPool(
            url, min_size=1, max_size=max(1, pool_size), open=False, timeout=10.0,
            kwargs={"connect_timeout": 10}, name="loop-queue",
        )
        try:
            self._pool.open(wait=True, timeout=15.0)
        except self._errors as exc:
            self._pool.close()
            raise ConfigError(
                f"--queue: cannot connect to PostgreSQL ({type(exc).__name__}); check the URL and that the server is up"
            ) from None

    @contextmanager
    def tx(self, *, write: bool = True) -> Iterator[Run]:
        try:
            with self._pool.connection() as conn:  # commits on leaving, rolls back on an exception
                def run(sql: str, params: tuple[Any, ...] = ()) -> Any:
                    return conn.execute(sql.replace("?", "%s"), params)

                yield run
        except self._errors as exc:
            raise QueueUnavailable(f"PostgreSQL queue: {type(exc).__name__}: {exc}") from None

    def close(self) -> None:
        self._pool.close()
