"""The parts of GitHub's `issues` and `issue_comment` webhook payloads that the App reads, as strict models.

Only the fields loop uses are modelled (everything else is ignored), but those are checked for type
and range: an issue number is a positive integer that fits the queue, a repository name follows
GitHub's rules (it becomes a directory), and `labels: null` or a string number is a 422, not a crash.
"""

from __future__ import annotations

from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from agentloop.forge.names import BadRepositoryName, split_slug

MAX_DEPTH = 32  # GitHub's payloads nest about six levels; anything far deeper is not from GitHub
IssueNumber = Annotated[int, Field(strict=True, ge=1, le=2**31 - 1)]
InstallationId = Annotated[int, Field(strict=True, ge=1, le=2**63 - 1)]
Short = Annotated[str, Field(max_length=200)]


class PayloadError(ValueError):
    """The payload is valid JSON but not an event loop can read; the message names the field."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class Label(_Model):
    name: Short


class User(_Model):
    login: Short = ""
    type: Short = ""


class Repository(_Model):
    full_name: Short

    @field_validator("full_name")
    @classmethod
    def _github_name(cls, value: str) -> str:
        try:
            split_slug(value)
        except BadRepositoryName as exc:
            raise ValueError(str(exc)) from None
        return value


class Installation(_Model):
    id: InstallationId


class IssueRef(_Model):
    number: IssueNumber


class LabeledIssue(IssueRef):
    labels: list[Label] = Field(default_factory=list)


class Comment(_Model):
    body: str | None = None
    user: User | None = None
    author_association: Short = ""


class _Event(_Model):
    action: Short
    repository: Repository
    installation: Installation | None = None


class IssuesEvent(_Event):
    issue: LabeledIssue
    label: Label | None = None


class IssueCommentEvent(_Event):
    issue: IssueRef
    comment: Comment


def depth(value: Any) -> int:
    """How deeply `value` nests (a scalar is 0), walked without recursion."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            item = list(item.values())
        if isinstance(item, list):
            deepest = max(deepest, level + 1)
            stack.extend((child, level + 1) for child in item if isinstance(child, dict | list))
    return deepest


EventT = TypeVar("EventT", bound=_Event)


def parse_event(kind: type[EventT], payload: dict[str, Any]) -> EventT:
    """Validate `payload` as `kind`; PayloadError names the first bad field and what was wrong."""
    try:
        return kind.model_validate(payload)
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_input=False)[0]
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in first["loc"]).lstrip(".")
        raise PayloadError(f"payload field `{where or '(top level)'}`: {first['msg']}") from None
