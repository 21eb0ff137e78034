"""What `loop init` has found so far: a loop.yaml in the making, each value with the reason it was guessed.

Nothing here is trusted: names, commands and values all come from files of the repository. The writer
quotes every value and keeps every note to one line, so nothing read can shape the YAML it writes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

# Kubernetes object names are built from service names: the strictest place a loop name ends up.
_LOOP_NAME = re.compile(r"[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?")
# What config_rules reads as a placeholder; a repository value with such braces would not load.
PLACEHOLDER = re.compile(r"(?<!\$)\{([A-Za-z_][\w.-]*)\}")
_NOTE_CHARS = 160


def one_line(text: str, limit: int = _NOTE_CHARS) -> str:
    """`text` without control characters and cut to `limit`: safe inside a `#` comment or a terminal line."""
    flat = "".join(c if c.isprintable() else " " for c in text)
    flat = " ".join(flat.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


@dataclass
class Noted:
    """A value and why init wrote it; `note` is None for a value that is not a guess."""

    value: object
    note: str | None = None
    idle: bool = False  # it names something loop does not run: worth saying outside the file too


@dataclass
class SetupDraft:
    run: Noted
    inputs: list[str] = field(default_factory=list)
    creates: list[str] = field(default_factory=list)


@dataclass
class ServiceDraft:
    name: str
    note: str
    path: Noted = field(default_factory=lambda: Noted("."))
    run: Noted | None = None
    health: Noted | None = None
    env: dict[str, Noted] = field(default_factory=dict)
    depends_on: Noted | None = None
    setup: list[SetupDraft] = field(default_factory=list)
    # Set when the service cannot be a loop service as it is: written as comments saying why.
    disabled: str | None = None
    comments: list[str] = field(default_factory=list)


@dataclass
class SuiteDraft:
    suite: str
    run: Noted
    sandbox: Noted | None = None


@dataclass
class Draft:
    base_branch: Noted = field(default_factory=lambda: Noted("main", "no branch found; the usual default"))
    setup: list[SetupDraft] = field(default_factory=list)
    path: Noted | None = None
    services: list[ServiceDraft] = field(default_factory=list)
    suites: list[SuiteDraft] = field(default_factory=list)
    forge_kind: str = "local"
    forge_repo: Noted | None = None
    forge_note: str = "no GitHub origin remote; pull requests are written under .loop/"
    # Files init looked at but did not use, and why (a symlink out of the repository, too large ...).
    skipped: list[str] = field(default_factory=list)
    # Things a user must do by hand: printed and written at the top of the file.
    todo: list[str] = field(default_factory=list)

    def active_services(self) -> list[ServiceDraft]:
        return [service for service in self.services if service.disabled is None]


def loop_name(raw: str, taken: set[str]) -> str:
    """A name loop accepts (lowercase letters, digits, inner dashes; at most 40), unique among `taken`."""
    name = re.sub(r"[^a-z0-9-]+", "-", raw.lower())
    name = re.sub(r"-{2,}", "-", name).strip("-")[:40].strip("-") or "service"
    base, number = name, 2
    while name in taken:
        suffix = f"-{number}"
        name = base[: 40 - len(suffix)].strip("-") + suffix
        number += 1
    taken.add(name)
    return name


def is_loop_name(name: str) -> bool:
    return bool(_LOOP_NAME.fullmatch(name))


def stray_placeholder(text: str, allowed: set[str]) -> str | None:
    """The first `{word}` in `text` that loop would try to fill but is not in `allowed`, else None."""
    for match in PLACEHOLDER.finditer(text):
        if match.group(1) not in allowed:
            return match.group(0)
    return None
