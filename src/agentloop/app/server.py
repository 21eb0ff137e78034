"""The GitHub App's webhook server (starlette on uvicorn): webhooks in, jobs queued, runs out.

Order of checks for POST /webhook: body size (413), signature over the raw body (401) -- nothing is
parsed before the signature holds -- then the JSON (400: not JSON, not an object, nested too deeply),
then the fields loop reads (422, naming the field; see `events`), and only then is the delivery
remembered and acted on, in one transaction with the job it queues. Ignored events answer 202 with the
reason, which is also logged. The handler only verifies, records and queues: runs happen in worker
processes. Every answer is ASCII JSON, whatever bytes the payload carried; a queue that cannot be
reached answers 503, so that the delivery can be redelivered.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import os
import re
import signal
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.types import ASGIApp

from agentloop.app.events import (
    MAX_DEPTH,
    EventT,
    IssueCommentEvent,
    IssuesEvent,
    PayloadError,
    depth,
    parse_event,
)
from agentloop.app.queue import JobQueue, QueueUnavailable, Work
from agentloop.app.review_events import REVIEW_EVENTS, on_pull_request, review_command
from agentloop.app.writer import DeliveryWriter
from agentloop.errors import ConfigError
from agentloop.forge.github import STATUS_MARKER

log = logging.getLogger(__name__)

MAX_BODY = 1024 * 1024  # GitHub caps payloads at 25 MB but issue events are a few KB
TRUSTED = frozenset({"OWNER", "MEMBER", "COLLABORATOR"})
COMMANDS = ("fix", "stop", "retry")
_DELIVERY = re.compile(r"[A-Za-z0-9._:-]{1,100}")  # GitHub sends a GUID
CRASH_POINTS = ("after-verify", "after-record", "before-commit", "after-commit")


@dataclass(frozen=True)
class AppSettings:
    webhook_secret: str
    label: str = "loop"
    max_body: int = MAX_BODY
    app_slug: str | None = None  # its own comments come from `<slug>[bot]`


class _Reject(Exception):
    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status = status
        self.reason = reason


def signature_for(secret: str, body: bytes) -> str:
    """The `X-Hub-Signature-256` value GitHub sends for `body`."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify_signature(secret: str, body: bytes, header: str | None) -> bool:
    # compare_digest refuses non-ASCII str; such a header is simply wrong, never a crash
    if not header or not header.isascii():
        return False
    return hmac.compare_digest(signature_for(secret, body).encode(), header.encode())


