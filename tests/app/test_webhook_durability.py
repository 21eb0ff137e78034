"""No trigger lost, none run twice, and an answer that never waits for a run -- against the real
`loop serve` (`python -m agentloop.cli.main serve` in its own session), real HTTP on loopback, and the queue
on SQLite and on the real PostgreSQL at 127.0.0.1:5432 (skipped when unreachable, as in test_queue).

The server is killed with SIGKILL at each point between a delivery's receipt and its job being queued
(LOOP_TEST_CRASH_AT makes the server kill itself exactly there), started again and the delivery
redelivered: one job each time. Runs happen in worker processes; the runs here are small real ones
(`LOOP_TEST_RUNS`, a module written per test) that hold, finish, or SIGKILL their own worker.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from forge.conftest import SLUG
from forge.fake_github import FakeGitHub, start_asgi, stop_asgi
from forge.payloads import comment_event, encode, issues_event

from agentloop.app.queue import JobQueue, QueueUnavailable, Work
from agentloop.app.server import CRASH_POINTS, AppSettings, create_app, signature_for
from agentloop.errors import ConfigError

SECRET = "webhook-secret-for-durability"
PG = "postgresql://postgres@127.0.0.1:5432/test"

RUNS_MODULE = '''
"""Runs for the worker processes of test_webhook_durability: steered by files in LOOP_TEST_CONTROL."""
import json, os, signal
from dataclasses import dataclass
from pathlib import Path

CONTROL = Path(os.environ["LOOP_TEST_CONTROL"])


@dataclass
class Outcome:
    run_id: str
    status: str
    pull_request: None = None
    message: str = ""


def fix(repo, issue, *, cancel, progress, **_):
    run_id = f"r-{issue}"
    progress({"run_id": run_id})
    (CONTROL / f"started-{issue}").write_text(json.dumps({"pid": os.getpid(), "ppid": os.getppid()}))
    if (CONTROL / f"kill-{issue}").exists():
        os.kill(os.getpid(), signal.SIGKILL)
    while (CONTROL / f"hold-{issue}").exists():
        if cancel.wait(0.05):
            return Outcome(run_id, "interrupted", message="stopped while held")
    return Outcome(run_id, "failed", message=f"tiny run on {issue} done")


def resume(repo, run_id, *, cancel, progress, **_):
    return fix(repo, run_id.split("-")[1], cancel=cancel, progress=progress)
'''


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Serve:
    """One life of `loop serve` leading its own process group (its workers are in it)."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path):
        self.url = f"http://127.0.0.1:{_free_port()}"
        self.log = log
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "agentloop.cli.main", "serve", "--port", self.url.rsplit(":", 1)[1], *args],
                env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            )
        self.wait_for("/healthz", lambda: httpx.get(f"{self.url}/healthz", timeout=5).status_code == 200)

    def wait_for(self, what: str, check: Callable[[], Any], timeout: float = 240) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"loop serve exited waiting for {what}:\n{self.log.read_text()}"
            with contextlib.suppress(httpx.HTTPError):
                found = check()
                if found:
                    return found
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}:\n{self.log.read_text()[-4000:]}")

    def post(self, body: bytes, delivery: str, event: str = "issues") -> httpx.Response:
        return httpx.post(f"{self.url}/webhook", content=body, timeout=30, headers={
            "X-GitHub-Event": event, "X-GitHub-Delivery": delivery, "X-Hub-Signature-256": signature_for(SECRET, body)})

    def jobs(self) -> dict[int, dict[str, Any]]:
        listed: list[dict[str, Any]] = httpx.get(f"{self.url}/runs", timeout=10).json()
        return {job["issue"]: job for job in listed}

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(15)


@pytest.fixture
def lives() -> Iterator[list[Serve]]:
    started: list[Serve] = []
    yield started
    for serve in started:
        serve.kill()


