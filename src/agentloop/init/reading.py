"""Reading a repository `loop init` has never seen, as untrusted input.

Every file is read through `agentloop.inputs` (size limit, UTF-8); a path that leads out of the
repository (a symlink, `..`) or is not a regular file (a FIFO would block the read forever) is refused;
YAML whose aliases would expand past a bound (a "billion laughs" file) or refer to themselves, and
nesting deep enough to exhaust the parser, are refused. A refused file is skipped with a line saying
why, and init goes on with the rest.
"""

from __future__ import annotations

import configparser
import json
import logging
import os
import stat
import tomllib
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, SequenceNode

from agentloop.errors import ConfigError, LoopError
from agentloop.init.draft import one_line
from agentloop.inputs import bracket_depth, parse_yaml, read_text

log = logging.getLogger(__name__)

_MAX_YAML_NODES = 100_000  # a compose file of hundreds of services has a few thousand
_MAX_DEPTH, _MAX_INDENT = 64, 256
_SCAN_BYTES = 64 * 1024  # enough of a test file to see what it reads
_WALK_ENTRIES = 20_000
_PRUNED = frozenset({".git", "node_modules", ".venv", "venv", "env", "__pycache__", "site-packages", "dist",
                     "build", ".tox", ".nox", ".mypy_cache", ".pytest_cache", ".loop"})


