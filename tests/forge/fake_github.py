"""A GitHub REST server on loopback for the forge and App tests.

It speaks the real wire protocol for the handful of endpoints loop uses, under a GitHub Enterprise
style base URL `http://127.0.0.1:PORT/api/v3`, and serves bare git repositories over smart HTTP by
running the real `git http-backend` (CGI) behind `/git/OWNER/NAME.git` -- that is the `clone_url`
the API reports, and it demands the token as HTTP Basic auth just as GitHub does.
Failures can be scripted (`fail_next`) to exercise retries.
"""

from __future__ import annotations

import base64
import json
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .fake_github_checks import FakeChecks
from .fake_github_reviews import FakeReviews


def start_asgi(app: Any, lifespan: str = "on") -> tuple[uvicorn.Server, threading.Thread, str]:
    """Serve `app` with uvicorn on a free loopback port in a thread; returns (server, thread, base URL)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan=lifespan))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the loopback server did not start")
        time.sleep(0.01)
    return server, thread, f"http://127.0.0.1:{port}"


def stop_asgi(server: uvicorn.Server, thread: threading.Thread) -> None:
    server.should_exit = True
    thread.join(15)


@dataclass
class FakeRepo:
    slug: str
    bare: Path
    default_branch: str = "main"
    issues: dict[int, dict[str, Any]] = field(default_factory=dict)
    comments: list[dict[str, Any]] = field(default_factory=list)
    pulls: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: str


class FakeGitHub(FakeChecks, FakeReviews):  # + pull request updates, GraphQL, check runs; reviews
    def __init__(self, root: Path, *, app_public_key: str | None = None, app_id: str = "42"):
        self.root = root
        self.repos: dict[str, FakeRepo] = {}
        self.tokens: set[str] = {"ghs_test0000000000000000000000000000000000"}
        self.app_public_key = app_public_key
        self.app_id = app_id
        self.fail_next: list[tuple[int, dict[str, str]]] = []
        self.seen: list[Seen] = []
        self.issued_tokens = 0
        self.token_lifetime = 3600.0  # below loop's renewal margin, every use asks for a new token
        self._ids = iter(range(1000, 10**9))
        self._lock = threading.Lock()
        self.base = ""
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> FakeGitHub:
        self._server, self._thread, self.base = start_asgi(self._app(), lifespan="off")
        return self

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            stop_asgi(self._server, self._thread)

    @property
    def api_url(self) -> str:
        return f"{self.base}/api/v3"

    @property
    def token(self) -> str:
        return next(iter(self.tokens))

    # -- fixtures ----------------------------------------------------------------------------------

    def add_repo(self, slug: str, source: Path, default_branch: str = "main") -> FakeRepo:
        """A bare repository holding `source`'s history (its `default_branch`)."""
        bare = self.root / "git" / f"{slug}.git"
        bare.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["git", "clone", "--quiet", "--bare", str(source), str(bare)], check=True)
        subprocess.run(["git", "config", "http.receivepack", "true"], cwd=bare, check=True)
        repo = FakeRepo(slug=slug, bare=bare, default_branch=default_branch)
        self.repos[slug] = repo
        return repo

    def add_issue(self, slug: str, number: int, title: str, body: str = "", labels: tuple[str, ...] = ()) -> None:
        self.repos[slug].issues[number] = {
            "number": number, "title": title, "body": body, "state": "open",
            "html_url": f"{self.base}/{slug}/issues/{number}",
            "labels": [{"name": name} for name in labels],
        }

    def comments_on(self, slug: str, number: int) -> list[dict[str, Any]]:
        return [c for c in self.repos[slug].comments if c["issue"] == number]

    def branch_sha(self, slug: str, branch: str) -> str | None:
        done = subprocess.run(["git", "rev-parse", f"refs/heads/{branch}"], cwd=self.repos[slug].bare,
                              capture_output=True, text=True, check=False)
        return done.stdout.strip() if done.returncode == 0 else None

    def follow_head(self, repo: FakeRepo, pull: dict[str, Any]) -> dict[str, Any]:
        """An open pull request's head is its branch's tip, as on GitHub: a push to the branch moves it."""
        sha = self.branch_sha(repo.slug, pull["head"]["ref"]) if pull["state"] == "open" else None
        if sha is not None:
            pull["head"]["sha"] = sha
        return pull

    # -- the server --------------------------------------------------------------------------------

    def _app(self) -> Starlette:
        api = "/api/v3/repos/{owner}/{name}"
        return Starlette(routes=[
            Route("/api/v3/app/installations/{iid:int}/access_tokens", self._access_token, methods=["POST"]),
            Route("/api/v3/user", self._user, methods=["GET"]),
            Route(api, self._repo, methods=["GET"]),
            Route(api + "/issues/{number:int}", self._issue, methods=["GET"]),
            Route(api + "/issues/{number:int}/comments", self._comments, methods=["GET", "POST"]),
            Route(api + "/issues/comments/{cid:int}", self._edit_comment, methods=["PATCH"]),
            Route(api + "/pulls", self._pulls, methods=["GET", "POST"]),
            Route("/git/{path:path}", self._git, methods=["GET", "POST"]),
            *self.checks_routes(api),
            *self.reviews_routes(api),
        ])

    async def _record(self, request: Request) -> Response | None:
        body = (await request.body()).decode(errors="replace")
        self.seen.append(Seen(request.method, request.url.path, dict(request.headers), body))
        with self._lock:
            if self.fail_next and request.url.path.startswith("/api/"):
                status, headers = self.fail_next.pop(0)
                return JSONResponse({"message": "scripted failure"}, status_code=status, headers=headers)
        return None

    def _authorized(self, request: Request) -> bool:
        header = request.headers.get("authorization", "")
        return header.startswith(("Bearer ", "token ")) and header.split(" ", 1)[1] in self.tokens

    def _repo_or_none(self, request: Request) -> FakeRepo | None:
        return self.repos.get(f"{request.path_params['owner']}/{request.path_params['name']}")

    async def _guard(self, request: Request) -> tuple[Response | None, FakeRepo | None]:
        failed = await self._record(request)
        if failed is not None:
            return failed, None
        if not self._authorized(request):
            return JSONResponse({"message": "Bad credentials"}, status_code=401), None
        repo = self._repo_or_none(request)
        if repo is None:
            return JSONResponse({"message": "Not Found"}, status_code=404), None
        return None, repo

    async def _access_token(self, request: Request) -> Response:
        failed = await self._record(request)
        if failed is not None:
            return failed
        bearer = request.headers.get("authorization", "").removeprefix("Bearer ")
        try:
            claims = jwt.decode(bearer, self.app_public_key or "", algorithms=["RS256"], issuer=self.app_id)
        except jwt.PyJWTError:
            return JSONResponse({"message": "A JSON web token could not be decoded"}, status_code=401)
        if claims["exp"] - claims["iat"] > 600 or claims["iat"] > time.time():
            return JSONResponse({"message": "'Expiration time' claim ('exp') is too far in the future"}, status_code=401)
        with self._lock:
            self.issued_tokens += 1
            token = f"ghs_installation{self.issued_tokens:024d}"
            self.tokens.add(token)
        expires = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + self.token_lifetime))
        return JSONResponse({"token": token, "expires_at": expires}, status_code=201)

    async def _user(self, request: Request) -> Response:
        """Who the token is: a personal token's user; an App's installation token may not ask (as on GitHub)."""
        failed = await self._record(request)
        if failed is not None:
            return failed
        if not self._authorized(request):
            return JSONResponse({"message": "Bad credentials"}, status_code=401)
        if "installation" in request.headers.get("authorization", ""):
            return JSONResponse({"message": "Resource not accessible by integration"}, status_code=403)
        return JSONResponse({"login": "loop[bot]", "type": "Bot"})

    async def _repo(self, request: Request) -> Response:
        failed, repo = await self._guard(request)
        if failed or repo is None:
            return failed or Response(status_code=500)
        return JSONResponse({"full_name": repo.slug, "default_branch": repo.default_branch,
                             "clone_url": f"{self.base}/git/{repo.slug}.git"})

    async def _issue(self, request: Request) -> Response:
        failed, repo = await self._guard(request)
        if failed or repo is None:
            return failed or Response(status_code=500)
        issue = repo.issues.get(request.path_params["number"])
        return JSONResponse(issue) if issue else JSONResponse({"message": "Not Found"}, status_code=404)

    async def _comments(self, request: Request) -> Response:
        failed, repo = await self._guard(request)
        if failed or repo is None:
            return failed or Response(status_code=500)
        number = request.path_params["number"]
        if request.method == "GET":
            page = int(request.query_params.get("page", "1"))
            per_page = int(request.query_params.get("per_page", "30"))
            mine = [c for c in repo.comments if c["issue"] == number]
            chunk = mine[(page - 1) * per_page: page * per_page]
            headers = {}
            if page * per_page < len(mine):
                nxt = f"{self.api_url}/repos/{repo.slug}/issues/{number}/comments?per_page={per_page}&page={page + 1}"
                headers["link"] = f'<{nxt}>; rel="next"'
            return JSONResponse(chunk, headers=headers)
        data = json.loads(await request.body())
        comment = {"id": next(self._ids), "issue": number, "body": data["body"], "edits": 0,
                   "user": {"login": "loop[bot]", "type": "Bot"}}
        repo.comments.append(comment)
        return JSONResponse(comment, status_code=201)

    async def _edit_comment(self, request: Request) -> Response:
        failed, repo = await self._guard(request)
        if failed or repo is None:
            return failed or Response(status_code=500)
        for comment in repo.comments:
            if comment["id"] == request.path_params["cid"]:
                comment["body"] = json.loads(await request.body())["body"]
                comment["edits"] += 1
                return JSONResponse(comment)
        return JSONResponse({"message": "Not Found"}, status_code=404)

    async def _pulls(self, request: Request) -> Response:
        failed, repo = await self._guard(request)
        if failed or repo is None:
            return failed or Response(status_code=500)
        if request.method == "GET":
            head, state = request.query_params.get("head", ""), request.query_params.get("state", "open")
            found = [p for p in repo.pulls if f"{repo.slug.split('/')[0]}:{p['head']['ref']}" == head or not head]
            return JSONResponse([self.follow_head(repo, p) for p in found if state == "all" or p["state"] == state])
        data = json.loads(await request.body())
        sha = self.branch_sha(repo.slug, data["head"])
        if sha is None:
            return JSONResponse({"message": "Validation Failed", "errors": [{"field": "head"}]}, status_code=422)
        if any(p["head"]["ref"] == data["head"] for p in repo.pulls):
            return JSONResponse({"message": "A pull request already exists"}, status_code=422)
        number = 100 + len(repo.pulls) + 1
        pull = {"number": number, "html_url": f"{self.base}/{repo.slug}/pull/{number}", "title": data["title"],
                "state": "open",
                "body": data["body"], "draft": data.get("draft", False), "base": {"ref": data["base"]},
                "head": {"ref": data["head"], "sha": sha}}
        repo.pulls.append(pull)
        return JSONResponse(pull, status_code=201)

    async def _git(self, request: Request) -> Response:
        body = await request.body()
        self.seen.append(Seen(request.method, request.url.path, dict(request.headers), ""))
        auth = request.headers.get("authorization", "")
        user_token = base64.b64decode(auth[6:]).decode().split(":", 1) if auth.startswith("Basic ") else ["", ""]
        if user_token[1] not in self.tokens:
            return Response("auth required", status_code=401, headers={"WWW-Authenticate": 'Basic realm="GitHub"'})
        env = {
            "GIT_PROJECT_ROOT": str(self.root / "git"), "GIT_HTTP_EXPORT_ALL": "1",
            "PATH_INFO": "/" + request.path_params["path"], "REQUEST_METHOD": request.method,
            "QUERY_STRING": request.url.query, "CONTENT_TYPE": request.headers.get("content-type", ""),
            "CONTENT_LENGTH": str(len(body)), "REMOTE_USER": user_token[0], "REMOTE_ADDR": "127.0.0.1",
            "HTTP_CONTENT_ENCODING": request.headers.get("content-encoding", ""),
            "GIT_PROTOCOL": request.headers.get("git-protocol", ""), "PATH": "/usr/bin:/bin",
        }
        done = await run_in_threadpool(
            subprocess.run, ["git", "http-backend"], input=body, env=env, capture_output=True, check=False
        )
        head, _, payload = done.stdout.partition(b"\r\n\r\n")
        status, headers = 200, {}
        for line in head.decode().split("\r\n"):
            name, _, value = line.partition(":")
            if name.lower() == "status":
                status = int(value.strip().split()[0])
            elif name:
                headers[name.strip()] = value.strip()
        return Response(payload, status_code=status, headers=headers)
