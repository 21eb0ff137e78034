"""The local forge: issues are `.loop/issues/<n>.md` in the repository; a pull request is the run's
branch in the repository plus a record (`<state>/pulls/<n>.json` and its body) on disk; comments are
appended to `<state>/comments/<n>.md`, each ending with its step's marker, so a resumed run that finds
the marker there does not post that comment again. The pull request's draft flag is in its record;
a check run is `<state>/checks/<run>-<node>-<iteration>.json`, named by its step so a resumed run finds it."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from pathlib import Path

from agentloop.errors import IssueNotFound
from agentloop.forge.base import CHECK_NAME, CheckReport, Step, after_side_effect
from agentloop.git import Worktree, head
from agentloop.inputs import read_text
from agentloop.paths import state_dir
from agentloop.results import Issue, PullRequest

log = logging.getLogger(__name__)

ISSUES_DIR = Path(".loop") / "issues"


class LocalForge:
    kind = "local"

    def __init__(self, repo: Path):
        self.repo = repo
        self._pulls = state_dir(repo) / "pulls"
        self._comments = state_dir(repo) / "comments"
        self._checks = state_dir(repo) / "checks"

    def get_issue(self, number: int) -> Issue:
        path = self.repo / ISSUES_DIR / f"{number}.md"
        if not path.is_file():
            raise IssueNotFound(
                f"issue {number}: {path} not found; write the issue there (first line `# title`) "
                "or pass --issue-file FILE"
            )
        return parse_issue_file(path, number)

    def list_issues(self, label: str | None = None) -> list[Issue]:
        """Open issues (every `.loop/issues/<n>.md`), optionally only those with `label`."""
        folder = self.repo / ISSUES_DIR
        numbers = sorted(int(p.stem) for p in folder.glob("*.md") if p.stem.isdigit()) if folder.exists() else []
        issues = [self.get_issue(n) for n in numbers]
        return [i for i in issues if label is None or label in i.labels]

    def find_pull_request(self, branch: str) -> PullRequest | None:
        for path in sorted(self._pulls.glob("*.json")) if self._pulls.exists() else []:
            try:
                pull = PullRequest.model_validate_json(path.read_text(encoding="utf-8"))
            except ValueError:  # a number just claimed by another run, not written yet
                continue
            if pull.branch == branch:
                return pull
        return None

    def publish(
        self, *, worktree: Worktree, branch: str, title: str, body: str, draft: bool, issue: Issue,
        step: Step | None = None,
    ) -> PullRequest:
        if step is not None:
            body = f"{step.marker}\n{body}"
        existing = self.find_pull_request(branch)
        pull = PullRequest(number=existing.number if existing else None, url="", branch=branch,
                           head_commit=head(worktree), draft=draft, title=title)
        if existing is not None and existing.number:
            pull = self._write(existing.number, pull, body)
        else:
            pull = self._claim(pull, body)
        after_side_effect(f"pull:{step.node}" if step else "pull")
        return pull

    def update_pull_request(self, pull: PullRequest, *, body: str, ready: bool, step: Step | None = None
                            ) -> PullRequest:
        current = self.find_pull_request(pull.branch) or pull
        if current.number is None:
            raise ValueError(f"{pull.branch}: no pull request to update")
        updated = current.model_copy(update={"draft": current.draft and not ready})
        updated = self._write(current.number, updated, f"{step.marker}\n{body}" if step else body)
        after_side_effect(f"pull:{step.node}" if step else "pull")
        return updated

    def start_check(self, head_sha: str, *, step: Step) -> str:
        check_id = f"{step.run}-{step.node}-{step.iteration}"
        path = self._checks / f"{check_id}.json"
        if not path.exists():
            self._checks.mkdir(parents=True, exist_ok=True)
            _write_atomically(path, json.dumps({"id": check_id, "name": CHECK_NAME, "head_sha": head_sha,
                                                "status": "in_progress", "conclusion": None,
                                                "external_id": step.marker}, indent=2))
            after_side_effect(f"check:{step.node}")
        return check_id

    def finish_check(self, check_id: str, report: CheckReport) -> None:
        path = self._checks / f"{check_id}.json"
        check = json.loads(path.read_text(encoding="utf-8"))
        check.update(status="completed", conclusion=report.conclusion, output={
            "title": report.title, "summary": report.summary,
            "annotations": [dataclasses.asdict(a) for a in report.annotations]})
        _write_atomically(path, json.dumps(check, indent=2))

    def _write(self, number: int, pull: PullRequest, body: str) -> PullRequest:
        body_path = self._pulls / f"{number}.md"
        _write_atomically(body_path, body)
        pull = pull.model_copy(update={"number": number, "url": body_path.as_uri()})
        _write_atomically(self._pulls / f"{number}.json", pull.model_dump_json(indent=2))
        return pull

    def _claim(self, pull: PullRequest, body: str) -> PullRequest:
        """The next pull request number, claimed and written in one step (a hard link of the finished
        record): parallel runs never share a number, and a kill leaves no empty record behind."""
        self._pulls.mkdir(parents=True, exist_ok=True)
        taken = [int(p.stem) for p in self._pulls.glob("*.json") if p.stem.isdigit()]
        number = max(taken, default=0) + 1
        record, text = self._pulls / f".claim.{os.getpid()}.json.tmp", self._pulls / f".claim.{os.getpid()}.md.tmp"
        text.write_text(body, encoding="utf-8")
        try:
            while True:
                body_path = self._pulls / f"{number}.md"
                claimed = pull.model_copy(update={"number": number, "url": body_path.as_uri()})
                record.write_text(claimed.model_dump_json(indent=2), encoding="utf-8")
                try:
                    os.link(record, self._pulls / f"{number}.json")
                except FileExistsError:
                    number += 1
                    continue
                os.replace(text, body_path)
                return claimed
        finally:
            record.unlink(missing_ok=True)
            text.unlink(missing_ok=True)

    def comment(self, issue: Issue, body: str, *, step: Step | None = None) -> None:
        self._comments.mkdir(parents=True, exist_ok=True)
        path = self._comments / f"{issue.number}.md"
        if step is not None and path.exists() and step.marker in path.read_text(encoding="utf-8"):
            log.info("issue %s: the comment of %s is already there; not posted again", issue.number, step.marker)
            return
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        # the marker comes last: written in one append, its presence means the whole comment is there
        entry = f"--- {stamp}\n{body}\n" + (f"{step.marker}\n" if step else "")
        with path.open("a", encoding="utf-8") as handle:
            handle.write(entry)
        after_side_effect(f"comment:{step.node}" if step else "comment")


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def parse_issue_file(path: Path, number: int) -> Issue:
    """`# Title` on the first line, an optional `labels: a, b` line, then the body."""
    text = read_text(path, what="issue file", error=IssueNotFound).strip()
    if not text:
        raise IssueNotFound(f"{path}: the issue file is empty; write a `# title` line and a description")
    first, _, rest = text.partition("\n")
    title = first.lstrip("#").strip()
    if not title:
        raise IssueNotFound(f"{path}: the issue has no title; write it on the first line, after the `#`")
    labels: list[str] = []
    second, _, after = rest.strip().partition("\n")
    if second.lower().startswith("labels:"):
        labels = [label.strip() for label in second.split(":", 1)[1].split(",") if label.strip()]
        rest = after
    return Issue(number=number, title=title, body=rest.strip(), url=path.resolve().as_uri(), labels=labels)

