"""The GitHub forge's pull request as the run's home (`DraftsPullRequests`): its body rewritten after each
iteration, and a draft marked ready for review once the run is proven.

GitHub's REST API cannot turn a draft into a ready pull request; its GraphQL API can, with the mutation
`markPullRequestReadyForReview(input: {pullRequestId})` on the pull request's node id. The GraphQL
endpoint is `<api>/graphql` on github.com and `https://HOST/api/graphql` on GitHub Enterprise Server
(whose REST API is `https://HOST/api/v3`).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import httpx

from agentloop.errors import LoopError
from agentloop.forge.base import Step, after_side_effect
from agentloop.results import PullRequest

log = logging.getLogger(__name__)

_READY = """mutation($id: ID!) {
  markPullRequestReadyForReview(input: {pullRequestId: $id}) { pullRequest { isDraft } }
}"""


def graphql_url(api_url: str) -> str:
    """The GraphQL endpoint next to a REST API URL (github.com or GitHub Enterprise Server)."""
    api = api_url.rstrip("/")
    return api[: -len("/v3")] + "/graphql" if api.endswith("/api/v3") else api + "/graphql"


class PullsMixin:
    """`update_pull_request` for `GitHubForge` (which provides the HTTP plumbing declared below)."""

    if TYPE_CHECKING:
        repo_slug: str
        api_url: str

        @property
        def _repo_path(self) -> str: ...

        def _request(self, method: str, path: str, *, ok: tuple[int, ...] = (200, 201),
                     **kwargs: Any) -> httpx.Response: ...

        def _comment_text(self, text: str) -> str: ...

    def update_pull_request(self, pull: PullRequest, *, body: str, ready: bool, step: Step | None = None
                            ) -> PullRequest:
        from agentloop.forge.github import fit_body  # github.py imports this module

        path = f"{self._repo_path}/pulls/{pull.number}"
        text = fit_body(f"{step.marker}\n{body}" if step else body, None)
        data: dict[str, Any] = self._request("PATCH", path, json={"body": self._redacted(text)}).json()
        if ready and data.get("draft"):
            self._mark_ready(str(data.get("node_id") or ""), pull)
            data = self._request("GET", path).json()
        after_side_effect(f"pull:{step.node}" if step else "pull")
        return pull.model_copy(update={"draft": bool(data.get("draft", pull.draft)),
                                       "head_commit": str((data.get("head") or {}).get("sha") or pull.head_commit)})

    def _redacted(self, text: str) -> str:
        # the token never reaches a body; the run's own redactor has masked the rest already
        return self._comment_text(text)

    def _mark_ready(self, node_id: str, pull: PullRequest) -> None:
        if not node_id:
            raise LoopError(f"{self.repo_slug}#{pull.number}: GitHub gave no node id; cannot mark it ready")
        response = self._request("POST", graphql_url(self.api_url), json={"query": _READY, "variables": {"id": node_id}},
                                 ok=(200, 401, 403))
        errors = response.json().get("errors") if response.status_code == 200 else None
        if response.status_code != 200 or errors:
            # the run is proven all the same: the pull request stays a draft and a person can mark it ready
            detail = errors[0].get("message") if errors else f"HTTP {response.status_code}"
            log.warning("%s#%s: cannot mark the pull request ready for review (%s); it stays a draft",
                        self.repo_slug, pull.number, str(detail)[:300])
            return
        log.info("%s#%s: marked ready for review", self.repo_slug, pull.number)
