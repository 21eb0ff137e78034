"""What a change may not touch and still be proven by loop: the test infrastructure and the tests the
verdict is read from. Each finding names the file (and the test); the verdict carries them as
`needs_review`, and the pull request is a draft that names them at the top.

- Test infrastructure: `conftest.py` anywhere, pytest's configuration (`pytest.ini`, `.pytest.ini`,
  `pytest.toml`, `.pytest.toml`, `tox.ini`, the `[tool:pytest]` section of `setup.cfg`, the `[tool.pytest]`
  table of `pyproject.toml`), what Python runs at start (`sitecustomize.py`, `usercustomize.py`, `*.pth`),
  `loop.yaml`, the plan files and the suites' `junit:` reports.
- pytest plugins: a module that a conftest of the base commit imports or names in `pytest_plugins`, and any
  added line that declares `pytest_plugins`, defines a `pytest_*` hook, reaches the plugin manager or
  imports pytest's internals (`_pytest`).
- Tests that ran in the base run and are gone or skipped in the sandbox's full results.
- Lines changed inside a test function that passed in the base run, or inside a fixture of its file.
"""

from __future__ import annotations

import ast
import configparser
import os
import posixpath
import re
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from agentloop import git
from agentloop.config import LoopConfig
from agentloop.results import SuiteResult
from agentloop.validation.comparison import FLAKY
from agentloop.validation.suites import test_file

_LISTED = 8
_MAX_READ = 1024 * 1024
_MAX_CONFTESTS = 200
_INFRA = {
    "conftest.py": "a pytest conftest (its hooks and fixtures apply to every test below it)",
    "pytest.ini": "pytest's configuration", ".pytest.ini": "pytest's configuration",
    "pytest.toml": "pytest's configuration", ".pytest.toml": "pytest's configuration",
    "tox.ini": "a runner configuration (tox and pytest read it)",
    "sitecustomize.py": "Python runs it at start", "usercustomize.py": "Python runs it at start",
}
_REACHES_PYTEST = re.compile(
    r"^\s*pytest_plugins\s*[:=]|^\s*(?:async\s+)?def\s+pytest_\w+\s*\(|pluginmanager|hookimpl|"
    r"^\s*(?:import|from)\s+_pytest\b"
)
_HUNK = re.compile(r"@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")
_UNPARSEABLE = object()


@dataclass
class FilePatch:
    """One file's part of a unified diff: the base commit's lines it removes or inserts after, and the
    lines it adds (numbered in the new file)."""

    path: str = ""
    removed: list[int] = field(default_factory=list)
    inserted_after: list[int] = field(default_factory=list)
    added: list[tuple[int, str]] = field(default_factory=list)
    deleted: bool = False


def review(
    *, repo: Path, worktree: git.Worktree, base_commit: str, config: LoopConfig, changed: Sequence[str],
    suites: Sequence[tuple[SuiteResult, Mapping[str, str] | None]],
) -> list[str]:
    """Why the change needs a person's review, one line per file or test; empty when nothing does.
    `suites` pairs each suite's sandbox result with its outcomes in the full base run (None when unknown)."""
    if not changed and not suites:
        return []
    patches = parse_patch(git.diff(worktree, base_commit)) if changed else {}
    reasons = _infrastructure(repo, worktree.path, base_commit, config, changed)
    flagged = {name for name in changed if any(f"`{name}`" in reason for reason in reasons)}
    reasons += _reaching_pytest(patches, skip=flagged)
    reasons += _removed_or_skipped(suites)
    reasons += _changed_tests(repo, base_commit, patches, suites)
    return reasons


# -- the unified diff ------------------------------------------------------------------------------------


