"""Anthropic's text editor client tool (`str_replace_based_edit_tool`: view, create, str_replace, insert),
confined to the worktree.

Paths are relative to the repository root or absolute under the virtual root `/repo`; anything that
resolves outside the worktree (`..`, absolute paths elsewhere, symlinks pointing out) or into `.git`
is refused.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Literal, TypeVar

from pydantic import BaseModel, ConfigDict

VIRTUAL_ROOT = PurePosixPath("/repo")
_MAX_LISTING = 400
_T = TypeVar("_T")


class EditorError(Exception):
    """A refused or failed editor call; its message goes back to the model as an error tool_result."""


class EditorInput(BaseModel):
    model_config = ConfigDict(extra="ignore")

    command: Literal["view", "create", "str_replace", "insert"]
    path: str
    file_text: str | None = None
    old_str: str | None = None
    new_str: str | None = None
    insert_line: int | None = None
    insert_text: str | None = None
    view_range: list[int] | None = None


class Editor:
    def __init__(self, worktree: Path, output_limit: int) -> None:
        self.worktree = worktree.resolve()
        self._limit = output_limit

    def resolve(self, raw: str) -> Path:
        """The real path in the worktree for a tool path, or EditorError when it leaves the worktree."""
        pure = PurePosixPath(raw.strip())
        if pure.is_absolute():
            if pure == VIRTUAL_ROOT or VIRTUAL_ROOT in pure.parents:
                pure = pure.relative_to(VIRTUAL_ROOT)
            else:
                raise EditorError(f"{raw}: outside the repository; use a path under /repo or relative to it")
        candidate = (self.worktree / pure).resolve()
        if candidate != self.worktree and self.worktree not in candidate.parents:
            raise EditorError(f"{raw}: resolves outside the repository (.. or a symlink); refused")
        relative = candidate.relative_to(self.worktree)
        if relative.parts and relative.parts[0] == ".git":
            raise EditorError(f"{raw}: the .git directory is not editable")
        return candidate

    def shown(self, path: Path) -> str:
        return str(VIRTUAL_ROOT / path.relative_to(self.worktree))

    def run(self, call: EditorInput) -> str:
        path = self.resolve(call.path)
        if call.command == "view":
            return self._view(path, call.view_range)
        if call.command == "create":
            return self._create(path, _required(call.file_text, "file_text", "create"))
        if call.command == "str_replace":
            return self._replace(path, _required(call.old_str, "old_str", "str_replace"), call.new_str or "")
        text = call.insert_text if call.insert_text is not None else call.new_str
        return self._insert(path, _required(call.insert_line, "insert_line", "insert"),
                            _required(text, "insert_text", "insert"))

    def _read(self, path: Path) -> str:
        if not path.is_file():
            raise EditorError(f"{self.shown(path)}: no such file")
        try:
            return path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise EditorError(f"{self.shown(path)}: not a UTF-8 text file") from None

    def _view(self, path: Path, view_range: list[int] | None) -> str:
        if path.is_dir():
            entries = sorted(
                str(VIRTUAL_ROOT / p.relative_to(self.worktree)) + ("/" if p.is_dir() else "")
                for p in _walk(path, depth=2)
            )
            more = f"\n[... {len(entries) - _MAX_LISTING} more]" if len(entries) > _MAX_LISTING else ""
            return "\n".join(entries[:_MAX_LISTING]) + more
        lines = self._read(path).splitlines()
        start, end = 1, len(lines)
        if view_range is not None:
            if len(view_range) != 2 or view_range[0] < 1 or (view_range[1] != -1 and view_range[1] < view_range[0]):
                raise EditorError(f"view_range {view_range}: expected [start, end] with 1 <= start <= end, or end -1")
            start, end = view_range[0], len(lines) if view_range[1] == -1 else min(view_range[1], len(lines))
        numbered = "\n".join(f"{n:6}\t{lines[n - 1]}" for n in range(start, end + 1))
        if len(numbered) > self._limit:
            numbered = numbered[: self._limit] + "\n[... cut; view a smaller view_range]"
        return numbered

    def _create(self, path: Path, text: str) -> str:
        if path.is_dir():
            raise EditorError(f"{self.shown(path)}: is a directory")
        path.parent.mkdir(parents=True, exist_ok=True)
        existed = path.exists()
        path.write_text(text, encoding="utf-8")
        return f"{'overwrote' if existed else 'created'} {self.shown(path)}"

    def _replace(self, path: Path, old: str, new: str) -> str:
        text = self._read(path)
        count = text.count(old)
        if count == 0:
            raise EditorError(f"{self.shown(path)}: old_str not found; view the file and copy the text exactly")
        if count > 1:
            raise EditorError(f"{self.shown(path)}: old_str occurs {count} times; include more context to make it unique")
        path.write_text(text.replace(old, new, 1), encoding="utf-8")
        return f"edited {self.shown(path)}"

    def _insert(self, path: Path, line: int, text: str) -> str:
        lines = self._read(path).splitlines(keepends=True)
        if not 0 <= line <= len(lines):
            raise EditorError(f"insert_line {line}: must be between 0 and {len(lines)} for {self.shown(path)}")
        if lines and not lines[-1].endswith("\n") and line == len(lines):
            lines[-1] += "\n"
        lines.insert(line, text if text.endswith("\n") else text + "\n")
        path.write_text("".join(lines), encoding="utf-8")
        return f"inserted {len(text.splitlines())} line(s) after line {line} of {self.shown(path)}"


def _required(value: _T | None, name: str, command: str) -> _T:
    if value is None:
        raise EditorError(f"`{name}` is required for the {command} command")
    return value


def _walk(root: Path, depth: int) -> list[Path]:
    found: list[Path] = []
    for child in root.iterdir():
        if child.name.startswith("."):
            continue
        found.append(child)
        if child.is_dir() and not child.is_symlink() and depth > 1:
            found.extend(_walk(child, depth - 1))
    return found
