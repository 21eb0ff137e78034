"""Baseline comparison: what the sandbox's failures (and the change's own tests) do without the change.

- A test failing in the sandbox is rerun once there; a pass marks it flaky (shown, not blocking).
- Suites with `sandbox: true` run the same tests from the run's worktree with the baseline's
  environment: the same service URLs and no route key, so the router serves the baseline.
- Plain suites run in a temporary detached worktree at the base commit, with the run's changed test
  files copied in, so a test the change added shows whether it fails without the fix.
- Every plan runs on the baseline too (no routing headers).
"""

from __future__ import annotations

import logging
import re
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from agentloop import git
from agentloop.config import SuiteConfig
from agentloop.records import Comparison, SandboxInfo, SuiteResult
from agentloop.validation.suites import run_suite, suite_env, test_file

log = logging.getLogger(__name__)

_TEST_PATH = re.compile(r"(^|/)(tests?/|test_[^/]*$|[^/]*_test\.py$|conftest\.py$)")
_FAILING = ("failed", "error")
ABSENT = "absent"


@dataclass
class SuiteRun:
    """A suite's config with its result in the sandbox (plans have no config)."""

    result: SuiteResult
    config: SuiteConfig | None = None
    baseline: dict[str, str] = field(default_factory=dict)  # test name -> outcome on the baseline


@dataclass
class Outcome:
    comparison: Comparison
    uncompared: list[str]  # fail in the sandbox, could not be run on the baseline
    own_failures: list[str]  # tests in files the change added or modified that fail in the sandbox


def label(run: SuiteRun, test: str) -> str:
    return f"{run.result.name}: {test}"


def mark_flaky(runs: Sequence[SuiteRun], *, worktree: Path, sandbox: SandboxInfo | None, out_dir: Path) -> None:
    """Rerun each suite's failures once in the sandbox; a test that then passes is flaky."""
    for run in runs:
        failing = [t.name for t in run.result.failed]
        if run.config is None or not failing or run.result.error:
            continue
        again = run_suite(
            run.config, cwd=worktree, env=suite_env(sandbox),
            out_dir=out_dir, label=f"{run.config.suite}.rerun", only=failing, secrets=_secrets(sandbox),
        )
        passed = {t.name for t in again.tests if t.outcome == "passed"}
        for test in run.result.tests:
            if test.name in passed and test.outcome in _FAILING:
                test.flaky = True


def changed_test_files(runs: Sequence[SuiteRun], changed: Sequence[str]) -> list[str]:
    """Changed files that hold tests: named as a test's file in a result, or shaped like a test file."""
    test_files = {test_file(t.name) for run in runs for t in run.result.tests}
    return [name for name in changed if name in test_files or _TEST_PATH.search(name)]


def run_on_baseline(
    runs: Sequence[SuiteRun], *, worktree: Path, base_commit: str, sandbox: SandboxInfo | None,
    changed_tests: Sequence[str], out_dir: Path,
) -> None:
    """Fill in `run.baseline` for each suite's failures and changed tests (plans are run by the caller)."""
    plain = [run for run in runs if run.config is not None and not run.config.sandbox and _wanted(run, changed_tests)]
    with _base_worktree(worktree, base_commit, changed_tests, needed=bool(plain)) as base_tree:
        for run in runs:
            wanted = _wanted(run, changed_tests)
            if run.config is None or not wanted:
                continue
            on_sandbox = run.config.sandbox
            if not on_sandbox and base_tree is None:
                continue
            result = run_suite(
                run.config, cwd=worktree if on_sandbox else base_tree,  # type: ignore[arg-type]
                env=suite_env(sandbox, baseline=True), out_dir=out_dir,
                label=run.config.suite, only=wanted, secrets=_secrets(sandbox),
            )
            run.baseline = {t.name: t.outcome for t in result.tests}
            for name in wanted:
                run.baseline.setdefault(name, ABSENT)


def compare(runs: Sequence[SuiteRun], changed_tests: Sequence[str]) -> Outcome:
    outcome = Outcome(Comparison(), [], [])
    changed = set(changed_tests)
    for run in runs:
        for test in run.result.tests:
            name = label(run, test.name)
            own = test_file(test.name) in changed
            before = run.baseline.get(test.name)
            if before == ABSENT and own:
                before = "failed"  # a test the change added cannot pass without the change
            if test.flaky:
                outcome.comparison.flaky.append(name)
                continue
            if test.outcome in _FAILING:
                if own:
                    outcome.own_failures.append(name)
                if before == "passed":
                    outcome.comparison.regressions.append(name)
                elif before in _FAILING:
                    outcome.comparison.preexisting.append(name)
                else:
                    outcome.uncompared.append(name)
            elif test.outcome == "passed" and before in _FAILING:
                outcome.comparison.fixed.append(name)
    return outcome


def _wanted(run: SuiteRun, changed_tests: Sequence[str]) -> list[str]:
    failing = [t.name for t in run.result.failed]
    if run.result.error and not run.result.tests:
        return []
    own = [t.name for t in run.result.tests if test_file(t.name) in changed_tests and t.name not in failing]
    return failing + own


@contextmanager
def _base_worktree(worktree: Path, base_commit: str, changed_tests: Sequence[str], *, needed: bool) -> Iterator[Path | None]:
    if not needed:
        yield None
        return
    repo = git.open_repo(worktree)
    root = Path(tempfile.mkdtemp(prefix="loop-baseline-"))
    path = root / "tree"
    try:
        git.add_worktree(repo, path, branch=None, commit=base_commit)
        for name in changed_tests:
            source = worktree / name
            if source.is_file():
                (path / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, path / name)
        yield path
    finally:
        git.remove_worktree(repo, path)
        shutil.rmtree(root, ignore_errors=True)


def _secrets(sandbox: SandboxInfo | None) -> list[str]:
    return [sandbox.route_key] if sandbox is not None else []