def parse_patch(text: str) -> dict[str, FilePatch]:
    """`git diff` output by file (the new path; the old one for a deleted file)."""
    patches: dict[str, FilePatch] = {}
    current: FilePatch | None = None
    old_left = new_left = old_no = new_no = 0
    for line in text.split("\n"):
        if old_left > 0 or new_left > 0:
            assert current is not None
            kind = line[:1]
            if kind == "-":
                current.removed.append(old_no)
                old_no, old_left = old_no + 1, old_left - 1
            elif kind == "+":
                current.inserted_after.append(old_no - 1)
                current.added.append((new_no, line[1:]))
                new_no, new_left = new_no + 1, new_left - 1
            elif kind == "\\":
                continue  # "\ No newline at end of file"
            else:
                old_no, new_no, old_left, new_left = old_no + 1, new_no + 1, old_left - 1, new_left - 1
            continue
        if line.startswith("diff --git "):
            current = FilePatch()
        elif current is not None and line.startswith("--- "):
            current.path = _patch_path(line[4:], "a/") or current.path
        elif current is not None and line.startswith("+++ "):
            current.deleted = line[4:].rstrip("\t") == "/dev/null"
            current.path = _patch_path(line[4:], "b/") or current.path
            patches[current.path] = current
        elif current is not None and (match := _HUNK.match(line)):
            old_start, old_count = int(match[1]), int(match[2] if match[2] is not None else 1)
            new_start, new_count = int(match[3]), int(match[4] if match[4] is not None else 1)
            # an empty side names the line before the hunk
            old_no = old_start if old_count else old_start + 1
            new_no = new_start if new_count else new_start + 1
            old_left, new_left = old_count, new_count
            patches.setdefault(current.path, current)
    return patches


def _patch_path(raw: str, prefix: str) -> str:
    raw = raw.rstrip("\t")
    if raw == "/dev/null":
        return ""
    if raw.startswith('"') and raw.endswith('"'):  # git quotes unusual names C-style, bytes as octal
        raw = raw[1:-1].encode("latin-1", "backslashreplace").decode("unicode_escape").encode("latin-1").decode(
            "utf-8", "replace")
    return raw.removeprefix(prefix)


# -- test infrastructure ---------------------------------------------------------------------------------


def _infrastructure(repo: Path, worktree: Path, base: str, config: LoopConfig, changed: Sequence[str]) -> list[str]:
    plans = {_norm(ref.plan) for ref in config.plans}
    reports = {_norm(suite.junit) for suite in config.suites if suite.junit}
    plugins = _plugin_files(repo, base) if changed else {}
    reasons: list[str] = []
    for name in changed:
        leaf = PurePosixPath(name).name
        if leaf in _INFRA:
            reasons.append(f"`{name}` changed: {_INFRA[leaf]}")
        elif leaf.endswith(".pth"):
            reasons.append(f"`{name}` changed: Python runs it at start (a .pth file)")
        elif leaf == "setup.cfg" and _differs(repo, worktree, base, name, _cfg_section):
            reasons.append(f"`{name}` changes its [tool:pytest] section (pytest's configuration)")
        elif leaf == "pyproject.toml" and _differs(repo, worktree, base, name, _toml_section):
            reasons.append(f"`{name}` changes its [tool.pytest] table (pytest's configuration)")
        elif name == "loop.yaml":
            reasons.append("`loop.yaml` changed: validation uses the base commit's")
        elif name in plans:
            reasons.append(f"`{name}` changed: a plan of loop.yaml (validation runs the base commit's)")
        elif name in reports:
            reasons.append(f"`{name}` changed: the JUnit report a suite's results are read from")
        elif name in plugins:
            reasons.append(f"`{name}` changed: a pytest plugin ({plugins[name]})")
    return reasons


def _reaching_pytest(patches: Mapping[str, FilePatch], *, skip: set[str]) -> list[str]:
    reasons = []
    for name, patch in patches.items():
        if name in skip or not name.endswith(".py"):
            continue
        hits = [(number, text.strip()) for number, text in patch.added if _REACHES_PYTEST.search(text)]
        if hits:
            number, text = hits[0]
            more = f" and {len(hits) - 1} more lines" if len(hits) > 1 else ""
            reasons.append(f"`{name}` line {number} reaches into pytest itself (`{text[:80]}`){more}")
    return reasons


