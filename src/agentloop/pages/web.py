"""The run pages as a starlette app: mounted at /ui by `loop serve`, served alone by `loop ui`.

Access: GET needs `?token=` (see `access`) for that run (the list: a token for every run) unless the app is
`local` -- `loop ui`, listening on 127.0.0.1 -- and the request comes from loopback with a loopback Host
(a web page elsewhere cannot rebind a name to it). A POST (approve, reject) always needs a token for the
run in its form: the page puts one there (minted for the person at the machine by `loop ui`), a form
posted from another site cannot know it. Answers carry no-store, a same-origin referrer (the token is in the URL)
and a Content-Security-Policy that allows no script. `/runs/<id>/preview/<service>/<path>` (same access as the
run page) proxies a GET or HEAD to that service in the run's sandbox (`preview`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, quote

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from agentloop.loop.review_sandbox import refresh_on_use
from agentloop.pages import render
from agentloop.pages.actions import AlreadyAnswered, Answer, answer_review
from agentloop.pages.data import RunRoots, RunView, all_runs, load_run
from agentloop.pages.preview import SandboxState, fetch_preview, sandbox_state, upstream_url
from agentloop.run_links import make_token, token_allows

_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
                               "frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    # the token (in the URL) never leaves for another site; same-origin, not no-referrer: with no-referrer a
    # browser posts `Origin: null`, which `_same_origin` must refuse
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
}
_LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]", "::1")
_MAX_FORM = 16 * 1024
_ACTION_TTL = 3600  # a form's token, minted for the local user: an hour to decide


@dataclass(frozen=True)
class PagesSettings:
    roots: RunRoots
    secret: bytes
    local: bool = False  # `loop ui` on 127.0.0.1: the person at this machine needs no token


# a previewed page is the sandbox's, not ours: `sandbox` gives it an opaque origin (no script as the pages)
_PREVIEW_HEADERS = {**_HEADERS, "Content-Security-Policy": _HEADERS["Content-Security-Policy"] + "; sandbox"}


def _html(text: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(text, status_code=status, headers=_HEADERS)


def _is_local(request: Request, settings: PagesSettings) -> bool:
    if not settings.local:
        return False
    client = request.client.host if request.client else ""
    header = request.headers.get("host", "")
    host = header.split("]", 1)[0] + "]" if header.startswith("[") else header.split(":", 1)[0]
    return client in ("127.0.0.1", "::1") and host in _LOOPBACK_HOSTS


def _sandbox(view: RunView) -> SandboxState:
    if view.run_dir is None or not view.summary.repo:  # the run's repository is on the machine that ran it
        return SandboxState("unknown", "the run's repository is not on this machine")
    return sandbox_state(Path(view.summary.repo), view.summary.id)


def _same_origin(request: Request) -> bool:
    """A browser's Origin, when sent, must be this server (a second guard beside the form's token)."""
    origin = request.headers.get("origin")
    if origin is None or origin == "null":
        return origin is None
    return origin.split("://", 1)[-1] == request.headers.get("host", "")


async def _form_token(request: Request) -> str | None:
    """The `token` field of a small urlencoded form (what the page's forms post); None otherwise."""
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/x-www-form-urlencoded":
        return None
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > _MAX_FORM:
            return None
    values = parse_qs(body.decode("ascii", errors="replace")).get("token") or []
    return values[0] if len(values) == 1 else None


def create_pages_app(settings: PagesSettings) -> Starlette:
    def base(request: Request) -> str:
        return str(request.scope.get("root_path", "")).rstrip("/")

    async def runs(request: Request) -> Response:
        token = request.query_params.get("token")
        if not (_is_local(request, settings) or token_allows(settings.secret, token, None)):
            return _html(render.refusal("the list of runs needs a token for every run, or `loop ui` on this "
                                        "machine"), 403)
        summaries = await run_in_threadpool(all_runs, settings.roots)
        return _html(render.runs_list(summaries, base(request), token))

    async def run(request: Request) -> Response:
        run_id = request.path_params["run_id"]
        token = request.query_params.get("token")
        local = _is_local(request, settings)
        if not (local or token_allows(settings.secret, token, run_id)):
            return _html(render.refusal("this page needs a valid, unexpired token for this run (the link in "
                                        "the pull request), or `loop ui` on this machine"), 403)
        view = await run_in_threadpool(load_run, settings.roots, run_id)
        if view is None:
            return _html(render.refusal(f"no run {run_id}"), 404)
        sandbox = await run_in_threadpool(_sandbox, view)
        action_token = token if token else make_token(settings.secret, run_id, _ACTION_TTL)
        return _html(render.run_page(view, base(request), token, action_token, sandbox))

    async def preview(request: Request) -> Response:
        run_id, service = request.path_params["run_id"], request.path_params["service"]
        token = request.query_params.get("token")
        if not (_is_local(request, settings) or token_allows(settings.secret, token, run_id)):
            return _html(render.refusal("a preview needs a valid, unexpired token for this run, or `loop ui` "
                                        "on this machine"), 403)
        view = await run_in_threadpool(load_run, settings.roots, run_id)
        if view is None:
            return _html(render.refusal(f"no run {run_id}"), 404)
        sandbox = await run_in_threadpool(_sandbox, view)
        if sandbox.info is None:
            return _html(render.refusal(f"no sandbox to preview: {sandbox.reason}"),
                         410 if sandbox.state == "gone" else 404)
        # a review sandbox someone looks at lives on (see refresh_on_use); _sandbox found the repository
        await run_in_threadpool(refresh_on_use, Path(view.summary.repo), sandbox.info)
        query: list[tuple[str, str | int | float | bool | None]] = [
            (k, v) for k, v in request.query_params.multi_items() if k != "token"]
        url = upstream_url(sandbox.info, service, request.path_params["path"], query)
        if url is None:
            return _html(render.refusal(f"the sandbox has no service {service!r}, or the path leaves it"), 404)
        preview_base = f"{base(request)}/runs/{quote(run_id, safe='')}/preview/{quote(service, safe='')}"
        answer = await run_in_threadpool(fetch_preview, sandbox.info, url, request.method, dict(request.headers),
                                         preview_base=preview_base, token=token)
        headers = {"content-type": "text/plain; charset=utf-8", **answer.headers, **_PREVIEW_HEADERS}
        body = b"" if request.method == "HEAD" else answer.body
        return Response(body, status_code=answer.status, headers=headers)

    async def answer(request: Request) -> Response:
        run_id = request.path_params["run_id"]
        if request.path_params["answer"] not in ("approve", "reject"):
            return _html(render.refusal("a run can be approved or rejected"), 404)
        choice: Answer = "approve" if request.path_params["answer"] == "approve" else "reject"
        token = await _form_token(request)
        if token is None or not token_allows(settings.secret, token, run_id) or not _same_origin(request):
            return _html(render.refusal("approving or rejecting needs the form of this run's page"), 403)
        view = await run_in_threadpool(load_run, settings.roots, run_id)
        if view is None:
            return _html(render.refusal(f"no run {run_id}"), 404)
        local = _is_local(request, settings)
        who = "the local user" if local else "a holder of the run's link"
        try:
            await run_in_threadpool(answer_review, view, choice, who)
        except AlreadyAnswered as exc:
            return _html(render.refusal(str(exc)), 409)
        target = f"{base(request)}/runs/{quote(run_id, safe='')}"
        # back to the page, which shows it publishing; the link's token goes along (the form carried it)
        return RedirectResponse(target if local else f"{target}?token={quote(token, safe='')}", status_code=303,
                                headers=_HEADERS)

    return Starlette(routes=[
        Route("/", runs, methods=["GET"]),
        Route("/runs/{run_id}", run, methods=["GET"]),
        Route("/runs/{run_id}/preview/{service}/{path:path}", preview, methods=["GET", "HEAD"]),
        Route("/runs/{run_id}/{answer:str}", answer, methods=["POST"]),
    ])
