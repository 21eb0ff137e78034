"""`loop serve` survives `kill -9`: a real server process is killed in the middle of a run and started
again on the same queue and work directory.

Everything is real except the far ends that cannot be reached offline: GitHub is the loopback server
of fake_github.py (REST under /api/v3 with App JWT auth, and `git http-backend` as the remote), and the
model is a cassette replayed through LOOP_MODEL=replay:FILE. The server is `python -m agentloop.cli.main
serve` in its own session, fed signed webhooks over HTTP; the runs are the real runner, with real git
clones and worktrees and the target's suite run by real pytest.
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
from forge.fake_github import FakeGitHub
from forge.payloads import encode, issues_event
from looptest import MakeRepo, create, git, replace, write_cassette

from agentloop.app.server import signature_for
from agentloop.forge.github import STATUS_MARKER

SECRET = "webhook-secret-for-the-kill-test"
CALC = "def add(a, b):\n    return a - b\n"
TEST_ADD = "from calc import add\n\n\ndef test_add():\n    assert add(2, 3) == 5\n"
CONFIG = {"services": {}, "validate": [{"suite": "unit", "run": "python3 -m pytest -q tests"}],
          "agent": {"max_iterations": 2}, "forge": {"kind": "github", "repo": SLUG}}


def _hold_conftest(hold: Path) -> str:
    """A conftest that makes the suite wait while `hold` exists (its directory is in `policy.readable`),
    leaving `.holding` in the worktree meanwhile. The suite's jail dies with the server that started it."""
    return (
        "import os, time\n"
        f"if os.path.exists({str(hold)!r}):\n"
        "    open('.holding', 'w').close()\n"
        f"while os.path.exists({str(hold)!r}):\n"
        "    time.sleep(0.1)\n"
        "if os.path.exists('.holding'):\n"
        "    os.remove('.holding')\n"
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    """One life of `loop serve` as a subprocess leading its own process group."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = log.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "agentloop.cli.main", "serve", "--port", str(self.port), *args],
            env=env, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )
        self._wait_healthy(log)

    def _wait_healthy(self, log: Path, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"loop serve exited:\n{log.read_text()}"
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return
            time.sleep(0.1)
        raise AssertionError(f"loop serve never answered /healthz:\n{log.read_text()}")

    def deliver_label(self, number: int) -> dict[str, Any]:
        body = encode(issues_event("labeled", number=number, labels=["loop"], label="loop"))
        response = httpx.post(f"{self.url}/webhook", content=body, timeout=10, headers={
            "X-GitHub-Event": "issues", "X-GitHub-Delivery": str(uuid.uuid4()),
            "X-Hub-Signature-256": signature_for(SECRET, body)})
        assert response.status_code == 202, response.text
        answer: dict[str, Any] = response.json()
        return answer

    def jobs(self) -> dict[int, dict[str, Any]]:
        listed: list[dict[str, Any]] = httpx.get(f"{self.url}/runs", timeout=10).json()
        return {job["issue"]: job for job in listed}

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(15)
        self._log.close()


def _wait(what: str, check: Callable[[], Any], server: Server, log: Path, timeout: float = 240) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert server.proc.poll() is None, f"loop serve exited while waiting for {what}:\n{log.read_text()}"
        found = check()
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}:\n{log.read_text()[-4000:]}")


def _validate_started(runs: Path) -> str | None:
    for events in runs.glob("*/events.jsonl"):
        for line in events.read_text().splitlines():
            event = json.loads(line)
            if event["node"] == "validate" and event["event"] == "start":
                return events.parent.name
    return None


@pytest.fixture
def servers() -> Iterator[list[Server]]:
    """Every server started is killed at the end (a suite left holding dies with its server's jail)."""
    started: list[Server] = []
    yield started
    for server in started:
        server.kill()


def test_kill_9_mid_validate_then_restart_resumes_the_run_and_runs_the_queued_job(
    github: FakeGitHub, make_repo: MakeRepo, tmp_path: Path, app_key: tuple[str, str],
    servers: list[Server],
) -> None:
    started = servers
    holds = tmp_path / "holds"
    holds.mkdir()
    hold = holds / "hold"
    hold.write_text("")
    source = make_repo({"calc.py": CALC, "tests/test_calc.py": "def test_nothing():\n    assert True\n",
                        "tests/conftest.py": _hold_conftest(hold)},
                       {**CONFIG, "policy": {"readable": [str(holds)]}}, name="calc-source")
    github.add_repo(SLUG, source)
    github.add_issue(SLUG, 7, "add() subtracts", "add(2, 3) returns -1", labels=("loop",))
    github.add_issue(SLUG, 8, "add() is still wrong", "add(2, 3) should be 5", labels=("loop",))
    cassette = write_cassette(tmp_path / "c.json", [[
        create("tests/test_add.py", TEST_ADD), replace("calc.py", "return a - b", "return a + b"),
    ]])
    workdir, log = tmp_path / "serve", tmp_path / "serve.log"
    env = {**os.environ, "GITHUB_APP_ID": github.app_id, "GITHUB_APP_PRIVATE_KEY": app_key[0],
           "GITHUB_WEBHOOK_SECRET": SECRET, "GITHUB_API_URL": github.api_url, "LOOP_MODEL": f"replay:{cassette}",
           "LOOP_LOG_LEVEL": "INFO"}  # the server log is what a failure shows
    args = ["--queue", str(tmp_path / "queue.sqlite3"), "--workdir", str(workdir)]
    shop = workdir / "repos" / "acme" / "shop"  # one clone (git/) for the repository, run records in runs/

    first = Server(args, env, log)
    started.append(first)
    assert "queued" in first.deliver_label(7)
    run_id = _wait("issue 7's run to reach validate", lambda: _validate_started(shop / "runs"), first, log)
    _wait("the suite to hold", lambda: any(shop.glob("git/loop/worktrees/*/.holding")), first, log)
    _wait("the job to carry its run id", lambda: first.jobs()[7]["run_id"] == run_id, first, log)
    assert "queued" in first.deliver_label(8)
    assert first.jobs()[8]["status"] == "queued"

    first.kill()
    hold.unlink()
    assert [p["draft"] for p in github.repos[SLUG].pulls] == [True]  # issue 7's draft, opened before validating

    second = Server(args, env, log)
    started.append(second)

    def finished() -> dict[int, dict[str, Any]] | None:
        jobs = second.jobs()
        return jobs if all(job["status"] not in ("queued", "running") for job in jobs.values()) else None

    jobs = _wait("both jobs to finish", finished, second, log, timeout=300)
    assert jobs[7]["status"] == "published", jobs[7]
    assert jobs[8]["status"] == "published", jobs[8]
    assert jobs[7]["run_id"] == run_id and jobs[7]["attempts"] == 2, "issue 7's run was resumed, not restarted"
    assert jobs[8]["run_id"] != run_id

    events = [json.loads(line) for line in (shop / "runs" / run_id / "events.jsonl").read_text().splitlines()]
    assert [e["node"] for e in events if e["event"] == "end"].count("edit") == 1, "the edit done before the kill was kept"

    pulls = {pull["head"]["ref"]: pull for pull in github.repos[SLUG].pulls}
    assert set(pulls) == {f"loop/7-{run_id}", f"loop/8-{jobs[8]['run_id']}"}
    branches = git(github.repos[SLUG].bare, "for-each-ref", "--format=%(refname:short)", "refs/heads/loop/").split()
    assert sorted(branches) == sorted(pulls), "one branch per issue: the resumed run pushed no second one"
    for number in (7, 8):
        [pull] = [p for p in pulls.values() if p["head"]["ref"].startswith(f"loop/{number}-")]
        assert pull["html_url"] == jobs[number]["pull_request_url"]
        assert f"Fixes #{number}" in pull["body"]
        assert "return a + b" in git(github.repos[SLUG].bare, "show", f"{pull['head']['ref']}:calc.py")
        [status] = [c for c in github.comments_on(SLUG, number) if STATUS_MARKER in c["body"]]
        assert status["body"].rstrip().endswith(pull["html_url"]), status["body"]
    issued = [token for token in github.tokens if "installation" in token]
    assert len(issued) == 2, "each server life exchanged its own installation token"
    assert not any(token in log.read_text() for token in issued)
