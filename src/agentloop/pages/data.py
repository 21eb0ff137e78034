"""What the pages show, read from run folders (and the shared store when LOOP_DATABASE_URL is set): the
list of runs, and one run's summary, iterations (diff, test results, log excerpts), evidence with its
`loop verify` status, and whether it waits for a person's approval."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agentloop.errors import LoopError
from agentloop.evidence.manifest import EVIDENCE_FILE
from agentloop.evidence.verify import verify_run
from agentloop.runs.folder import RunSummary, list_runs, read_summary
from agentloop.runs.store import open_store

RunRoots = Callable[[], list[Path]]
MAX_TEXT = 60_000  # a diff or log beyond this is cut on the page (the record keeps all of it)
APPROVAL_FILE = "approval.json"  # under logs/: outside the hashed evidence, written before publish
_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,80}")


@dataclass
class Iteration:
    number: int
    diff: str = ""
    results: list[dict[str, Any]] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    outcome: str = ""
    diagnosis: str = ""


@dataclass
class RunView:
    summary: RunSummary
    run_dir: Path | None  # None: only in the shared store (ran on another machine)
    events: list[dict[str, Any]]
    iterations: list[Iteration]
    evidence: dict[str, Any] | None
    verification: list[str] | None  # `loop verify`'s differences; None when it could not check
    verify_error: str = ""
    approval: dict[str, Any] | None = None

    @property
    def awaiting_review(self) -> bool:
        """Paused by `--review` before publish, and no one has answered yet."""
        s = self.summary
        return (s.status == "interrupted" and s.review and "waiting before publish" in s.message
                and self.approval is None)


def all_runs(roots: RunRoots) -> list[RunSummary]:
    """Every run in every root, newest first (the shared store's list when it is configured)."""
    if open_store() is not None:  # list_runs reads the store then, whatever the root
        return list_runs(Path())
    found = {s.id: s for root in roots() for s in list_runs(root)}
    return sorted(found.values(), key=lambda s: s.started_at, reverse=True)


def find_run_dir(roots: RunRoots, run_id: str) -> Path | None:
    if not _RUN_ID.fullmatch(run_id):
        return None
    for root in roots():
        if (root / run_id / "run.json").is_file():
            return root / run_id
    return None


def _cut(text: str) -> str:
    return text if len(text) <= MAX_TEXT else text[:MAX_TEXT] + f"\n... cut at {MAX_TEXT} characters"


def _read(path: Path) -> str:
    try:
        return _cut(path.read_text(encoding="utf-8", errors="replace"))
    except OSError:
        return ""


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _iterations(run_dir: Path) -> list[Iteration]:
    base = run_dir / "iterations"
    numbers = sorted(int(p.name) for p in base.iterdir() if p.name.isdigit()) if base.is_dir() else []
    found = []
    for number in numbers:
        folder = base / str(number)
        validated = _json(folder / "validate" / "results.json") or {}
        found.append(Iteration(
            number=number, diff=_read(folder / "diff.patch"),
            results=[r for r in validated.get("results") or [] if isinstance(r, dict)],
            reasons=[str(r) for r in validated.get("reasons") or []], outcome=str(validated.get("outcome") or ""),
            diagnosis=_read(folder / "diagnosis.md"),
        ))
    return found


def _events(run_dir: Path) -> list[dict[str, Any]]:
    events = []
    path = run_dir / "events.jsonl"
    for line in (path.read_text(encoding="utf-8", errors="replace").splitlines() if path.is_file() else []):
        try:
            events.append(json.loads(line))
        except ValueError:
            continue
    return [e for e in events if isinstance(e, dict)]


def _verify(run_dir: Path, summary: RunSummary) -> tuple[list[str] | None, str]:
    try:
        return verify_run(run_dir, Path(summary.repo)), ""
    except (LoopError, OSError, ValueError) as exc:
        return None, str(exc)


def load_run(roots: RunRoots, run_id: str) -> RunView | None:
    """One run as the page shows it, or None when no root (nor the store) knows it."""
    run_dir = find_run_dir(roots, run_id)
    if run_dir is None:
        store = open_store() if _RUN_ID.fullmatch(run_id) else None
        shared = store.summary(run_id) if store is not None else None
        if store is None or shared is None:
            return None
        return RunView(summary=RunSummary.model_validate(shared), run_dir=None, events=store.events(run_id),
                       iterations=[], evidence=None, verification=None, verify_error="the run's files are on "
                       "the machine that ran it; only its summary and events are in the shared store")
    summary = read_summary(run_dir / "run.json")
    evidence = _json(run_dir / EVIDENCE_FILE) if (run_dir / EVIDENCE_FILE).is_file() else None
    no_evidence = "no evidence yet: publish or report_failure writes it"
    verification, error = _verify(run_dir, summary) if evidence is not None else (None, no_evidence)
    approval = _json(run_dir / "logs" / APPROVAL_FILE)
    return RunView(summary=summary, run_dir=run_dir, events=_events(run_dir), iterations=_iterations(run_dir),
                   evidence=evidence if isinstance(evidence, dict) else None, verification=verification,
                   verify_error=error, approval=approval if isinstance(approval, dict) else None)
