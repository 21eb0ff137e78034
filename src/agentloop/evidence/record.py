"""`runs/<id>/evidence.json`: what was validated, by whom, against what, with a hash of every artifact.

Artifacts are every file under the run directory except those that are not final when the evidence
is written (see `EXCLUDED`): the evidence itself, the checkpoint database, `events.jsonl` and
`run.json` (still appended/rewritten as the run finishes), and `logs/` (the sandbox's forks keep
writing their logs there while the sandbox lives; their excerpts are in the evidence), and `reruns/`
(written later by `loop verify --rerun`).
"""

from __future__ import annotations

import hashlib
import json
import platform
import re
from collections.abc import Iterator, Mapping
from fnmatch import fnmatch
from importlib import metadata
from pathlib import Path
from typing import Any

from agentloop.records import DeployResult, Diagnosis, SandboxInfo, Usage, Verdict
from agentloop.redact import redact

SCHEMA_VERSION = 1
EVIDENCE_FILE = "evidence.json"
REPORT_FILE = "report.md"
EXCLUDED = ("evidence.json", "checkpoints*", "events.jsonl", "run.json", "logs/*", "reruns/*", "*.tmp")
_TIME_GROUPS = {"provisioning": ("deploy",), "tests": ("validate",), "model": ("edit",)}


def artifacts(run_dir: Path) -> list[dict[str, Any]]:
    """Every final file under `run_dir` with its sha256 and size, sorted by path."""
    return [{"path": rel, "sha256": sha256_of(path), "size": path.stat().st_size} for rel, path in _files(run_dir)]


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 16), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _files(run_dir: Path) -> Iterator[tuple[str, Path]]:
    for path in sorted(run_dir.rglob("*")):
        rel = path.relative_to(run_dir).as_posix()
        if path.is_file() and not any(fnmatch(rel, pattern) for pattern in EXCLUDED):
            yield rel, path


def build_evidence(run_dir: Path, state: Mapping[str, Any]) -> dict[str, Any]:
    """The evidence dict, without `artifacts` (added once every other file is written)."""
    attempts = list(state.get("attempts") or [])
    latest = state.get("verdict") or next((a.get("verdict") for a in reversed(attempts) if a.get("verdict")), None)
    verdict = Verdict.model_validate(latest) if latest else None
    return {
        "schema_version": SCHEMA_VERSION,
        "run": {
            "id": state.get("run_id", run_dir.name), "status": state.get("status"), "model": state.get("model"),
            "branch": state.get("branch"), "started_at": state.get("started_at"), "iterations": len(attempts),
            "stopped_because": state.get("budget_spent") or state.get("error"),
        },
        "issue": state.get("issue") or {},
        "repository": {"path": state.get("repo"), "branch": state.get("branch")},
        "commits": {"base": state.get("base_commit"), "head": state.get("head_commit")},
        "diff": diff_stats(run_dir / "diff.patch"),
        "sandbox": _sandbox(state.get("sandbox")),
        "iterations": [_iteration(attempt, index) for index, attempt in enumerate(attempts, start=1)],
        "verdict": _verdict(verdict) if verdict else {"passed": False, "proven": False, "reasons": ["never validated"],
                                                      "unproven": [], "comparison": {}},
        "time": time_per_node(run_dir / "events.jsonl"),
        "usage": {**Usage.model_validate(state.get("usage") or {}).model_dump(mode="json"),
                  "total_tokens": Usage.model_validate(state.get("usage") or {}).total_tokens},
        "versions": versions(),
        "pull_request": state.get("pull_request"),
        "artifacts_excluded": list(EXCLUDED),
    }


def write_evidence(run_dir: Path, state: Mapping[str, Any]) -> dict[str, Any]:
    """Write report.md and evidence.json (schema_version 1) into `run_dir`; return the evidence."""
    from agentloop.evidence.report import render_report

    evidence: dict[str, Any] = _redacted(build_evidence(run_dir, state))
    (run_dir / REPORT_FILE).write_text(render_report(evidence), encoding="utf-8")
    evidence["artifacts"] = artifacts(run_dir)
    tmp = run_dir / f"{EVIDENCE_FILE}.tmp"
    tmp.write_text(json.dumps(evidence, indent=2, default=str), encoding="utf-8")
    tmp.replace(run_dir / EVIDENCE_FILE)
    return evidence


