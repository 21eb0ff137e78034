"""Validation: every suite and plan against the sandbox, compared with the base run, to a verdict.

Suites come from `config` (the base commit's loop.yaml, see `runner`); plans are read from the base commit,
so that the change cannot weaken what it is checked by (a plan the base commit does not have yet is read
from the worktree, and the verdict names it for review).

Artifacts in `out_dir`: `sandbox/` (JUnit XML and output of each suite, `<suite>.rerun.*` for the
rerun of failures, `plans/<plan>/<nn>-<step>.json`), `base/` (the base run: `<suite>.full.*`, the suite's
full run at the base commit, from the cache of `base_results`; `<suite>.changed.*`, the tests of the
changed test files run at the base commit; `plans/`) and `results.json` (the verdict).

The base run is the same tests at the base commit, which each sandbox result is compared with
(`comparison`); the baseline is the shared services every sandbox forks from (`sandbox`).
"""

from __future__ import annotations

import logging
import posixpath
import tempfile
from pathlib import Path

from agentloop import git
from agentloop.config import LoopConfig, PlanRef, SuiteConfig
from agentloop.confine import Confinement, project_confinement
from agentloop.errors import ConfigError
from agentloop.results import SandboxInfo, SuiteResult, Verdict
from agentloop.sandbox.base import SandboxBackend
from agentloop.validation.base_results import full_base_runs
from agentloop.validation.comparison import (
    SuiteRun,
    baseline_view,
    changed_test_files,
    compare,
    mark_flaky,
    run_changed_on_base,
)
from agentloop.validation.plans import run_plan
from agentloop.validation.review import review
from agentloop.validation.suites import run_suite, suite_env
from agentloop.validation.verdict import decide

__all__ = ["run_validation"]

log = logging.getLogger(__name__)
_NO_SANDBOX = "needs a sandbox, and loop.yaml has no services to deploy"
BASE_DIR = "base"  # the base run's artifacts in `out_dir`


def run_validation(
    *,
    config: LoopConfig,
    worktree: Path,
    repo: Path,
    base_commit: str,
    sandbox: SandboxInfo | None,
    backend: SandboxBackend | None,
    out_dir: Path,
) -> Verdict:
    """Run every suite and plan of `config.validate_` and decide the verdict; write artifacts to `out_dir`.
    `worktree` is a checkout of the user's repository `repo` (loop's git finds its git dir from there)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    confinement = project_confinement(config)
    secrets: list[str] = []  # the route key is not secret: the PR body shows it and logs need it
    health = {name: service.health for name, service in config.services.items()}
    checkout = git.Worktree(repo, worktree)
    runs: list[SuiteRun] = []
    plans: list[tuple[SuiteRun, Path]] = []
    with tempfile.TemporaryDirectory(prefix="loop-plans-") as scratch:
        for index, entry in enumerate(config.validate_):
            if isinstance(entry, SuiteConfig):
                result = _suite(entry, worktree, sandbox, out_dir / "sandbox", secrets, confinement)
                runs.append(SuiteRun(result, entry))
            else:
                path = _plan_file(entry, repo, base_commit, worktree, Path(scratch) / str(index))
                run = SuiteRun(_plan(entry, path, sandbox, backend, out_dir / "sandbox" / "plans", health))
                runs.append(run)
                plans.append((run, path))
        mark_flaky(runs, worktree=worktree, sandbox=sandbox, out_dir=out_dir / "sandbox", confinement=confinement)
        changed = git.changed_files(checkout, base_commit)
        changed_tests = changed_test_files(runs, changed)
        full = full_base_runs(config.suites, repo=repo, base_commit=base_commit, sandbox=sandbox,
                              confinement=confinement, out_dir=out_dir / BASE_DIR)
        for run in runs:
            if run.config is not None and run.config.suite in full:
                run.full = full[run.config.suite].outcomes()
        run_changed_on_base(
            runs, worktree=worktree, repo=repo, base_commit=base_commit, view=baseline_view(sandbox) if sandbox else None,
            changed_tests=changed_tests, out_dir=out_dir / BASE_DIR, confinement=confinement,
        )
        for run, path in plans:
            if sandbox is not None and run.result.ran and not run.result.error:
                on_base = run_plan(
                    path, sandbox=sandbox, backend=backend, out_dir=out_dir / BASE_DIR / "plans", base_run=True,
                    health_paths=health,
                )
                run.full = {t.name: t.outcome for t in on_base.tests}
    needs_review = review(
        repo=repo, worktree=checkout, base_commit=base_commit, config=config, changed=changed,
        suites=[(run.result, run.full) for run in runs if run.config is not None],
    )
    verdict = decide([run.result for run in runs], compare(runs, changed_tests), require=config.require,
                     needs_review=needs_review, base_runs=[item.source for item in full.values()])
    (out_dir / "results.json").write_text(verdict.model_dump_json(indent=2), encoding="utf-8")
    log.info("validation %s", verdict.reasons[0])
    return verdict


def _suite(suite: SuiteConfig, worktree: Path, sandbox: SandboxInfo | None, out_dir: Path, secrets: list[str],
           confinement: Confinement) -> SuiteResult:
    if suite.sandbox and sandbox is None:
        return SuiteResult(name=suite.suite, command=suite.run, ran=False, error=_NO_SANDBOX)
    return run_suite(suite, cwd=worktree, env=suite_env(sandbox), out_dir=out_dir, secrets=secrets,
                     confinement=confinement)


def _plan_file(ref: PlanRef, repo: Path, base_commit: str, worktree: Path, scratch: Path) -> Path:
    """The plan as the base commit has it, written to `scratch` (under its own file name, which names the
    plan by default); the worktree's when the base commit has none (the change adds it)."""
    shown = git.command(["show", f"{base_commit}:{posixpath.normpath(ref.plan)}"], cwd=repo, check=False)
    if shown.returncode != 0:
        return worktree / ref.plan
    scratch.mkdir(parents=True, exist_ok=True)
    path = scratch / Path(ref.plan).name
    path.write_text(shown.stdout, encoding="utf-8")
    return path


def _plan(
    ref: PlanRef, path: Path, sandbox: SandboxInfo | None, backend: SandboxBackend | None, out_dir: Path,
    health: dict[str, str | None],
) -> SuiteResult:
    name = ref.name or Path(ref.plan).stem
    if sandbox is None:
        return SuiteResult(name=name, kind="plan", command=ref.plan, ran=False, error=_NO_SANDBOX)
    try:
        result = run_plan(path, sandbox=sandbox, backend=backend, out_dir=out_dir, health_paths=health)
    except ConfigError as exc:
        return SuiteResult(name=name, kind="plan", command=ref.plan, error=str(exc).replace(str(path), ref.plan))
    result = result.model_copy(update={"command": ref.plan})
    return result.model_copy(update={"name": ref.name}) if ref.name else result