@pytest.fixture(params=["sqlite", "postgres"])
def queue_target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield str(tmp_path / "queue.sqlite3")
        return
    psycopg = pytest.importorskip("psycopg")
    schema = f"loop_test_{uuid.uuid4().hex[:10]}"
    try:
        admin = psycopg.connect(PG, connect_timeout=3, autocommit=True)
    except psycopg.Error as exc:
        pytest.skip(f"PostgreSQL at 127.0.0.1:5432 unreachable: {exc}")
    admin.execute(f"CREATE SCHEMA {schema}")
    try:
        yield f"{PG}?options=-csearch_path%3D{schema}"
    finally:
        admin.execute(f"DROP SCHEMA {schema} CASCADE")
        admin.close()


def _env(app_key: tuple[str, str], api_url: str = "http://127.0.0.1:9/api/v3", **extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("LOOP_TEST_")}
    return {**env, "GITHUB_APP_ID": "42", "GITHUB_APP_PRIVATE_KEY": app_key[0], "GITHUB_WEBHOOK_SECRET": SECRET,
            "GITHUB_API_URL": api_url, "LOOP_LOG_LEVEL": "INFO", **extra}


@pytest.mark.parametrize("point", CRASH_POINTS)
def test_a_kill_between_receipt_and_enqueue_loses_no_trigger_and_runs_none_twice(
    point: str, queue_target: str, tmp_path: Path, app_key: tuple[str, str], lives: list[Serve]
) -> None:
    args = ["--queue", queue_target, "--workdir", str(tmp_path / "serve"), "--workers", "0"]
    log = tmp_path / "serve.log"
    body = encode(issues_event("labeled", number=7, labels=["loop"], label="loop"))
    delivery = str(uuid.uuid4())

    first = Serve(args, _env(app_key, LOOP_TEST_CRASH_AT=point), log)
    lives.append(first)
    with pytest.raises(httpx.TransportError):  # the server died with the request in its hands
        first.post(body, delivery)
    assert first.proc.wait(15) == -signal.SIGKILL, log.read_text()

    second = Serve(args, _env(app_key), log)
    lives.append(second)
    redelivered = second.post(body, delivery)
    again = second.post(body, delivery)
    assert redelivered.status_code == 202 and again.status_code == 202
    if point == "after-commit":  # the first life had queued it: the redelivery starts nothing
        assert redelivered.json() == {"ignored": "redelivery"}
    else:
        assert "queued" in redelivered.json(), redelivered.text
    assert again.json() == {"ignored": "redelivery"}

    jobs = JobQueue.open(queue_target)
    try:
        [job] = jobs.jobs()
        assert (job.delivery_id, job.repo, job.issue, job.status) == (delivery, SLUG, 7, "queued")
    finally:
        jobs.close()


def test_a_delivery_an_older_server_recorded_but_never_queued_is_queued_on_redelivery(queue_target: str) -> None:
    jobs = JobQueue.open(queue_target)
    try:
        # what the two-transaction server left when it died between recording and queuing
        with jobs._db.tx() as run:
            run("INSERT INTO loop_deliveries (delivery_id, received_at) VALUES (?, ?)", ("lost-1", 0.0))
        work = Work("fix", SLUG, 7, 4242)
        first = jobs.accept("lost-1", work)
        assert first.outcome == "queued" and first.job is not None and first.job.delivery_id == "lost-1"
        assert jobs.accept("lost-1", work).outcome == "redelivery"
        # a delivery that found its issue busy was handled: its redelivery queues nothing either
        assert jobs.accept("busy-1", work).outcome == "busy"
        jobs.finish(first.job.id, "failed")
        assert jobs.accept("busy-1", work).outcome == "redelivery"
        assert len(jobs.jobs()) == 1
    finally:
        jobs.close()


