"""The loopback GitHub's pull request reviews (issue 16): review comments and reviews a test adds, read with
`GET /repos/O/R/pulls/N/comments` and `GET /repos/O/R/pulls/N/reviews`, and members' comments on a pull
request (`add_pull_comment`, read with `GET /issues/N/comments` like any issue comment).

A mixin of `FakeGitHub` beside `FakeChecks` (which serves `GET/PATCH /pulls/N`)."""

from __future__ import annotations

import itertools
import threading
import time
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

if TYPE_CHECKING:
    from .fake_github import FakeRepo

_IDS = itertools.count(500_000)


def _stamp(at: float | None) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() if at is None else at))


class FakeReviews:
    if TYPE_CHECKING:
        _lock: threading.Lock
        repos: dict[str, FakeRepo]

        async def _guard(self, request: Request) -> tuple[Response | None, FakeRepo | None]: ...

    @property
    def review_comments(self) -> list[dict[str, Any]]:
        """Inline review comments, each with `repo` and `pull` (its number)."""
        return self.__dict__.setdefault("_review_comments", [])

    @property
    def reviews(self) -> list[dict[str, Any]]:
        return self.__dict__.setdefault("_reviews", [])

    def add_review_comment(self, slug: str, pull: int, body: str, *, path: str, line: int, login: str = "alice",
                           association: str = "MEMBER", at: float | None = None) -> dict[str, Any]:
        comment = {"id": next(_IDS), "repo": slug, "pull": pull, "body": body, "path": path, "line": line,
                   "original_line": line, "user": {"login": login, "type": "User"},
                   "author_association": association, "created_at": _stamp(at)}
        self.review_comments.append(comment)
        return comment

    def add_review(self, slug: str, pull: int, body: str, *, state: str = "CHANGES_REQUESTED", login: str = "alice",
                   association: str = "MEMBER", at: float | None = None) -> dict[str, Any]:
        review = {"id": next(_IDS), "repo": slug, "pull": pull, "body": body, "state": state,
                  "user": {"login": login, "type": "User"}, "author_association": association,
                  "submitted_at": _stamp(at)}
        self.reviews.append(review)
        return review

    def add_pull_comment(self, slug: str, pull: int, body: str, *, login: str = "alice",
                         association: str = "MEMBER", at: float | None = None) -> dict[str, Any]:
        """A person's comment on the pull request's conversation (an issue comment, as on GitHub)."""
        comment = {"id": next(_IDS), "issue": pull, "body": body, "edits": 0, "author_association": association,
                   "user": {"login": login, "type": "User"}, "created_at": _stamp(at)}
        self.repos[slug].comments.append(comment)
        return comment

    def reviews_routes(self, api: str) -> list[Route]:
        return [
            Route(api + "/pulls/{number:int}/comments", self._review_list, methods=["GET"]),
            Route(api + "/pulls/{number:int}/reviews", self._review_list, methods=["GET"]),
        ]

    async def _review_list(self, request: Request) -> Response:
        failed, repo = await self._guard(request)
        if failed or repo is None:
            return failed or Response(status_code=500)
        items = self.review_comments if request.url.path.endswith("/comments") else self.reviews
        number = request.path_params["number"]
        return JSONResponse([i for i in items if i["repo"] == repo.slug and i["pull"] == number])