class _AsciiJSON(JSONResponse):
    """JSON escaped to ASCII: a payload's lone surrogates or odd bytes echoed in a reason cannot break it."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, separators=(",", ":")).encode("ascii")


class Runs(Protocol):
    """Who runs the queued jobs: the `WorkerPool` of `loop serve` (processes), or a `Worker` (threads)."""

    def start(self) -> None: ...
    def stop(self) -> None: ...
    def notify(self) -> None: ...
    def cancel(self, repo: str, issue: int) -> bool: ...


def create_app(settings: AppSettings, queue: JobQueue, worker: Runs | None = None,
               pages: ASGIApp | None = None) -> Starlette:
    """The ASGI app. With a worker (pool), it runs for the app's lifetime; `pages` (the run pages) is
    mounted at /ui."""
    crash_at = _crash_point()

    writer = DeliveryWriter(queue, step=crash_at)

    async def webhook(request: Request) -> Response:
        try:
            body = await _read_body(request, settings.max_body)
            if not verify_signature(settings.webhook_secret, body, request.headers.get("x-hub-signature-256")):
                raise _Reject(401, "missing or wrong X-Hub-Signature-256")
            crash_at("after-verify")
            delivery = request.headers.get("x-github-delivery") or None
            if delivery is not None and not _DELIVERY.fullmatch(delivery):
                raise _Reject(400, "X-GitHub-Delivery is not a delivery id")
            return await _handle(request.headers.get("x-github-event", ""), delivery, body)
        except _Reject as reject:
            log.warning("webhook rejected (%s): %s", reject.status, reject.reason)
            return _AsciiJSON({"error": reject.reason}, status_code=reject.status)
        except QueueUnavailable as exc:
            log.error("webhook not recorded, the queue is unavailable: %s", exc)
            return _AsciiJSON({"error": "the job queue is unavailable; redeliver once it is back"}, status_code=503)

    async def _handle(event: str, delivery: str | None, body: bytes) -> Response:
        if event == "ping":
            return _AsciiJSON({"ok": True, "zen": "pong"})
        if event not in ("issues", "issue_comment", *REVIEW_EVENTS):
            reason = f"event {event or '(none)'!r} is not one loop acts on"
            log.info("delivery %s ignored: %s", delivery, reason)
            return _AsciiJSON({"ignored": reason}, status_code=202)
        command = _command(event, _json_object(body), settings)
        # Remembered only once it could be read (a fixed redelivery of a rejected one still counts),
        # and in the same transaction as what it asks for: a crash leaves both or neither.
        work = None if isinstance(command, str) else Work(*command)
        accepted = await writer.accept(delivery, work)
        crash_at("after-commit")
        if accepted.outcome == "redelivery":
            log.info("delivery %s already handled; nothing new started", delivery)
            return _AsciiJSON({"ignored": "redelivery"}, status_code=202)
        if isinstance(command, str) or work is None:
            log.info("delivery %s (%s) ignored: %s", delivery, event, command)
            return _AsciiJSON({"ignored": command}, status_code=202)
        if accepted.outcome == "stopped":
            running = await run_in_threadpool(worker.cancel, work.repo, work.issue) if worker else False
            return _AsciiJSON({"stopped": bool(accepted.cancelled) or running}, status_code=202)
        if accepted.job is None and work.action == "close":  # the review job in its way ends it (review_jobs)
            running = await run_in_threadpool(worker.cancel, work.repo, work.issue) if worker else False
            log.info("%s#%s closed during its review job (%s): the job removes the sandbox when it ends",
                     work.repo, work.issue, "stopping it" if running else "queued")
            return _AsciiJSON({"closing": "after the job of this pull request"}, status_code=202)
        if accepted.job is None:
            log.info("%s#%s: a run is already queued or running; nothing new started", work.repo, work.issue)
            return _AsciiJSON({"ignored": "a run for this issue is already queued or running"}, status_code=202)
        if worker:
            worker.notify()
        log.info("%s#%s: queued job %s (%s)", work.repo, work.issue, accepted.job.id, work.action)
        return _AsciiJSON({"queued": accepted.job.id}, status_code=202)

    async def healthz(request: Request) -> Response:
        return _AsciiJSON({"ok": True, "jobs": await run_in_threadpool(queue.counts)})

    async def runs(request: Request) -> Response:
        jobs = await run_in_threadpool(queue.jobs)
        return _AsciiJSON([job.model_dump(mode="json", exclude={"owner"}) for job in jobs])

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        writer.start()
        if worker:
            worker.start()
        try:
            yield
        finally:
            if worker:
                worker.stop()
            writer.stop()

    return Starlette(
        routes=[
            Route("/webhook", webhook, methods=["POST"]),
            Route("/", webhook, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/runs", runs, methods=["GET"]),
            *([Mount("/ui", pages)] if pages is not None else []),
        ],
        lifespan=lifespan,
    )


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise _Reject(413, f"body larger than {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _Reject(413, f"body larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _crash_point() -> Callable[[str], None]:
    """The test hook LOOP_TEST_CRASH_AT=after-verify|after-record|before-commit|after-commit: the server
    SIGKILLs itself there, exactly as a kill from outside landing at that point would."""
    point = os.environ.get("LOOP_TEST_CRASH_AT", "").strip()
    if not point:
        return _no_crash
    if point not in CRASH_POINTS:
        raise ConfigError(f"LOOP_TEST_CRASH_AT={point!r}: not one of {', '.join(CRASH_POINTS)}; unset it")

    def crash(name: str) -> None:
        if name == point:
            log.warning("LOOP_TEST_CRASH_AT=%s: killing this server", point)
            os.kill(os.getpid(), signal.SIGKILL)

    return crash


def _no_crash(name: str) -> None:
    return None


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        payload = json.loads(body)
    except RecursionError:
        raise _Reject(400, f"the body nests deeper than {MAX_DEPTH} levels") from None
    except ValueError:  # UnicodeDecodeError included
        raise _Reject(400, "the body is not JSON") from None
    if not isinstance(payload, dict):
        raise _Reject(400, "the body is not a JSON object")
    if depth(payload) > MAX_DEPTH:
        raise _Reject(400, f"the body nests deeper than {MAX_DEPTH} levels")
    return payload


def _command(event: str, payload: dict[str, Any], settings: AppSettings) -> tuple[str, str, int, int | None] | str:
    """(action, repo, issue, installation id) to act on, or the reason to ignore the delivery."""
    if on_pull_request(event, payload):  # a run's pull request: review iterations, its end (review_events)
        try:
            return review_command(event, payload, app_slug=settings.app_slug, trusted=TRUSTED)
        except PayloadError as exc:
            raise _Reject(422, str(exc)) from None
    if event == "issues":
        issues: IssuesEvent = _parse(IssuesEvent, payload)
        installation = issues.installation.id if issues.installation else None
        labels = [label.name for label in issues.issue.labels]
        if issues.action == "labeled":
            if issues.label is None or issues.label.name != settings.label:
                return f"labeled with something other than {settings.label!r}"
        elif issues.action != "opened" or settings.label not in labels:
            return f"issues.{issues.action} without the {settings.label!r} label"
        return "fix", issues.repository.full_name, issues.issue.number, installation
    comment_event: IssueCommentEvent = _parse(IssueCommentEvent, payload)
    if comment_event.action != "created":
        return f"issue_comment.{comment_event.action}"
    comment = comment_event.comment
    text = (comment.body or "").strip()
    words = text.split()
    if len(words) < 2 or words[0] != "/loop" or words[1] not in COMMANDS:
        return "comment is not a /loop command"
    user = comment.user
    login = user.login if user else ""
    if (user and user.type == "Bot") or STATUS_MARKER in text or (
        settings.app_slug and login == f"{settings.app_slug}[bot]"
    ):
        return f"comment from a bot ({login})"
    if comment.author_association not in TRUSTED:
        return f"{login} ({comment.author_association}) may not run loop; owners, members and collaborators can"
    installation = comment_event.installation.id if comment_event.installation else None
    return words[1], comment_event.repository.full_name, comment_event.issue.number, installation


def _parse(kind: type[EventT], payload: dict[str, Any]) -> EventT:
    try:
        return parse_event(kind, payload)
    except PayloadError as exc:
        raise _Reject(422, str(exc)) from None
