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
import logging
import platform
import re
from collections.abc import Iterator, Mapping
from fnmatch import fnmatch
from importlib import metadata
from pathlib import Path
from typing import Any

from agentloop.evidence.counts import changes_per_iteration, recount
from agentloop.redact import Redactor
from agentloop.results import DeployResult, Diagnosis, SandboxInfo, SuiteResult, Usage, Verdict
from agentloop.verdict_words import verdict_word

SCHEMA_VERSION = 1
EVIDENCE_FILE = "evidence.json"
REPORT_FILE = "report.md"
EXCLUDED = ("evidence.json", "checkpoints*", "events.jsonl", "run.json", "logs/*", "reruns/*", "*.tmp")
log = logging.getLogger(__name__)
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
    """The evidence dict, without `artifacts` (added once every other file is written). `state["status"]`
    is the status the run ends with (the node writing the evidence knows it); `finalize_evidence`
    corrects it if the run ends otherwise after all."""
    attempts = list(state.get("attempts") or [])
    # the verdict and the iteration whose validation gave it (a later iteration may have failed to deploy)
    validated = next((a for a in reversed(attempts) if a.get("verdict")), None)
    latest = state.get("verdict") or (validated or {}).get("verdict")
    verdict = Verdict.model_validate(latest) if latest else None
    at = int((validated or {}).get("iteration") or len(attempts))
    changes = changes_per_iteration(run_dir, attempts)
    return {
        "schema_version": SCHEMA_VERSION,
        "run": {
            "id": state.get("run_id", run_dir.name), "status": state.get("status"), "model": state.get("model"),
            "branch": state.get("branch"), "started_at": state.get("started_at"), "ended_at": state.get("ended_at"),
            "iterations": len(attempts), "stopped_because": state.get("budget_spent") or state.get("error"),
            "confinement": state.get("confinement"),
        },
        "issue": state.get("issue") or {},
        "repository": {"path": state.get("repo"), "branch": state.get("branch")},
        "commits": {"base": state.get("base_commit"), "head": state.get("head_commit")},
        "diff": diff_stats(run_dir / "diff.patch"),
        "sandbox": _sandbox(state.get("sandbox")),
        "iterations": [_iteration(run_dir, attempt, index, changes[index - 1])
                       for index, attempt in enumerate(attempts, start=1)],
        "verdict": _unvalidated_head(_verdict(verdict, run_dir, at), attempts, at) if verdict else {
            "passed": False, "proven": False, "word": "failed", "reasons": ["never validated"], "unproven": [],
            "comparison": {}, "results": [], "iteration": None},
        "time": time_per_node(run_dir / "events.jsonl"),
        "usage": {**Usage.model_validate(state.get("usage") or {}).model_dump(mode="json"),
                  "total_tokens": Usage.model_validate(state.get("usage") or {}).total_tokens},
        "versions": versions(),
        "pull_request": state.get("pull_request"),
        "artifacts_excluded": list(EXCLUDED),
    }


def write_evidence(run_dir: Path, state: Mapping[str, Any], *, redactor: Redactor | None = None) -> dict[str, Any]:
    """Write report.md and evidence.json (schema_version 1) into `run_dir`; return the evidence.
    Every string in them has the secrets `redactor` knows masked (default: the environment's)."""
    from agentloop.evidence.report import render_report

    redactor = redactor or Redactor.from_environment()
    # issue text and test output may carry secrets
    evidence: dict[str, Any] = redactor.mask_data(build_evidence(run_dir, state))
    (run_dir / REPORT_FILE).write_text(render_report(evidence, redactor=redactor), encoding="utf-8")
    evidence["artifacts"] = artifacts(run_dir)
    tmp = run_dir / f"{EVIDENCE_FILE}.tmp"
    tmp.write_text(json.dumps(evidence, indent=2, default=str), encoding="utf-8")
    tmp.replace(run_dir / EVIDENCE_FILE)
    return evidence


