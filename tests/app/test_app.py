"""The webhook server over real HTTP on loopback (uvicorn in a thread): signatures, routing, bad input.

Workers are not started here (jobs stay queued) so that what each delivery queued is visible."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from forge.fake_github import start_asgi, stop_asgi
from forge.payloads import INSTALLATION, comment_event, encode, issues_event, ping_event

from agentloop.app.queue import JobQueue
from agentloop.app.server import AppSettings, create_app, signature_for, verify_signature

SECRET = "It's a Secret to Everybody"
Post = Callable[..., httpx.Response]


@pytest.fixture
def queue(tmp_path: Path) -> JobQueue:
    return JobQueue.open(tmp_path / "queue.sqlite3")


@pytest.fixture
def base_url(queue: JobQueue) -> Iterator[str]:
    server, thread, url = start_asgi(create_app(AppSettings(webhook_secret=SECRET, max_body=64 * 1024), queue))
    try:
        yield url
    finally:
        stop_asgi(server, thread)


@pytest.fixture
def post(base_url: str) -> Post:
    def _post(event: str, payload: dict[str, Any] | bytes, *, delivery: str | None = None,
              signature: str | None = "sign") -> httpx.Response:
        body = payload if isinstance(payload, bytes) else encode(payload)
        headers = {"X-GitHub-Event": event, "X-GitHub-Delivery": delivery or str(uuid.uuid4()),
                   "Content-Type": "application/json"}
        if signature == "sign":
            headers["X-Hub-Signature-256"] = signature_for(SECRET, body)
        elif signature is not None:
            headers["X-Hub-Signature-256"] = signature
        return httpx.post(f"{base_url}/webhook", content=body, headers=headers, timeout=10)

    return _post


def test_signature_matches_githubs_documented_example() -> None:
    expected = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
    assert signature_for(SECRET, b"Hello, World!") == expected
    assert verify_signature(SECRET, b"Hello, World!", expected)
    assert not verify_signature(SECRET, b"Hello, World?", expected)


def test_signed_issue_opened_with_label_is_queued(post: Post, queue: JobQueue) -> None:
    response = post("issues", issues_event("opened", labels=["loop"]))
    assert response.status_code == 202
    [job] = queue.jobs()
    assert (job.repo, job.issue, job.installation_id, job.status) == ("acme/shop", 7, INSTALLATION, "queued")


@pytest.mark.parametrize("signature", [None, "sha256=" + "0" * 64, "sha1=abc"])
def test_missing_or_wrong_signature_is_401_and_starts_nothing(post: Post, queue: JobQueue, signature: str | None) -> None:
    response = post("issues", issues_event("opened", labels=["loop"]), signature=signature)
    assert response.status_code == 401
    assert queue.jobs() == []


def test_bad_signature_is_checked_before_parsing(post: Post) -> None:
    assert post("issues", b"{not json", signature="sha256=00").status_code == 401


def test_redelivery_starts_nothing_new(post: Post, queue: JobQueue) -> None:
    payload = issues_event("labeled", labels=["loop"], label="loop")
    first = post("issues", payload, delivery="72d3162e-cc78-11e3-81ab-4c9367dc0958")
    queue.finish(queue.jobs()[0].id, "failed")  # even once the first run is over
    again = post("issues", payload, delivery="72d3162e-cc78-11e3-81ab-4c9367dc0958")
    assert first.status_code == 202 and again.status_code == 202
    assert again.json() == {"ignored": "redelivery"}
    assert len(queue.jobs()) == 1


def test_ping_answers_200(post: Post) -> None:
    assert post("ping", ping_event()).status_code == 200


def test_one_run_per_issue_at_a_time(post: Post, queue: JobQueue) -> None:
    post("issues", issues_event("opened", labels=["loop"]))
    second = post("issues", issues_event("labeled", labels=["loop"], label="loop"))
    assert second.status_code == 202 and "already" in second.json()["ignored"]
    assert len(queue.jobs()) == 1


@pytest.mark.parametrize("payload", [issues_event("opened"), issues_event("labeled", labels=["bug"], label="bug"),
                                     issues_event("closed", labels=["loop"])])
def test_issues_without_the_label_are_ignored(post: Post, queue: JobQueue, payload: dict[str, Any]) -> None:
    assert post("issues", payload).status_code == 202
    assert queue.jobs() == []


@pytest.mark.parametrize("association", ["CONTRIBUTOR", "NONE", "FIRST_TIME_CONTRIBUTOR"])
def test_command_from_a_non_member_is_ignored(post: Post, queue: JobQueue, association: str) -> None:
    response = post("issue_comment", comment_event("/loop fix", association=association, login="stranger"))
    assert response.status_code == 202 and "may not run loop" in response.json()["ignored"]
    assert queue.jobs() == []


def test_commands_from_bots_are_ignored(post: Post, queue: JobQueue) -> None:
    post("issue_comment", comment_event("/loop fix", association="MEMBER", login="loop-app[bot]", kind="Bot"))
    assert queue.jobs() == []


def test_member_fix_then_stop(post: Post, queue: JobQueue) -> None:
    assert post("issue_comment", comment_event("/loop fix", association="COLLABORATOR")).status_code == 202
    assert queue.jobs()[0].status == "queued"
    assert post("issue_comment", comment_event("/loop stop")).json() == {"stopped": True}
    assert queue.jobs()[0].status == "cancelled"
    post("issue_comment", comment_event("/loop retry", association="OWNER"))
    assert [job.action for job in queue.jobs()] == ["retry", "fix"]


def test_bad_input_gets_clear_status_codes(post: Post, base_url: str, queue: JobQueue) -> None:
    assert post("issues", b"{not json").status_code == 400
    assert post("issues", b"x" * (65 * 1024)).status_code == 413
    unknown = post("push", {"ref": "refs/heads/main"})
    assert unknown.status_code == 202 and "push" in unknown.json()["ignored"]
    missing = issues_event("opened", labels=["loop"])
    del missing["issue"]["number"]
    response = post("issues", missing)
    assert response.status_code == 422 and "number" in response.json()["error"]
    # and the server still serves
    assert httpx.get(f"{base_url}/healthz", timeout=5).json()["ok"] is True
    assert queue.jobs() == []


def test_runs_lists_jobs_as_json(post: Post, base_url: str) -> None:
    post("issues", issues_event("opened", labels=["loop"]))
    runs = httpx.get(f"{base_url}/runs", timeout=5).json()
    assert [(r["repo"], r["issue"], r["status"]) for r in runs] == [("acme/shop", 7, "queued")]
    assert httpx.get(f"{base_url}/healthz", timeout=5).json()["jobs"] == {"queued": 1}