def _redacted(value: Any) -> Any:
    """Every string in the evidence with secrets masked (issue text and test output may carry them)."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {key: _redacted(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_redacted(item) for item in value]
    return value


def diff_stats(patch: Path) -> dict[str, Any]:
    """Files, insertions and deletions of a unified diff (binary files count as changed, no lines)."""
    files: dict[str, dict[str, int]] = {}
    current: dict[str, int] | None = None
    if patch.is_file():
        for line in patch.read_text(encoding="utf-8", errors="replace").splitlines():
            match = re.match(r"diff --git a/(.*) b/(.*)$", line)
            if match:
                current = files.setdefault(match.group(2), {"insertions": 0, "deletions": 0})
            elif current is not None and line.startswith("+") and not line.startswith("+++"):
                current["insertions"] += 1
            elif current is not None and line.startswith("-") and not line.startswith("---"):
                current["deletions"] += 1
    return {
        "files_changed": len(files),
        "insertions": sum(f["insertions"] for f in files.values()),
        "deletions": sum(f["deletions"] for f in files.values()),
        "files": [{"path": name, **counts} for name, counts in files.items()],
    }


def time_per_node(events_path: Path) -> dict[str, Any]:
    """Seconds per node from `events.jsonl`, and the totals for provisioning, tests and the model."""
    per_node: dict[str, float] = {}
    if events_path.is_file():
        for line in events_path.read_text(encoding="utf-8").splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue  # a line being written while we read
            if event.get("event") == "end" and isinstance(event.get("duration"), (int, float)):
                per_node[event["node"]] = round(per_node.get(event["node"], 0.0) + float(event["duration"]), 3)
    groups = {group: round(sum(per_node.get(n, 0.0) for n in nodes), 3) for group, nodes in _TIME_GROUPS.items()}
    return {"per_node": per_node, **groups, "total": round(sum(per_node.values()), 3)}


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for label, dist in (("loop", "agentloop"), ("langgraph", "langgraph"), ("anthropic", "anthropic")):
        try:
            found[label] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            found[label] = "not installed"
    return found


def _sandbox(data: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if not data:
        return None
    sandbox = SandboxInfo.model_validate(data)
    return {
        "backend": sandbox.backend, "name": sandbox.name, "route_key": sandbox.route_key, "link": sandbox.link,
        "router_url": sandbox.router_url, "routing_headers": sandbox.routing_headers,
        "forks": {name: {"url": f.url, "source": f.source, "code_hash": f.code_hash} for name, f in sandbox.forks.items()},
    }


def _iteration(attempt: Mapping[str, Any], index: int) -> dict[str, Any]:
    verdict = Verdict.model_validate(attempt["verdict"]) if attempt.get("verdict") else None
    diagnosis = Diagnosis.model_validate(attempt["diagnosis"]) if attempt.get("diagnosis") else None
    deploy = DeployResult.model_validate(attempt["deploy"]) if attempt.get("deploy") else None
    edit = attempt.get("edit") or {}
    return {
        "iteration": attempt.get("iteration", index),
        "changed_files": list(attempt.get("changed_files") or []),
        "edit_summary": edit.get("summary", ""),
        "deploy": None if deploy is None else {
            "ok": deploy.ok, "forked": deploy.forked, "restarted": deploy.restarted, "error": deploy.error,
            "service": deploy.service, "exit_code": deploy.exit_code,
        },
        "verdict": _verdict(verdict) if verdict else None,
        "diagnosis": diagnosis.summary if diagnosis else "",
        "log_excerpts": dict(diagnosis.excerpts) if diagnosis else {},
    }


def _verdict(verdict: Verdict) -> dict[str, Any]:
    return {
        "passed": verdict.passed, "proven": verdict.proven, "reasons": verdict.reasons, "unproven": verdict.unproven,
        "comparison": verdict.comparison.model_dump(mode="json"),
        "results": [
            {
                "name": r.name, "kind": r.kind, "command": r.command, "ran": r.ran, "error": r.error,
                "exit_code": r.exit_code, "duration": r.duration, "counts": r.counts(),
                "failures": [{"name": t.name, "outcome": t.outcome, "message": t.message} for t in r.failed],
                "flaky": [t.name for t in r.tests if t.flaky],
            }
            for r in verdict.results
        ],
    }