def finalize_evidence(run_dir: Path, *, status: str, message: str, pull_request: Mapping[str, Any] | None,
                      ended_at: float) -> bool:
    """Rewrite `evidence.json` with how the run ended (status, message, pull request, end time); False when
    the run wrote none. Only evidence.json changes, and it is outside the hashed artifacts (it holds their
    hashes); report.md does not show the run's status, so its recorded hash still holds. Files written
    after the evidence (`error.txt`) are added to `artifacts`; recorded hashes are never replaced."""
    path = run_dir / EVIDENCE_FILE
    if not path.is_file():
        return False
    evidence: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    run = evidence.setdefault("run", {})
    run.update(status=status, ended_at=ended_at)
    if status != "published" and message:
        run["stopped_because"] = message
    if pull_request:
        evidence["pull_request"] = dict(pull_request)
    recorded = {item["path"] for item in evidence.get("artifacts") or []}
    added = [item for item in artifacts(run_dir) if item["path"] not in recorded]
    evidence["artifacts"] = sorted([*(evidence.get("artifacts") or []), *added], key=lambda item: item["path"])
    tmp = run_dir / f"{EVIDENCE_FILE}.tmp"
    tmp.write_text(json.dumps(evidence, indent=2, default=str), encoding="utf-8")
    tmp.replace(path)
    return True


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


def _iteration(run_dir: Path, attempt: Mapping[str, Any], index: int, changed: list[str]) -> dict[str, Any]:
    verdict = Verdict.model_validate(attempt["verdict"]) if attempt.get("verdict") else None
    diagnosis = Diagnosis.model_validate(attempt["diagnosis"]) if attempt.get("diagnosis") else None
    deploy = DeployResult.model_validate(attempt["deploy"]) if attempt.get("deploy") else None
    edit = attempt.get("edit") or {}
    number = int(attempt.get("iteration", index))
    return {
        "iteration": number,
        "changed_files": changed,  # what this iteration's edit changed
        "changed_since_base": list(attempt.get("changed_files") or []),
        "edit_summary": edit.get("summary", ""),
        "deploy": None if deploy is None else {
            "ok": deploy.ok, "forked": deploy.forked, "restarted": deploy.restarted, "error": deploy.error,
            "service": deploy.service, "exit_code": deploy.exit_code,
        },
        "verdict": _verdict(verdict, run_dir, number) if verdict else None,
        "diagnosis": diagnosis.summary if diagnosis else "",
        "log_excerpts": dict(diagnosis.excerpts) if diagnosis else {},
    }


def _verdict(verdict: Verdict, run_dir: Path, iteration: int) -> dict[str, Any]:
    return {
        "passed": verdict.passed, "proven": verdict.proven, "word": verdict_word(verdict.model_dump(mode="json")),
        "reasons": verdict.reasons, "unproven": verdict.unproven, "needs_review": verdict.needs_review,
        "comparison": verdict.comparison.model_dump(mode="json"),
        "base_runs": [source.model_dump(mode="json") for source in verdict.base_runs],  # `baseline` before
        "results": [_result(r, run_dir, iteration) for r in verdict.results],
    }


def _unvalidated_head(verdict: dict[str, Any], attempts: list[Mapping[str, Any]], at: int) -> dict[str, Any]:
    """The verdict of iteration `at`, told as what it is when a later iteration's change (in the head
    commit too) never reached validation: a failed deploy makes it "failed", a stop mid-edit no better
    than "unproven"."""
    verdict["iteration"] = at
    last = attempts[-1] if attempts else {}
    number = int(last.get("iteration") or len(attempts))
    if number == at:
        return verdict
    deploy = last.get("deploy") or {}
    if deploy and not deploy.get("ok", True):
        verdict["word"], why = "failed", f"its deploy failed: {deploy.get('error') or 'see the log'}"
    else:
        verdict["word"] = "unproven" if verdict["word"] == "passed" else verdict["word"]
        why = "the run stopped before validating it"
    note = f"iteration {number}'s change was not validated ({why}); the results below are iteration {at}'s"
    verdict["reasons"] = [*verdict["reasons"], note]
    return verdict


def _result(result: SuiteResult, run_dir: Path, iteration: int) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "name": result.name, "kind": result.kind, "command": result.command, "ran": result.ran, "error": result.error,
        "exit_code": result.exit_code, "duration": result.duration, "counts": result.counts(), "counted_from": None,
        "failures": [{"name": t.name, "outcome": t.outcome, "message": t.message} for t in result.failed],
        "flaky": [t.name for t in result.tests if t.flaky],
    }
    # the counts a reviewer sees are those of the artifact the suite left, which `loop verify` recounts
    counted = recount(run_dir, iteration, entry, [t.outcome for t in result.tests if t.flaky])
    if counted is not None:
        counts, source = counted
        if counts != entry["counts"]:
            log.warning("%s: %s counts %s, its results said %s", result.name, source, counts, entry["counts"])
        entry.update(counts=counts, counted_from=source)
    return entry
