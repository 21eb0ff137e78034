"""Validation: every suite and plan against the sandbox, compared with the baseline, to a verdict.

Artifacts in `out_dir`: `sandbox/` (JUnit XML and output of each suite, `<suite>.rerun.*` for the
rerun of failures, `plans/<plan>/<nn>-<step>.json`), `baseline/` (the same for the baseline runs)
and `results.json` (the verdict).
"""

from __future__ import annotations

import logging
from pathlib import Path

from agentloop import git
from agentloop.config import LoopConfig, PlanRef, SuiteConfig
from agentloop.errors import ConfigError
from agentloop.records import SandboxInfo, SuiteResult, Verdict
from agentloop.sandbox.base import SandboxBackend
from agentloop.validation.baseline import SuiteRun, changed_test_files, compare, mark_flaky, run_on_baseline
from agentloop.validation.plans import run_plan
from agentloop.validation.suites import run_suite, suite_env
from agentloop.validation.verdict import decide

__all__ = ["run_validation"]

log = logging.getLogger(__name__)
_NO_SANDBOX = "needs a sandbox, and loop.yaml has no services to deploy"


def run_validation(
    *,
    config: LoopConfig,
    worktree: Path,
    base_commit: str,
    sandbox: SandboxInfo | None,
    backend: SandboxBackend | None,
    out_dir: Path,
) -> Verdict:
    """Run every suite and plan of `config.validate_` and decide the verdict; write artifacts to `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    secrets: list[str] = []  # the route key is not secret: the PR body shows it and logs need it
    health = {name: service.health for name, service in config.services.items()}
    runs: list[SuiteRun] = []
    plans: list[tuple[SuiteRun, Path]] = []
    for entry in config.validate_:
        if isinstance(entry, SuiteConfig):
            runs.append(SuiteRun(_suite(entry, worktree, sandbox, out_dir / "sandbox", secrets), entry))
        else:
            run = SuiteRun(_plan(entry, worktree, sandbox, backend, out_dir / "sandbox" / "plans", health))
            runs.append(run)
            plans.append((run, worktree / entry.plan))
    mark_flaky(runs, worktree=worktree, sandbox=sandbox, out_dir=out_dir / "sandbox")
    changed_tests = changed_test_files(runs, git.changed_files(worktree, base_commit))
    run_on_baseline(
        runs, worktree=worktree, base_commit=base_commit, sandbox=sandbox, changed_tests=changed_tests,
        out_dir=out_dir / "baseline",
    )
    for run, path in plans:
        if sandbox is not None and run.result.ran and not run.result.error:
            on_baseline = run_plan(
                path, sandbox=sandbox, backend=backend, out_dir=out_dir / "baseline" / "plans", baseline=True,
                health_paths=health,
            )
            run.baseline = {t.name: t.outcome for t in on_baseline.tests}
    verdict = decide([run.result for run in runs], compare(runs, changed_tests), require=config.require)
    (out_dir / "results.json").write_text(verdict.model_dump_json(indent=2), encoding="utf-8")
    log.info("validation %s", verdict.reasons[0])
    return verdict


def _suite(suite: SuiteConfig, worktree: Path, sandbox: SandboxInfo | None, out_dir: Path, secrets: list[str]) -> SuiteResult:
    if suite.sandbox and sandbox is None:
        return SuiteResult(name=suite.suite, command=suite.run, ran=False, error=_NO_SANDBOX)
    env = suite_env(sandbox)
    return run_suite(suite, cwd=worktree, env=env, out_dir=out_dir, secrets=secrets)


def _plan(
    ref: PlanRef, worktree: Path, sandbox: SandboxInfo | None, backend: SandboxBackend | None, out_dir: Path,
    health: dict[str, str],
) -> SuiteResult:
    name = ref.name or Path(ref.plan).stem
    if sandbox is None:
        return SuiteResult(name=name, kind="plan", command=ref.plan, ran=False, error=_NO_SANDBOX)
    try:
        result = run_plan(worktree / ref.plan, sandbox=sandbox, backend=backend, out_dir=out_dir, health_paths=health)
    except ConfigError as exc:
        return SuiteResult(name=name, kind="plan", command=ref.plan, error=str(exc))
    return result.model_copy(update={"name": ref.name}) if ref.name else result
