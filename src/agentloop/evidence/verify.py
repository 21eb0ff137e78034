"""`loop verify RUN`: does the run record still say what it said, and is it true? Every artifact against
its sha256 and size, every number in report.md against the artifacts and evidence.json it was rendered
from (`evidence.check`), the head commit against the recorded diff; `--rerun` validates the head commit
again in a fresh sandbox (its artifacts go to `runs/<id>/reruns/<time>/`, outside the hashed record)."""

from __future__ import annotations

import json
import logging
import secrets
import time
from pathlib import Path
from typing import Any

from agentloop import git, project_env
from agentloop.config import LoopConfig, load_config, load_config_at
from agentloop.confine import project_confinement
from agentloop.errors import LoopError
from agentloop.evidence.check import check_report
from agentloop.evidence.manifest import EVIDENCE_FILE, artifacts, diff_stats
from agentloop.owned import scratch_worktree
from agentloop.results import SandboxInfo, Verdict
from agentloop.sandbox.base import SandboxBackend, baseline_held
from agentloop.sandbox.factory import open_backend, services_for_changes
from agentloop.validation import run_validation

log = logging.getLogger(__name__)
RERUNS = "reruns"


def _evidence(run_dir: Path) -> dict[str, Any]:
    path = run_dir / EVIDENCE_FILE
    if not path.is_file():
        raise LoopError(f"{path}: no evidence; the run has not finished (publish or report_failure writes it)")
    try:
        data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise LoopError(f"{path}: not valid JSON ({exc}); the record was damaged") from None
    return data


def verify_run(run_dir: Path, repo: Path) -> list[str]:
    """Human lines of exactly what differs from the record; empty when everything matches."""
    evidence = _evidence(run_dir)
    differences: list[str] = []
    recorded = {item["path"]: item for item in evidence.get("artifacts") or []}
    current = {item["path"]: item for item in artifacts(run_dir)}
    for path, item in sorted(recorded.items()):
        now = current.get(path)
        if now is None:
            differences.append(f"{path}: missing (recorded {item['size']} bytes, sha256 {item['sha256'][:12]})")
        elif now["sha256"] != item["sha256"]:
            differences.append(
                f"{path}: content changed (sha256 {item['sha256'][:12]} recorded, {now['sha256'][:12]} now; "
                f"{item['size']} -> {now['size']} bytes)"
            )
    for path in sorted(set(current) - set(recorded)):
        differences.append(f"{path}: not in the record (added after the run)")
    differences += check_report(run_dir, evidence, diff_stats(run_dir / "diff.patch"))
    differences += _check_commits(evidence, run_dir, repo)
    return differences


def _check_commits(evidence: dict[str, Any], run_dir: Path, repo: Path) -> list[str]:
    commits = evidence.get("commits") or {}
    base, head = commits.get("base"), commits.get("head")
    if not base or not head:
        return ["evidence.json: no base or head commit recorded"]
    top = Path(str(git.open_repo(repo).working_tree_dir))
    for label, sha in (("base", base), ("head", head)):
        if not git.has_commit(top, sha):
            return [f"{label} commit {sha[:12]} is not in {repo} (fetch the run's branch, or it was rewritten)"]
    patch = run_dir / "diff.patch"
    if not patch.is_file():
        return ["diff.patch: missing, so the head commit cannot be checked against it"]
    actual = git.diff_commits(top, base, head)
    if actual.strip() != patch.read_text(encoding="utf-8").strip():
        changed = sorted(set(_files_in(actual)) ^ set(_files_in(patch.read_text(encoding="utf-8"))))
        which = f" (files differing: {', '.join(changed)})" if changed else " (same files, different content)"
        return [f"head commit {head[:12]}: its diff against base {base[:12]} is not diff.patch{which}"]
    return []


def _files_in(patch: str) -> list[str]:
    return [line.split(" b/", 1)[1] for line in patch.splitlines() if line.startswith("diff --git ") and " b/" in line]


def rerun(run_dir: Path, repo: Path) -> Verdict:
    """Validate the recorded head commit again: a fresh detached worktree, a fresh sandbox of the
    changed services, every suite and plan; everything made here is removed afterwards."""
    evidence = _evidence(run_dir)
    base, head = (evidence.get("commits") or {}).get("base"), (evidence.get("commits") or {}).get("head")
    if not base or not head:
        raise LoopError(f"{run_dir / EVIDENCE_FILE}: no base or head commit recorded; nothing to rerun")
    # under loop's state dir as this process's (`agentloop.owned`): gc removes it if this command is killed
    with scratch_worktree(repo, head, prefix="verify-") as worktree:
        # validated with the base commit's loop.yaml, never the change's own
        config = load_config_at(repo, base, load_config(repo))
        # the change's head: the agent's own files, so its setup results are not shared
        project_env.prepare(worktree, repo=repo, confinement=project_confinement(config), share=False)
        out_dir = run_dir / RERUNS / time.strftime("%Y%m%d-%H%M%S")
        if not config.services:
            return run_validation(config=config, worktree=worktree, repo=repo, base_commit=base, sandbox=None,
                                  backend=None, out_dir=out_dir)
        backend = open_backend(repo, config)
        with baseline_held(backend):
            changed = git.changed_files(git.Worktree(repo, worktree), base)
            return _in_sandbox(backend, config_services=services_for_changes(config, changed),
                               worktree=worktree, repo=repo, base=base, out_dir=out_dir, config=config)


def _in_sandbox(
    backend: SandboxBackend, *, config_services: list[str], worktree: Path, repo: Path, base: str, out_dir: Path,
    config: LoopConfig,
) -> Verdict:
    name = f"verify-{secrets.token_hex(4)}"
    sandbox: SandboxInfo = backend.create(name, {service: worktree for service in config_services}, log_dir=out_dir / "logs")
    try:
        return run_validation(config=config, worktree=worktree, repo=repo, base_commit=base, sandbox=sandbox,
                              backend=backend, out_dir=out_dir)
    finally:
        backend.remove(name)
