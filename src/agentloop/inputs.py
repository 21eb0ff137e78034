"""Reading the files a user hands loop (`loop.yaml`, plans, issue files): bounded, UTF-8, and YAML
without silently dropped keys. Every failure is a LoopError whose one line names the file, the line
where it can, and what to do.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from yaml.constructor import ConstructorError
from yaml.nodes import MappingNode

from agentloop.errors import ConfigError, LoopError

MAX_INPUT_BYTES = 1024 * 1024  # far above any real config, plan or issue; far below what hurts


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping: PyYAML keeps the last one silently,
    so `services:` written twice would quietly drop the first list of services."""

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *base` then overriding a key is the point of merge keys
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key; the base constructor reports it
                continue
            if first is not None:
                raise ConstructorError(
                    None, None, f"key {key!r} appears twice in one mapping (first on line {first + 1}); keep one",
                    key_node.start_mark,
                )
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def read_text(path: Path, *, what: str, error: type[LoopError] = ConfigError, limit: int = MAX_INPUT_BYTES) -> str:
    """The text of `path` (UTF-8, at most `limit` bytes), or `error` saying which of these it is not."""
    try:
        size = path.stat().st_size
        if size > limit:
            raise error(f"{path}: {size} bytes, more than the {limit // 1024} KiB a {what} may have; shorten it")
        data = path.read_bytes()
    except OSError as exc:
        raise error(f"{path}: cannot read the {what} ({exc.strerror or type(exc).__name__})") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise error(
            f"{path}: line {line}: not UTF-8 (byte 0x{data[exc.start]:02x}); save the {what} as UTF-8"
        ) from None


MAX_YAML_DEPTH = 64


def bracket_depth(text: str) -> int:
    """The deepest `[`/`{` nesting (an over-count: brackets inside strings count too)."""
    depth = deepest = 0
    for char in text:
        if char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


def load_yaml(path: Path, *, what: str, error: type[LoopError] = ConfigError) -> Any:
    """Parse `path` as YAML (safe types only, no duplicate keys); `error` names the file and the line."""
    return parse_yaml(read_text(path, what=what, error=error), source=str(path), error=error)


def parse_yaml(text: str, *, source: str, error: type[LoopError] = ConfigError) -> Any:
    """`text` as YAML, as `load_yaml` reads a file; `source` names where it came from in errors."""
    if bracket_depth(text) > MAX_YAML_DEPTH:
        # PyYAML's composer is recursive: thousands of `[` take seconds, then overflow the stack
        raise error(f"{source}: nested deeper than {MAX_YAML_DEPTH} levels of brackets; no config needs that")
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader subclass: safe types only
    except RecursionError:
        raise error(f"{source}: nested too deeply to read; flatten it") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}:" if mark is not None else ""
        problem = " ".join(str(getattr(exc, "problem", None) or exc).split())
        raise error(f"{source}:{where} not valid YAML: {problem}") from None
