"""Numbers the evidence takes from the run's artifacts rather than from memory, so that `loop verify`
can take them again the same way: test counts from the JUnit XML (and plan step records) a suite left
in `iterations/<n>/validate/sandbox/`, and which files each iteration changed, from consecutive
`iterations/<n>/diff.patch` (each is the whole change against the base at the end of that edit)."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from junitparser import JUnitXml, TestSuite
from junitparser.junitparser import JUnitXmlError

from agentloop.validation.suites import safe_name

log = logging.getLogger(__name__)

_FILE_HEADER = re.compile(r"^diff --git a/(.*) b/(.*)$")


def source_of(iteration: int, result: Mapping[str, Any]) -> str:
    """Where the counts of a suite (its JUnit XML) or a plan (its step records) are, relative to the run."""
    folder = f"iterations/{iteration}/validate/sandbox"
    name = safe_name(str(result.get("name") or ""))
    return f"{folder}/plans/{name}" if result.get("kind") == "plan" else f"{folder}/{name}.xml"


def junit_counts(path: Path) -> dict[str, int] | None:
    """passed/failed/error/skipped over every `<testcase>` of a JUnit report; None when unreadable.
    A case's first `<failure>`, `<error>` or `<skipped>` decides it, as when the suite's results were read."""
    try:
        xml = JUnitXml.fromfile(str(path))
    except (JUnitXmlError, OSError, SyntaxError, ValueError) as exc:
        log.debug("no JUnit counts from %s: %s", path, exc)
        return None
    counts = {"passed": 0, "failed": 0, "error": 0, "skipped": 0}
    for suite in [xml] if isinstance(xml, TestSuite) else list(xml):
        for case in suite:
            kind = type(case.result[0]).__name__.lower() if case.result else "passed"
            counts[kind if kind in ("error", "skipped", "passed") else "failed"] += 1
    return counts


def plan_counts(folder: Path) -> dict[str, int] | None:
    """passed/failed/error/skipped over a plan's step records; None when there are none."""
    steps = sorted(folder.glob("*.json")) if folder.is_dir() else []
    if not steps:
        return None
    counts = {"passed": 0, "failed": 0, "error": 0, "skipped": 0}
    for step in steps:
        try:
            outcome = json.loads(step.read_text(encoding="utf-8")).get("outcome")
        except (OSError, ValueError, AttributeError):
            return None
        if outcome not in counts:
            return None
        counts[outcome] += 1
    return counts


def recount(run_dir: Path, iteration: int, result: Mapping[str, Any],
            flaky: Sequence[str] = ()) -> tuple[dict[str, int], str] | None:
    """A result's counts taken from its artifact, and that artifact's path; None when it left none.
    `flaky` are the outcomes ("failed"/"error") of the tests that passed on the rerun: the artifact
    records them as failing; the table shows them apart."""
    source = source_of(iteration, result)
    path = run_dir / source
    counts = plan_counts(path) if result.get("kind") == "plan" else junit_counts(path) if path.is_file() else None
    if counts is None:
        return None
    for outcome in flaky:
        key = outcome if counts.get(outcome, 0) > 0 else "error" if outcome == "failed" else "failed"
        counts[key] = max(0, counts[key] - 1)
    counts["flaky"] = len(flaky)
    return counts, source


def rerun_passes(run_dir: Path, iteration: int, result: Mapping[str, Any]) -> int | None:
    """How many tests passed when a suite's failures were rerun (`<suite>.rerun.xml`); None without one."""
    path = run_dir / f"iterations/{iteration}/validate/sandbox/{safe_name(str(result.get('name')) + '.rerun')}.xml"
    counts = junit_counts(path) if path.is_file() else None
    return None if counts is None else counts["passed"]


def patch_files(text: str) -> dict[str, str]:
    """Each file's section of a unified diff (its header line included), by path."""
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        match = _FILE_HEADER.match(line)
        if match:
            current = sections.setdefault(match.group(2), [])
        if current is not None:
            current.append(line)
    return {name: "\n".join(lines) for name, lines in sections.items()}


def changes_per_iteration(run_dir: Path, attempts: Iterable[Mapping[str, Any]]) -> list[list[str]]:
    """The files each iteration changed (added, edited, reverted or deleted), in attempt order.

    An iteration's diff.patch is its whole change against the base; a file's section differs from the
    previous iteration's (or appears, or goes) exactly when that iteration changed the file. Without a
    patch (records from before they were kept) the attempt's own list, since the base, is all there is."""
    changes: list[list[str]] = []
    before: dict[str, str] = {}
    for index, attempt in enumerate(attempts, start=1):
        patch = run_dir / "iterations" / str(attempt.get("iteration", index)) / "diff.patch"
        if not patch.is_file():
            changes.append(sorted(attempt.get("changed_files") or []))
            continue
        now = patch_files(patch.read_text(encoding="utf-8", errors="replace"))
        changes.append(sorted(name for name in set(now) | set(before) if now.get(name) != before.get(name)))
        before = now
    return changes
