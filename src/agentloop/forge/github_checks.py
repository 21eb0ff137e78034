"""The GitHub forge's check run `loop / validation` (`RunsChecks`) over the Checks API.

Only a GitHub App's installation token may write checks; a personal token gets 403 (and a GitHub without
the API 404). Then the forge says so once and the run goes on without a check: a check is a view of the
verdict, never a reason to fail a run. GitHub takes at most 50 annotations per request, so a finished
check sends them in batches, the first with the conclusion and the rest as further updates.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import httpx

from agentloop.forge.base import CHECK_NAME, Annotation, CheckReport, Step, after_side_effect

log = logging.getLogger(__name__)

ANNOTATIONS_PER_REQUEST = 50
_SUMMARY_LIMIT = 65_535
_REFUSED = (401, 403, 404, 422)


class ChecksMixin:
    """`start_check` / `finish_check` for `GitHubForge` (which provides the HTTP plumbing declared below)."""

    if TYPE_CHECKING:
        repo_slug: str

        @property
        def _repo_path(self) -> str: ...

        def _request(self, method: str, path: str, *, ok: tuple[int, ...] = (200, 201),
                     **kwargs: Any) -> httpx.Response: ...

        def _comment_text(self, text: str) -> str: ...

    _checks_refused: bool = False

    def start_check(self, head_sha: str, *, step: Step) -> str | None:
        if self._checks_refused:
            return None
        found = self._request("GET", f"{self._repo_path}/commits/{head_sha}/check-runs",
                              params={"check_name": CHECK_NAME, "per_page": "100"}, ok=(200, *_REFUSED))
        if found.status_code != 200:
            self._refused(found)
            return None
        for check in found.json().get("check_runs", []):
            if check.get("external_id") == step.marker:  # what a killed attempt of this step already made
                return str(check["id"])
        made = self._request("POST", f"{self._repo_path}/check-runs", ok=(201, *_REFUSED), json={
            "name": CHECK_NAME, "head_sha": head_sha, "status": "in_progress", "external_id": step.marker,
            "output": {"title": "Validating", "summary": f"loop run `{step.run}` is validating iteration "
                                                        f"{step.iteration} against its sandbox."}})
        if made.status_code != 201:
            self._refused(made)
            return None
        after_side_effect(f"check:{step.node}")
        return str(made.json()["id"])

    def finish_check(self, check_id: str, report: CheckReport) -> None:
        batches = [report.annotations[i:i + ANNOTATIONS_PER_REQUEST]
                   for i in range(0, len(report.annotations), ANNOTATIONS_PER_REQUEST)] or [[]]
        for number, batch in enumerate(batches):
            output = {"title": self._comment_text(report.title)[:1000],
                      "summary": self._comment_text(report.summary)[:_SUMMARY_LIMIT],
                      "annotations": [self._annotation(a) for a in batch]}
            payload: dict[str, Any] = {"output": output}
            if number == 0:
                payload.update(status="completed", conclusion=report.conclusion)
            response = self._request("PATCH", f"{self._repo_path}/check-runs/{check_id}", json=payload,
                                     ok=(200, *_REFUSED))
            if response.status_code != 200:
                self._refused(response)
                return

    def _annotation(self, annotation: Annotation) -> dict[str, Any]:
        return {"path": annotation.path, "start_line": annotation.line, "end_line": annotation.line,
                "annotation_level": "failure", "title": self._comment_text(annotation.title)[:255],
                "message": self._comment_text(annotation.message)[:64_000]}

    def _refused(self, response: httpx.Response) -> None:
        if not self._checks_refused:
            self._checks_refused = True  # said once per forge; the run goes on without a check
            log.warning("%s: cannot write the check run %r (HTTP %s): checks need a GitHub App installation "
                        "token with `checks: write`; going on without it", self.repo_slug, CHECK_NAME,
                        response.status_code)