def _plugin_files(repo: Path, base: str) -> dict[str, str]:
    """Files of the base commit that its conftests import or name in `pytest_plugins` -> why."""
    listed = git.command(["ls-tree", "-r", "-z", "--name-only", base], cwd=repo).stdout.split("\0")
    files = {name for name in listed if name}
    found: dict[str, str] = {}
    conftests = [name for name in sorted(files) if PurePosixPath(name).name == "conftest.py"][:_MAX_CONFTESTS]
    for conftest in conftests:
        text = _at_base(repo, base, conftest)
        for module, level in _imports(text or ""):
            for candidate in _module_files(module, level, PurePosixPath(conftest).parent):
                if candidate in files:
                    found.setdefault(candidate, f"`{conftest}` imports it")
    return found


def _imports(text: str) -> Iterable[tuple[str, int]]:
    """(module, relative level) of every import and `pytest_plugins` entry of a Python file."""
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError):
        return []
    found: list[tuple[str, int]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, 0) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            found.append((node.module or "", node.level))
            found += [(f"{node.module}.{alias.name}" if node.module else alias.name, node.level) for alias in node.names]
        elif isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "pytest_plugins"
                                                  for t in node.targets):
            values = node.value.elts if isinstance(node.value, ast.List | ast.Tuple) else [node.value]
            found += [(v.value, 0) for v in values if isinstance(v, ast.Constant) and isinstance(v.value, str)]
    return found


def _module_files(module: str, level: int, directory: PurePosixPath) -> list[str]:
    parts = [part for part in module.split(".") if part]
    if not parts:
        return []
    if level:
        root = directory
        for _ in range(level - 1):
            root = root.parent
        roots = [root]
    else:  # pytest puts a conftest's directory (or its package's root) on sys.path; the repository's root too
        roots = [directory, *directory.parents]
    found = []
    for root in roots:
        stem = root.joinpath(*parts)
        found += [_norm(f"{stem}.py"), _norm(str(stem / "__init__.py"))]
    return found


def _differs(repo: Path, worktree: Path, base: str, name: str, section: Any) -> bool:
    before, after = _at_base(repo, base, name), _in_worktree(worktree, name)
    if before is _UNPARSEABLE or after is _UNPARSEABLE:
        return True
    return bool(section(before) != section(after))


def _cfg_section(text: str | None) -> object:
    if text is None:
        return None
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    try:
        parser.read_string(text)
    except configparser.Error:
        return _UNPARSEABLE
    return dict(parser["tool:pytest"]) if parser.has_section("tool:pytest") else None


def _toml_section(text: str | None) -> object:
    if text is None:
        return None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        return _UNPARSEABLE
    tool = data.get("tool")
    return tool.get("pytest") if isinstance(tool, dict) else None


# -- tests that ran in the base run ----------------------------------------------------------------------


def _removed_or_skipped(suites: Sequence[tuple[SuiteResult, Mapping[str, str] | None]]) -> list[str]:
    removed: list[str] = []
    skipped: list[str] = []
    for result, base_outcomes in suites:
        if base_outcomes is None or not result.ran or not result.tests or any(_collection_error(t.message)
                                                                        for t in result.tests):
            continue  # nothing to compare, or an error that already blocks and hides the suite's tests
        now = {t.name: t.outcome for t in result.tests}
        for name, before in base_outcomes.items():
            if before not in ("passed", "failed", "error", FLAKY):
                continue
            after = now.get(name)
            was = {"passed": "passed", FLAKY: "flaky"}.get(before, "failed")
            if after is None:
                removed.append(f"`{name}` ({was} in the base run)")
            elif after == "skipped":
                skipped.append(f"`{name}` ({was} in the base run)")
    reasons = []
    if removed:
        reasons.append(f"removes tests that ran in the base run: {_names(removed)}")
    if skipped:
        reasons.append(f"skips tests that ran in the base run: {_names(skipped)}")
    return reasons


