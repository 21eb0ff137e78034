"""The words of one simple command, and what checking a command line finds: a `Run` or an `Unknown`.

`Context` carries a command's place in the line while command_wrappers.py takes its wrappers off and
command_git.py reads git's rules; shell code inside a word goes back to the parser through `Nested`, and
the words of a command met on the way (an alias's expansion, `git bisect run cmd`) back to the resolver
through `Context.resolve`, so that neither rule module imports the other. Used by command_policy.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Protocol

# Variables whose values bash or git run, or expand with command substitution (PS4 under `set -x`).
COMMAND_VARIABLES = frozenset({
    "GIT_SSH_COMMAND", "GIT_SSH", "GIT_PAGER", "PAGER", "GIT_EDITOR", "EDITOR", "VISUAL",
    "GIT_SEQUENCE_EDITOR", "GIT_EXTERNAL_DIFF", "GIT_ASKPASS", "SSH_ASKPASS", "GIT_PROXY_COMMAND",
    "PROMPT_COMMAND", "MANPAGER", "PS0", "PS1", "PS2", "PS4",
})
# An array subscript holding code: bash runs it wherever it evaluates the subscript (`let "a[\$(cmd)]=1"`).
SUBSCRIPT_CODE = re.compile(r"\[[^\]]*(\$\(|`)")


@dataclass(frozen=True)
class Word:
    """One shell word: its value after quote removal when `static`, else its source text.
    `splits` when an unquoted expansion or glob may turn it into several words (or none)."""

    text: str
    static: bool = True
    splits: bool = False


@dataclass(frozen=True)
class Run:
    """A command the line runs, as `prog args…` with `prog` the basename. `final` is False for a wrapper's own
    layer (`timeout 5 curl x`), which is checked against the deny list only."""

    words: tuple[str, ...]
    final: bool
    source: str

    @property
    def text(self) -> str:
        return " ".join(self.words)


@dataclass(frozen=True)
class Unknown:
    """A part whose program cannot be known before the line runs."""

    source: str
    why: str
    hint: str = "name the program literally"


Finding = Run | Unknown


class Nested(Protocol):
    def line(self, text: str, source: str, depth: int) -> list[Finding]:
        """The findings of `text` run as shell code."""

    def words(self, text: str) -> list[Word] | None:
        """`text` split into words as the shell would, or None when it is not one simple command."""


@dataclass(frozen=True)
class Context:
    """Where a command came from (`source`, the part of the line the model wrote), how deeply it is nested,
    the assignments the line makes (None where computed), and what was found before it. `resolver` finds
    what a simple command runs (command_wrappers.resolve_in)."""

    source: str
    depth: int
    env: Mapping[str, Word | None]
    nested: Nested
    resolver: Callable[[list[Word], Context], list[Finding]]
    findings: list[Finding] = field(default_factory=list)

    def unknown(self, why: str, hint: str = "name the program literally") -> list[Finding]:
        return [*self.findings, Unknown(self.source, why, hint)]

    def ran(self, texts: tuple[str, ...]) -> list[Finding]:
        """The findings so far, then the program `texts` itself."""
        return [*self.findings, Run(texts, True, self.source)]

    def having(self, findings: list[Finding]) -> Context:
        return replace(self, findings=findings)

    def deeper(self, layer: tuple[str, ...] | None = None) -> Context:
        """One level down, after the wrapper `layer` (checked against the deny list)."""
        extra = [Run(layer, False, self.source)] if layer else []
        return replace(self, depth=self.depth + 1, findings=[*self.findings, *extra])

    def resolve(self, words: list[Word]) -> list[Finding]:
        """The findings so far, then every command that the simple command `words` runs."""
        return self.resolver(words, self)


def code(text: Word, ctx: Context) -> list[Finding]:
    """Findings of a word that the command runs as shell code."""
    if not text.static:
        return ctx.unknown(f"it runs shell code `{text.text}` that is computed only when the line runs")
    return [*ctx.findings, *ctx.nested.line(text.text, ctx.source, ctx.depth + 1)]


def joined(words: list[Word], ctx: Context) -> list[Finding]:
    """Findings of words that the command joins with spaces and runs as shell code (eval, watch)."""
    if any(not w.static for w in words):
        return ctx.unknown("it runs shell code that is computed only when the line runs")
    return code(Word(" ".join(w.text for w in words)), ctx)
