"""The GitHub App's webhook server (starlette on uvicorn): webhooks in, jobs queued, runs out.

Order of checks for POST /webhook: body size (413), signature over the raw body (401) -- nothing is
parsed before the signature holds -- then event routing; ignored events answer 202 with the reason,
which is also logged.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from agentloop.forge.github import STATUS_MARKER
from agentloop.forge.queue import JobQueue
from agentloop.forge.worker import Worker

log = logging.getLogger(__name__)

MAX_BODY = 1024 * 1024  # GitHub caps payloads at 25 MB but issue events are a few KB
TRUSTED = frozenset({"OWNER", "MEMBER", "COLLABORATOR"})
COMMANDS = ("fix", "stop", "retry")


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
    return bool(header) and hmac.compare_digest(signature_for(secret, body), str(header))


def create_app(settings: AppSettings, queue: JobQueue, worker: Worker | None = None) -> Starlette:
    """The ASGI app. With a worker, its pool runs for the app's lifetime."""

    async def webhook(request: Request) -> Response:
        try:
            body = await _read_body(request, settings.max_body)
            if not verify_signature(settings.webhook_secret, body, request.headers.get("x-hub-signature-256")):
                raise _Reject(401, "missing or wrong X-Hub-Signature-256")
            # The queue may be a remote PostgreSQL: keep its round trips off the event loop.
            return await run_in_threadpool(
                _handle, request.headers.get("x-github-event", ""), request.headers.get("x-github-delivery"), body
            )
        except _Reject as reject:
            log.warning("webhook rejected (%s): %s", reject.status, reject.reason)
            return JSONResponse({"error": reject.reason}, status_code=reject.status)

    def _handle(event: str, delivery: str | None, body: bytes) -> Response:
        if event == "ping":
            return JSONResponse({"ok": True, "zen": "pong"})
        try:
            payload = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            raise _Reject(400, "the body is not JSON") from None
        if not isinstance(payload, dict):
            raise _Reject(400, "the body is not a JSON object")
        if delivery and not queue.record_delivery(delivery):
            log.info("delivery %s already handled; nothing new started", delivery)
            return JSONResponse({"ignored": "redelivery"}, status_code=202)
        command = _command(event, payload, settings)
        if isinstance(command, str):
            log.info("delivery %s (%s) ignored: %s", delivery, event, command)
            return JSONResponse({"ignored": command}, status_code=202)
        action, repo, issue, installation = command
        if action == "stop":
            cancelled = queue.cancel_queued(repo, issue)
            running = worker.cancel(repo, issue) if worker else False
            return JSONResponse({"stopped": bool(cancelled) or running}, status_code=202)
        job = queue.enqueue(repo=repo, issue=issue, installation_id=installation, action=action, delivery_id=delivery)
        if job is None:
            log.info("%s#%s: a run is already queued or running; nothing new started", repo, issue)
            return JSONResponse({"ignored": "a run for this issue is already queued or running"}, status_code=202)
        if worker:
            worker.notify()
        log.info("%s#%s: queued job %s (%s)", repo, issue, job.id, action)
        return JSONResponse({"queued": job.id}, status_code=202)

    async def healthz(request: Request) -> Response:
        return JSONResponse({"ok": True, "jobs": await run_in_threadpool(queue.counts)})

    async def runs(request: Request) -> Response:
        jobs = await run_in_threadpool(queue.jobs)
        return JSONResponse([job.model_dump(mode="json", exclude={"owner"}) for job in jobs])

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if worker:
            worker.start()
        try:
            yield
        finally:
            if worker:
                worker.stop()

    return Starlette(
        routes=[
            Route("/webhook", webhook, methods=["POST"]),
            Route("/", webhook, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/runs", runs, methods=["GET"]),
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


def _command(event: str, payload: dict[str, Any], settings: AppSettings) -> tuple[str, str, int, int | None] | str:
    """(action, repo, issue, installation id) to act on, or the reason to ignore the delivery."""
    if event not in ("issues", "issue_comment"):
        return f"event {event or '(none)'!r} is not one loop acts on"
    action = payload.get("action")
    issue = _field(payload, "issue", dict)
    repo = _field(_field(payload, "repository", dict), "full_name", str)
    number = _field(issue, "number", int)
    installation = payload.get("installation", {}).get("id") if isinstance(payload.get("installation"), dict) else None
    if event == "issues":
        labels = [label.get("name") for label in issue.get("labels", []) if isinstance(label, dict)]
        if action == "labeled":
            if _field(payload, "label", dict).get("name") != settings.label:
                return f"labeled with something other than {settings.label!r}"
        elif action != "opened" or settings.label not in labels:
            return f"issues.{action} without the {settings.label!r} label"
        return "fix", repo, number, installation
    if action != "created":
        return f"issue_comment.{action}"
    comment = _field(payload, "comment", dict)
    text = str(comment.get("body") or "").strip()
    words = text.split()
    if len(words) < 2 or words[0] != "/loop" or words[1] not in COMMANDS:
        return "comment is not a /loop command"
    user = comment.get("user") if isinstance(comment.get("user"), dict) else {}
    login = str(user.get("login", "")) if user else ""
    if (user or {}).get("type") == "Bot" or STATUS_MARKER in text or (
        settings.app_slug and login == f"{settings.app_slug}[bot]"
    ):
        return f"comment from a bot ({login})"
    if comment.get("author_association") not in TRUSTED:
        return f"{login} ({comment.get('author_association')}) may not run loop; owners, members and collaborators can"
    return words[1], repo, number, installation


def _field(container: dict[str, Any], name: str, kind: type) -> Any:
    value = container.get(name)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise _Reject(422, f"payload field `{name}` is missing or not a {kind.__name__}")
    return value
