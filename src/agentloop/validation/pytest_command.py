"""Is a suite's shell command a pytest run that loop may add `--junitxml` to, and from which directory?

Recognised: a command whose last simple command is pytest (`pytest`, `py.test`, `path/to/pytest`,
`python[3[.11]] -m pytest`), optionally after variable assignments (`VAR=1 OTHER=2 pytest`) and/or `env`
with assignments (`env X=1 pytest`), and after any commands joined by `&&` or `;` (`cd sub && pytest`,
`cd sub; . .venv/bin/activate && pytest -q`). Options are appended at the very end of such a command,
which is the pytest run's own argument list. Anything else (a pipe, `||`, a background `&`, a
subshell, a redirection, pytest not last) is left alone: appending there could change what it does.

pytest names tests relative to its rootdir, which after a `cd` is not the repository's top; `repo_relative`
turns those names back into paths of the repository, which is what a change's files are compared with.
"""

from __future__ import annotations

import posixpath
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

_SEPARATORS = frozenset({"&&", ";"})
_ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=")
_PYTEST = re.compile(r"(?:pytest|py\.test)")
_PYTHON = re.compile(r"python[\d.]*")
_PUNCTUATION = frozenset("();<>|&")


@dataclass(frozen=True)
class PytestCommand:
    """A recognised pytest command. `directory` is where its `cd`s leave it, relative to the suite's
    directory ("" for none); None when a `cd` went somewhere loop cannot follow (a variable, `..` out)."""

    directory: str | None


def recognise(command: str) -> PytestCommand | None:
    """The command as a pytest run loop can add options to, or None (see the module docstring)."""
    tokens = _tokens(command)
    if not tokens:
        return None
    segments: list[list[str]] = [[]]
    for token in tokens:
        if token in _SEPARATORS:
            segments.append([])
        elif _PUNCTUATION.issuperset(token):
            return None  # |, ||, &, >, <, (, ) ...: appending after them is not appending to pytest
        else:
            segments[-1].append(token)
    if any(not segment for segment in segments) or not _runs_pytest(segments[-1]):
        return None
    directory: str | None = ""
    for segment in segments[:-1]:
        if segment[0] in ("cd", "pushd", "popd"):
            directory = _enter(directory, segment)
    return PytestCommand(directory)


def repo_relative(name: str, directory: str | None, cwd: Path) -> str:
    """A test named by pytest (`tests/test_x.py::test_y`, relative to its rootdir) as a path under `cwd`:
    prefixed with the deepest of `directory` and its parents under which the file exists."""
    if not directory or "::" not in name:
        return name
    file = name.split("::", 1)[0]
    prefix = directory
    while prefix:
        if (cwd / prefix / file).is_file():
            return f"{prefix}/{name}"
        prefix = posixpath.dirname(prefix)
    return name


def _tokens(command: str) -> list[str]:
    lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    lexer.commenters = ""  # a `#` would swallow what is appended after it: such a command is refused below
    try:
        tokens = list(lexer)
    except ValueError:  # unbalanced quotes, a trailing backslash
        return []
    return [] if any(token.startswith("#") for token in tokens) else tokens


def _runs_pytest(segment: list[str]) -> bool:
    index = 0
    if segment[index:index + 1] == ["env"]:
        index += 1
    while index < len(segment) and _ASSIGNMENT.match(segment[index]):
        index += 1
    if segment[index:index + 1] == ["env"]:
        index += 1
        while index < len(segment) and _ASSIGNMENT.match(segment[index]):
            index += 1
    if index >= len(segment):
        return False
    program = posixpath.basename(segment[index])
    if _PYTEST.fullmatch(program):
        return True
    return bool(_PYTHON.fullmatch(program)) and segment[index + 1:index + 3] == ["-m", "pytest"]


def _enter(directory: str | None, segment: list[str]) -> str | None:
    """Where `cd DIR` (relative, literal) leads from `directory`; None when it cannot be followed."""
    if directory is None or segment[0] != "cd" or len(segment) != 2:
        return None
    target = segment[1]
    if not target or target.startswith(("/", "-", "~")) or "$" in target or "`" in target:
        return None
    joined = posixpath.normpath(posixpath.join(directory or ".", target))
    if joined == ".":
        return ""
    return None if joined == ".." or joined.startswith("../") else joined