@pytest.fixture
def app_env(github: FakeGitHub, shop: Path, tmp_path: Path, app_key: tuple[str, str]) -> dict[str, str]:
    """A `loop serve` environment whose worker processes run RUNS_MODULE against the loopback GitHub."""
    for number in (8, 9):
        github.add_issue(SLUG, number, f"issue {number}", "", labels=("loop",))
    (tmp_path / "runs_pkg").mkdir()
    (tmp_path / "runs_pkg" / "loop_test_runs.py").write_text(RUNS_MODULE)
    (tmp_path / "control").mkdir()
    path = os.pathsep.join(filter(None, [str(tmp_path / "runs_pkg"), os.environ.get("PYTHONPATH")]))
    return _env(app_key, github.api_url, LOOP_TEST_RUNS="loop_test_runs", LOOP_TEST_CONTROL=str(tmp_path / "control"),
                PYTHONPATH=path)


def _label(serve: Serve, number: int) -> dict[str, Any]:
    response = serve.post(encode(issues_event("labeled", number=number, labels=["loop"], label="loop")),
                          str(uuid.uuid4()))
    assert response.status_code == 202, response.text
    answer: dict[str, Any] = response.json()
    return answer


def _ended(serve: Serve, number: int) -> Callable[[], dict[str, Any] | None]:
    def check() -> dict[str, Any] | None:
        job = serve.jobs().get(number)
        return job if job and job["status"] not in ("queued", "running") else None

    return check


def test_the_answer_does_not_wait_for_the_run_which_runs_in_a_worker_process(
    app_env: dict[str, str], tmp_path: Path, lives: list[Serve]
) -> None:
    control = tmp_path / "control"
    (control / "hold-7").write_text("")
    serve = Serve(["--queue", str(tmp_path / "q.sqlite3"), "--workdir", str(tmp_path / "serve"), "--workers", "1"],
                  app_env, tmp_path / "serve.log")
    lives.append(serve)
    assert "queued" in _label(serve, 7)
    started = serve.wait_for("issue 7's run to start", lambda: (control / "started-7").is_file())
    ran_in = json.loads((control / "started-7").read_text())
    assert ran_in["pid"] != serve.proc.pid and ran_in["ppid"] == serve.proc.pid, "the run is a worker process's"

    # the only worker is held by issue 7's run; deliveries are still answered, and queued
    assert started and "queued" in _label(serve, 8)
    assert _label(serve, 7) == {"ignored": "a run for this issue is already queued or running"}
    jobs = serve.jobs()
    assert (jobs[7]["status"], jobs[8]["status"]) == ("running", "queued"), "answered while the run went on"

    # `/loop stop` reaches the run in its worker process
    stop = serve.post(encode(comment_event("/loop stop", association="MEMBER")), str(uuid.uuid4()), "issue_comment")
    assert stop.json() == {"stopped": True}
    seven = serve.wait_for("issue 7's run to stop", _ended(serve, 7))
    assert (seven["status"], seven["message"]) == ("interrupted", "stopped while held")
    eight = serve.wait_for("issue 8's run", _ended(serve, 8))
    assert (eight["status"], eight["message"]) == ("failed", "tiny run on 8 done")


def test_a_run_that_kills_its_worker_leaves_the_server_answering(
    app_env: dict[str, str], tmp_path: Path, lives: list[Serve]
) -> None:
    control = tmp_path / "control"
    (control / "kill-9").write_text("")
    log = tmp_path / "serve.log"
    serve = Serve(["--queue", str(tmp_path / "q.sqlite3"), "--workdir", str(tmp_path / "serve"), "--workers", "1"],
                  app_env, log)
    lives.append(serve)
    assert "queued" in _label(serve, 9)
    serve.wait_for("issue 9's run to start", lambda: (control / "started-9").is_file())

    # each attempt SIGKILLs its worker: the server answers throughout, and gives up after max_attempts
    assert "queued" in _label(serve, 8)
    failures: list[str] = []

    def nine_given_up() -> dict[str, Any] | None:
        try:
            assert httpx.get(f"{serve.url}/healthz", timeout=10).json()["ok"] is True
        except httpx.HTTPError as exc:
            failures.append(repr(exc))
        return _ended(serve, 9)()

    nine = serve.wait_for("issue 9 to be given up on", nine_given_up, timeout=120)
    assert failures == []
    assert (nine["status"], nine["attempts"]) == ("error", 3) and "gave up" in nine["message"], nine
    assert log.read_text().count("died (signal 9)") == 3

    # a worker started after the last death runs the next job to its end
    eight = serve.wait_for("issue 8's run", _ended(serve, 8))
    assert (eight["status"], eight["message"]) == ("failed", "tiny run on 8 done")
    assert serve.proc.poll() is None and httpx.get(f"{serve.url}/healthz", timeout=10).json()["ok"] is True


