"""The loopback GitHub's pull request updates, draft -> ready (GraphQL) and Checks API (issue 16).

A mixin of `FakeGitHub`: `PATCH/GET /repos/O/R/pulls/N`, `POST /api/graphql` with the one mutation loop
sends (`markPullRequestReadyForReview`), and check runs (`POST /check-runs`, `PATCH /check-runs/ID`,
`GET /commits/SHA/check-runs`). Checks, as on GitHub, need an App's installation token: a token in
`no_checks` (a personal access token) gets 403. More than 50 annotations in one request get 422.
"""

from __future__ import annotations

import json
import re
import threading
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

if TYPE_CHECKING:
    from .fake_github import FakeRepo

_READY = re.compile(r"markPullRequestReadyForReview")


class FakeChecks:
    """Routes and state for draft pull requests and check runs; `FakeGitHub` provides `_guard`."""

    if TYPE_CHECKING:
        _lock: threading.Lock
        repos: dict[str, FakeRepo]
        tokens: set[str]

        async def _guard(self, request: Request) -> tuple[Response | None, FakeRepo | None]: ...
        async def _record(self, request: Request) -> Response | None: ...
        def _authorized(self, request: Request) -> bool: ...
        def follow_head(self, repo: FakeRepo, pull: dict[str, Any]) -> dict[str, Any]: ...

    @property
    def check_runs(self) -> list[dict[str, Any]]:
        """Every check run made, each with `repo` and the requests that updated it (`updates`)."""
        return self.__dict__.setdefault("_check_runs", [])

    @property
    def no_checks(self) -> set[str]:
        """Tokens that may not write checks (personal access tokens)."""
        return self.__dict__.setdefault("_no_checks", set())

    def pull_by_number(self, slug: str, number: int) -> dict[str, Any] | None:
        return next((p for p in self.repos[slug].pulls if p["number"] == number), None)

    def checks_routes(self, api: str) -> list[Route]:
        return [
            Route(api + "/pulls/{number:int}", self._pull, methods=["GET", "PATCH"]),
            Route("/api/graphql", self._graphql, methods=["POST"]),
            Route(api + "/check-runs", self._new_check, methods=["POST"]),
            Route(api + "/check-runs/{cid:int}", self._edit_check, methods=["PATCH"]),
            Route(api + "/commits/{sha}/check-runs", self._list_checks, methods=["GET"]),
        ]

    async def _pull(self, request: Request) -> Response:
        failed, repo = await self._guard(request)
        if failed or repo is None:
            return failed or Response(status_code=500)
        pull = self.pull_by_number(repo.slug, request.path_params["number"])
        if pull is None:
            return JSONResponse({"message": "Not Found"}, status_code=404)
        pull.setdefault("node_id", f"PR_{repo.slug}_{pull['number']}")
        if request.method == "PATCH":
            data = json.loads(await request.body())
            pull.update({k: v for k, v in data.items() if k in ("title", "body", "state")})
            pull["edits"] = pull.get("edits", 0) + 1
        return JSONResponse(self.follow_head(repo, pull))

    async def _graphql(self, request: Request) -> Response:
        failed = await self._record(request)
        if failed is not None:
            return failed
        if not self._authorized(request):
            return JSONResponse({"message": "Bad credentials"}, status_code=401)
        data = json.loads(await request.body())
        node = str((data.get("variables") or {}).get("id", ""))
        pulls = [p for repo in self.repos.values() for p in repo.pulls if p.get("node_id") == node]
        if not _READY.search(str(data.get("query", ""))) or not pulls:
            return JSONResponse({"data": None, "errors": [{"message": f"Could not resolve to a node with id {node}"}]})
        pulls[0]["draft"] = False
        return JSONResponse({"data": {"markPullRequestReadyForReview": {"pullRequest": {"isDraft": False}}}})

    def _checks_refused(self, request: Request) -> Response | None:
        token = request.headers.get("authorization", "").split(" ", 1)[-1]
        if token in self.no_checks:
            return JSONResponse({"message": "Resource not accessible by personal access token"}, status_code=403)
        return None

    async def _new_check(self, request: Request) -> Response:
        failed, repo = await self._guard(request)
        if failed or repo is None:
            return failed or Response(status_code=500)
        refused = self._checks_refused(request)
        if refused is not None:
            return refused
        data = json.loads(await request.body())
        if len((data.get("output") or {}).get("annotations") or []) > 50:
            return JSONResponse({"message": "Only 50 annotations are allowed per request"}, status_code=422)
        with self._lock:
            check = {"id": 5000 + len(self.check_runs), "repo": repo.slug, "name": data["name"],
                     "head_sha": data["head_sha"], "status": data.get("status", "queued"), "conclusion": None,
                     "external_id": data.get("external_id", ""), "output": data.get("output") or {},
                     "annotations": list((data.get("output") or {}).get("annotations") or []), "updates": []}
            self.check_runs.append(check)
        return JSONResponse(check, status_code=201)

    async def _edit_check(self, request: Request) -> Response:
        failed, repo = await self._guard(request)
        if failed or repo is None:
            return failed or Response(status_code=500)
        refused = self._checks_refused(request)
        if refused is not None:
            return refused
        data = json.loads(await request.body())
        output = data.get("output") or {}
        if len(output.get("annotations") or []) > 50:
            return JSONResponse({"message": "Only 50 annotations are allowed per request"}, status_code=422)
        for check in self.check_runs:
            if check["id"] == request.path_params["cid"] and check["repo"] == repo.slug:
                check["updates"].append(data)
                check.update({k: data[k] for k in ("status", "conclusion") if k in data})
                check["annotations"] += output.get("annotations") or []
                check["output"] = {**check["output"], **{k: v for k, v in output.items() if k != "annotations"}}
                return JSONResponse(check)
        return JSONResponse({"message": "Not Found"}, status_code=404)

    async def _list_checks(self, request: Request) -> Response:
        failed, repo = await self._guard(request)
        if failed or repo is None:
            return failed or Response(status_code=500)
        refused = self._checks_refused(request)
        if refused is not None:
            return refused
        name = request.query_params.get("check_name")
        found = [c for c in self.check_runs if c["repo"] == repo.slug and c["head_sha"] == request.path_params["sha"]
                 and (name is None or c["name"] == name)]
        return JSONResponse({"total_count": len(found), "check_runs": found})
