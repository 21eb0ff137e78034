"""The durable queue on SQLite and on the real PostgreSQL at 127.0.0.1:5432 (skipped when unreachable)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from agentloop.app.queue import JobQueue

PG = "postgresql://postgres@127.0.0.1:5432/test"


@pytest.fixture(params=["sqlite", "postgres"])
def queue(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[JobQueue]:
    if request.param == "sqlite":
        yield JobQueue.open(tmp_path / "q.sqlite3", max_attempts=2)
        return
    psycopg = pytest.importorskip("psycopg")
    schema = f"loop_test_{uuid.uuid4().hex[:10]}"
    try:
        admin = psycopg.connect(PG, connect_timeout=3, autocommit=True)
    except psycopg.Error as exc:
        pytest.skip(f"PostgreSQL at 127.0.0.1:5432 unreachable: {exc}")
    admin.execute(f"CREATE SCHEMA {schema}")
    try:
        yield JobQueue.open(f"{PG}?options=-csearch_path%3D{schema}", max_attempts=2)
    finally:
        admin.execute(f"DROP SCHEMA {schema} CASCADE")
        admin.close()


def test_deliveries_are_remembered(queue: JobQueue) -> None:
    assert queue.accept("d-1", None).outcome == "ignored"
    assert queue.accept("d-1", None).outcome == "redelivery"
    assert queue.accept("d-2", None).outcome == "ignored"


def test_one_active_job_per_issue_and_claim_order(queue: JobQueue) -> None:
    first = queue.enqueue(repo="acme/shop", issue=1, installation_id=9)
    assert first is not None
    assert queue.enqueue(repo="acme/shop", issue=1, installation_id=9) is None
    second = queue.enqueue(repo="acme/shop", issue=2, installation_id=9)
    claimed = queue.claim("srv-a")
    assert claimed is not None and claimed.id == first.id and claimed.status == "running"
    assert queue.claim("srv-b").id == second.id  # type: ignore[union-attr]
    assert queue.claim("srv-b") is None
    queue.finish(first.id, "published", pull_request_url="http://pr/1", run_id="r-1")
    done = queue.get(first.id)
    assert done is not None and (done.status, done.run_id, done.pull_request_url) == ("published", "r-1", "http://pr/1")
    assert queue.enqueue(repo="acme/shop", issue=1, installation_id=9) is not None  # finished: a new run may start


def test_restart_requeues_own_running_jobs_with_their_run_id(queue: JobQueue) -> None:
    job = queue.enqueue(repo="acme/shop", issue=3, installation_id=None)
    assert job is not None
    queue.claim("srv-a")
    queue.set_run_id(job.id, "r-20260101-abcdef")
    other = queue.enqueue(repo="acme/shop", issue=4, installation_id=None)
    queue.claim("srv-b")  # another live server's job stays where it is
    [recovered] = queue.recover("srv-a")
    assert (recovered.id, recovered.status, recovered.run_id) == (job.id, "queued", "r-20260101-abcdef")
    assert queue.get(other.id).status == "running"  # type: ignore[union-attr]
    # a job that kills its server on every attempt is given up on, not retried forever
    queue.claim("srv-a")
    [gave_up] = queue.recover("srv-a")
    assert gave_up.status == "error" and "gave up" in gave_up.message


def test_jobs_survive_reopening(queue: JobQueue) -> None:
    job = queue.enqueue(repo="acme/shop", issue=5, installation_id=1)
    reopened = JobQueue.open(queue.target)
    assert [j.id for j in reopened.jobs()] == [job.id]  # type: ignore[union-attr]
    assert reopened.counts() == {"queued": 1}