class RepoReader:
    """Files of one repository, by path relative to its top; refusals are collected in `skipped`."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.skipped: list[str] = []

    def skip(self, rel: str, why: str) -> None:
        line = one_line(f"{rel}: {why}", 300)
        if line not in self.skipped:
            self.skipped.append(line)
            log.info("init: not reading %s", line)

    def inside(self, rel: str) -> Path | None:
        """The real path of `rel` when it exists and stays in the repository; a way out is noted."""
        pure = PurePosixPath(rel)
        if pure.is_absolute() or ".." in pure.parts:
            self.skip(rel, "not a path inside the repository; not read")
            return None
        path = self.root / rel
        if not os.path.lexists(path):
            return None
        try:
            real = path.resolve(strict=True)
        except (OSError, RuntimeError):
            self.skip(rel, "a broken or looping symlink; not read")
            return None
        if not real.is_relative_to(self.root):
            self.skip(rel, f"a symlink leading out of the repository (to {real}); not read")
            return None
        return real

    def exists(self, rel: str) -> bool:
        """Whether anything (even a dangling symlink) is at `rel`: refusing it is then worth a line."""
        return os.path.lexists(self.root / rel)

    def listdir(self, rel: str) -> list[str]:
        """Names in the directory `rel` of the repository (sorted), [] when it is not one."""
        real = self.inside(rel) if rel != "." else self.root
        if real is None or not real.is_dir():
            return []
        try:
            return sorted(os.listdir(real))[:_WALK_ENTRIES]
        except OSError:
            return []

    def is_file(self, rel: str) -> bool:
        real = self.inside(rel)
        if real is None:
            return False
        try:
            return stat.S_ISREG(real.stat().st_mode)
        except OSError:
            return False

    def is_dir(self, rel: str) -> bool:
        real = self.inside(rel)
        return real is not None and real.is_dir()

    def text(self, rel: str, what: str) -> str | None:
        real = self.inside(rel)
        if real is None:
            return None
        try:
            mode = real.stat().st_mode
        except OSError:
            return None
        if not stat.S_ISREG(mode):
            self.skip(rel, "not a regular file; not read")
            return None
        try:
            return read_text(real, what=what)
        except LoopError as exc:
            self.skip(rel, str(exc).replace(str(real), "").lstrip(": "))
            return None

    def head(self, rel: str) -> str:
        """The start of a file (for scanning tests), or "" when it is not a plain file of the repository."""
        path = self.root / rel
        if path.is_symlink() or not path.is_file():
            return ""
        try:
            with path.open("rb") as handle:
                return handle.read(_SCAN_BYTES).decode("utf-8", errors="replace")
        except OSError:
            return ""

    def yaml(self, rel: str, what: str) -> Any:
        text = self.text(rel, what)
        if text is None:
            return None
        try:
            _check_depth(text)
            _check_expansion(text)
            return parse_yaml(text, source=rel)
        except ConfigError as exc:
            self.skip(rel, str(exc).removeprefix(f"{rel}:").strip())
        except RecursionError:
            self.skip(rel, "nested too deeply to read; not read")
        return None

    def toml(self, rel: str) -> dict[str, Any] | None:
        text = self.text(rel, "TOML file")
        if text is None:
            return None
        try:
            return tomllib.loads(text)
        except (tomllib.TOMLDecodeError, RecursionError, ValueError) as exc:
            self.skip(rel, f"not valid TOML ({one_line(str(exc), 120)}); not read")
            return None

    def json(self, rel: str) -> Any:
        text = self.text(rel, "JSON file")
        if text is None:
            return None
        try:
            return json.loads(text)
        except (ValueError, RecursionError) as exc:
            self.skip(rel, f"not valid JSON ({one_line(str(exc), 120)}); not read")
            return None

    def ini(self, rel: str) -> configparser.ConfigParser | None:
        text = self.text(rel, "configuration file")
        if text is None:
            return None
        parser = configparser.ConfigParser(interpolation=None, strict=False)
        try:
            parser.read_string(text, source=rel)
        except configparser.Error as exc:
            self.skip(rel, f"not a valid INI file ({one_line(str(exc), 120)}); not read")
            return None
        return parser

    def walk(self, top: str = ".", *, depth: int = 6) -> Iterator[str]:
        """Relative paths of plain files under `top`, not following symlinks, skipping virtualenvs,
        node_modules and build output; bounded in depth and number."""
        start = self.root / top
        if start.is_symlink() or not start.is_dir():
            return
        seen = 0
        for folder, dirs, files in os.walk(start):
            rel_folder = Path(folder).relative_to(self.root)
            if len(rel_folder.parts) - len(PurePosixPath(top).parts) >= depth:
                dirs[:] = []
            dirs[:] = sorted(d for d in dirs if d not in _PRUNED and not d.startswith("."))
            for name in sorted(files):
                seen += 1
                if seen > _WALK_ENTRIES:
                    self.skip(top, f"more than {_WALK_ENTRIES} files; only the first were looked at")
                    return
                path = Path(folder) / name
                if not path.is_symlink():
                    yield (rel_folder / name).as_posix()


def _check_depth(text: str) -> None:
    """Refuse nesting no real file has, before PyYAML sees it: its recursive composer takes seconds to run
    out of stack on a few thousand `[`."""
    deepest = bracket_depth(text)
    indent = max((len(line) - len(line.lstrip(" ")) for line in text.splitlines()), default=0)
    if deepest > _MAX_DEPTH or indent > _MAX_INDENT:
        raise ConfigError(f"nested deeper than init reads ({_MAX_DEPTH} brackets, {_MAX_INDENT} columns); not read")


def _check_expansion(text: str) -> None:
    """Refuse YAML whose aliases expand past `_MAX_YAML_NODES` nodes or refer to themselves: PyYAML
    builds shared objects, but anything that walks them would do the expanded amount of work."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return  # parse_yaml reports it with the line
    if root is None:
        return
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()

    def size(node: Node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in open_nodes:
            raise ConfigError("an alias refers to the node that contains it; not read")
        open_nodes.add(key)
        total = 1
        if isinstance(node, SequenceNode):
            total += sum(size(child) for child in node.value)
        elif isinstance(node, MappingNode):
            total += sum(size(k) + size(v) for k, v in node.value)
        open_nodes.discard(key)
        if total > _MAX_YAML_NODES:
            raise ConfigError(f"its anchors and aliases expand to more than {_MAX_YAML_NODES} values; not read")
        sizes[key] = total
        return total

    size(root)