def _collection_error(message: str) -> bool:
    return message.startswith("collection failure")


def _changed_tests(repo: Path, base: str, patches: Mapping[str, FilePatch],
                   suites: Sequence[tuple[SuiteResult, Mapping[str, str] | None]]) -> list[str]:
    present = {t.name for result, _ in suites for t in result.tests}  # a test that is gone is named as removed
    passed: dict[str, list[str]] = {}
    test_files: set[str] = set()
    for _, base_outcomes in suites:
        for name, before in (base_outcomes or {}).items():
            test_files.add(test_file(name))
            if before == "passed" and name in present:
                passed.setdefault(test_file(name), []).append(name)
    reasons = []
    for path, patch in patches.items():
        touching = bool(patch.removed or patch.inserted_after)
        if path not in test_files or not path.endswith(".py") or patch.deleted or not touching:
            continue
        spans = _spans(_at_base(repo, base, path))
        touched = {qual for qual, (start, end, _) in spans.items() if _touches(patch, start, end)}
        # one line per test function, however many cases its parameters make
        quals = dict.fromkeys(_qualname(name) for name in passed.get(path, []))
        reasons += [f"`{path}::{qual.replace('.', '::')}` changed: it passed in the base run, and its lines differ now"
                    for qual in quals if qual in touched]
        reasons += [f"`{path}::{qual}` changed: a fixture of a test file" for qual in sorted(touched) if spans[qual][2]]
    return reasons


def _touches(patch: FilePatch, start: int, end: int) -> bool:
    return any(start <= line <= end for line in patch.removed) or any(
        start <= line < end for line in patch.inserted_after)


def _qualname(test: str) -> str:
    parts = test.split("::")[1:]
    if parts:
        parts[-1] = parts[-1].split("[", 1)[0]
    return ".".join(parts)


def _spans(text: str | None) -> dict[str, tuple[int, int, bool]]:
    """Qualified name -> (first line with decorators, last line, is a fixture) of every function and
    method (classes nest) of a Python file."""
    if not text:
        return {}
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError):
        return {}
    spans: dict[str, tuple[int, int, bool]] = {}

    def visit(body: list[ast.stmt], prefix: str) -> None:
        for node in body:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                start = min([node.lineno, *(d.lineno for d in node.decorator_list)])
                fixture = any("fixture" in ast.unparse(d) for d in node.decorator_list)
                spans[prefix + node.name] = (start, node.end_lineno or node.lineno, fixture)
            elif isinstance(node, ast.ClassDef):
                visit(node.body, f"{prefix}{node.name}.")

    visit(tree.body, "")
    return spans


# -- reading both sides ------------------------------------------------------------------------------------


def _at_base(repo: Path, base: str, name: str) -> str | None:
    """A file of the base commit, read from the user's repository (never the agent's worktree)."""
    shown = git.command(["show", f"{base}:{name}"], cwd=repo, check=False)
    return shown.stdout if shown.returncode == 0 else None


def _in_worktree(worktree: Path, name: str) -> Any:
    """A file of the worktree; a link or an oversized file is not read (it counts as changed)."""
    path = worktree / name
    if path.is_symlink():
        return _UNPARSEABLE
    if not path.is_file():
        return None
    if path.stat().st_size > _MAX_READ:
        return _UNPARSEABLE
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return _UNPARSEABLE


def _norm(path: str) -> str:
    return posixpath.normpath(path.replace(os.sep, "/"))


def _names(names: Sequence[str]) -> str:
    listed = ", ".join(names[:_LISTED])
    return listed + (f" and {len(names) - _LISTED} more" if len(names) > _LISTED else "")