def test_workers_do_not_outlive_a_killed_server_and_the_next_life_resumes_their_run(
    app_env: dict[str, str], tmp_path: Path, lives: list[Serve]
) -> None:
    control = tmp_path / "control"
    (control / "hold-7").write_text("")
    args = ["--queue", str(tmp_path / "q.sqlite3"), "--workdir", str(tmp_path / "serve"), "--workers", "1"]
    first = Serve(args, app_env, tmp_path / "serve.log")
    lives.append(first)
    assert "queued" in _label(first, 7)
    first.wait_for("issue 7's run to start", lambda: (control / "started-7").is_file())
    worker = json.loads((control / "started-7").read_text())["pid"]

    os.kill(first.proc.pid, signal.SIGKILL)  # the server alone, not its process group
    first.proc.wait(15)
    deadline = time.monotonic() + 30
    while Path(f"/proc/{worker}").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not Path(f"/proc/{worker}").exists(), "the worker outlived its server"

    (control / "hold-7").unlink()
    second = Serve(args, app_env, tmp_path / "serve.log")
    lives.append(second)
    seven = second.wait_for("issue 7's run", _ended(second, 7))
    assert (seven["status"], seven["run_id"], seven["attempts"]) == ("failed", "r-7", 2), "resumed, not lost"


def test_a_queue_with_two_active_jobs_for_one_issue_is_named_with_the_fix(queue_target: str) -> None:
    jobs = JobQueue.open(queue_target)
    try:  # what servers racing before the unique index could leave behind
        with jobs._db.tx() as run:
            run("DROP INDEX loop_jobs_one_active")
            for _ in range(2):
                run("INSERT INTO loop_jobs (repo, issue, action, status, created_at, updated_at) "
                    "VALUES ('acme/shop', 7, 'fix', 'queued', 0, 0)")
    finally:
        jobs.close()
    with pytest.raises(ConfigError, match=r"jobs 1 and 2 are both queued or running for acme/shop#7; cancel one"):
        JobQueue.open(queue_target)


def test_an_unreachable_queue_answers_503_so_the_delivery_can_be_redelivered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    queue = JobQueue.open(tmp_path / "q.sqlite3")

    def down(*args: Any, **kwargs: Any) -> Any:
        raise QueueUnavailable("PostgreSQL queue: OperationalError: the server closed the connection")

    monkeypatch.setattr(queue, "accept_many", down)
    server, thread, url = start_asgi(create_app(AppSettings(webhook_secret=SECRET), queue))
    try:
        body = encode(issues_event("opened", labels=["loop"]))
        response = httpx.post(f"{url}/webhook", content=body, timeout=10, headers={
            "X-GitHub-Event": "issues", "X-GitHub-Delivery": "d-503", "X-Hub-Signature-256": signature_for(SECRET, body)})
        assert response.status_code == 503 and "redeliver" in response.json()["error"]
        assert httpx.get(f"{url}/healthz", timeout=10).status_code == 200  # and it still serves
    finally:
        stop_asgi(server, thread)
        queue.close()


def test_a_crash_point_that_does_not_exist_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOOP_TEST_CRASH_AT", "after-lunch")
    with pytest.raises(ConfigError, match="LOOP_TEST_CRASH_AT='after-lunch': not one of after-verify"):
        create_app(AppSettings(webhook_secret=SECRET), JobQueue.open(tmp_path / "q.sqlite3"))
