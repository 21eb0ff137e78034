"""The comparison: each sandbox result set against the base run, the same tests at the base commit.

- Every suite's full results at the base commit come from `base_results` (run once per base commit and
  suite config, shared by every run and iteration on that commit).
- Tests in files the change added or modified run again at the base commit with those files copied in,
  every iteration: a new test shows that it fails without the fix. Only those tests run.
- A test failing in the sandbox is rerun once there; a pass marks it flaky (shown, not blocking).
- The base run is given the sandbox's environment shape (`baseline_view`): a sandbox name, a route key
  that no sandbox owns (the router and Istio send unknown keys to the baseline, the shared services) and
  the same routing headers carrying that key, so a test can tell the sides apart only by how the services
  behave.
- Every plan runs in the base run too, with the same headers.
"""

from __future__ import annotations

import logging
import re
import secrets
import shutil
import string
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from agentloop import project_env
from agentloop.config import SuiteConfig
from agentloop.confine import Confinement
from agentloop.owned import kill_point, scratch_worktree
from agentloop.results import Comparison, SandboxInfo, SuiteResult
from agentloop.validation.suites import run_suite, suite_env, test_file

log = logging.getLogger(__name__)

_TEST_PATH = re.compile(r"(^|/)(tests?/|test_[^/]*$|[^/]*_test\.py$|conftest\.py$)")
_FAILING = ("failed", "error")
_HEX_TAIL = re.compile(r"[0-9a-f]{4,}$")
ABSENT = "absent"
FLAKY = "flaky"


@dataclass
class SuiteRun:
    """A suite's config with its result in the sandbox (plans have no config) and what the same tests did
    in the base run: `full` from the base commit's whole run (None when there is none), `changed` for the
    tests in files the change touched, run at the base commit with those files copied in."""

    result: SuiteResult
    config: SuiteConfig | None = None
    full: dict[str, str] | None = None  # test name -> outcome (or FLAKY) in the base run
    changed: dict[str, str] = field(default_factory=dict)


@dataclass
class Outcome:
    comparison: Comparison
    uncompared: list[str]  # fail in the sandbox, could not be compared with the base run
    own_failures: list[str]  # tests in files the change added or modified that fail in the sandbox


def label(run: SuiteRun, test: str) -> str:
    return f"{run.result.name}: {test}"


def baseline_view(sandbox: SandboxInfo) -> SandboxInfo:
    """The sandbox as the base run sees it: another sandbox's name and route key of the same shape, owned
    by no sandbox (so the router serves the baseline), and the same routing headers carrying that key; no
    forks."""
    key = _same_shape(sandbox.route_key)
    while key == sandbox.route_key:
        key = _same_shape(sandbox.route_key)
    headers = {name: value.replace(sandbox.route_key, key) if sandbox.route_key else value
               for name, value in sandbox.routing_headers.items()}
    tail = _HEX_TAIL.search(sandbox.name)
    name = sandbox.name[: tail.start()] + _same_shape(tail.group()) if tail else f"{sandbox.name}-{secrets.token_hex(3)}"
    return sandbox.model_copy(update={"name": name, "route_key": key, "routing_headers": headers, "forks": {},
                                      "link": None})


def _same_shape(text: str) -> str:
    """Random characters in `text`'s shape: hex for hex (loop's keys are), else letter for letter, digit
    for digit, anything else kept."""
    if not text:
        return secrets.token_hex(8)
    if all(c in "0123456789abcdef" for c in text):
        return "".join(secrets.choice("0123456789abcdef") for _ in text)
    return "".join(
        secrets.choice(string.digits) if c.isdigit() else
        secrets.choice(string.ascii_uppercase if c.isupper() else string.ascii_lowercase) if c.isalpha() else c
        for c in text
    )


def mark_flaky(runs: Sequence[SuiteRun], *, worktree: Path, sandbox: SandboxInfo | None, out_dir: Path,
               confinement: Confinement | None = None) -> None:
    """Rerun each suite's failures once in the sandbox; a test that then passes is flaky."""
    for run in runs:
        failing = [t.name for t in run.result.failed]
        if run.config is None or not failing or run.result.error:
            continue
        again = run_suite(
            run.config, cwd=worktree, env=suite_env(sandbox),
            out_dir=out_dir, label=f"{run.config.suite}.rerun", only=failing, secrets=_secrets(sandbox),
            confinement=confinement,
        )
        passed = {t.name for t in again.tests if t.outcome == "passed"}
        for test in run.result.tests:
            if test.name in passed and test.outcome in _FAILING:
                test.flaky = True


def changed_test_files(runs: Sequence[SuiteRun], changed: Sequence[str]) -> list[str]:
    """Changed files that hold tests: named as a test's file in a result, or shaped like a test file."""
    test_files = {test_file(t.name) for run in runs for t in run.result.tests}
    return [name for name in changed if name in test_files or _TEST_PATH.search(name)]


def run_changed_on_base(
    runs: Sequence[SuiteRun], *, worktree: Path, repo: Path, base_commit: str, view: SandboxInfo | None,
    changed_tests: Sequence[str], out_dir: Path, confinement: Confinement | None = None,
) -> None:
    """Fill in `run.changed`: the tests of the changed test files, run at the base commit with those files
    copied in (plain suites and sandbox suites alike; the latter against the baseline's services)."""
    wanted = {id(run): _in_changed_files(run, changed_tests) for run in runs}
    if not any(wanted.values()):
        return
    with base_worktree(repo, base_commit, copy_from=worktree, files=changed_tests, confinement=confinement) as tree:
        for run in runs:
            names = wanted[id(run)]
            if run.config is None or not names:
                continue
            result = run_suite(
                run.config, cwd=tree, env=suite_env(view), out_dir=out_dir, label=f"{run.config.suite}.changed",
                only=names, secrets=_secrets(view), confinement=confinement,
            )
            run.changed = {t.name: t.outcome for t in result.tests}
            for name in names:
                run.changed.setdefault(name, ABSENT)


def compare(runs: Sequence[SuiteRun], changed_tests: Sequence[str]) -> Outcome:
    outcome = Outcome(Comparison(), [], [])
    changed = set(changed_tests)
    for run in runs:
        for test in run.result.tests:
            name = label(run, test.name)
            own = test_file(test.name) in changed
            if own:
                before: str | None = run.changed.get(test.name, ABSENT)
                if before == ABSENT:
                    before = "failed"  # a test the change added cannot pass without the change
            else:
                before = run.full.get(test.name) if run.full is not None else None
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
                elif before == FLAKY:
                    outcome.comparison.flaky.append(name)  # flaky in the base run: no claim either way
                else:
                    outcome.uncompared.append(name)
            elif test.outcome == "passed" and run.result.error is None:  # a suite without a result proves nothing
                if before in _FAILING:
                    outcome.comparison.fixed.append(name)
                elif own and before == "passed":
                    outcome.comparison.not_reproducing.append(name)
    return outcome


def _in_changed_files(run: SuiteRun, changed_tests: Sequence[str]) -> list[str]:
    if run.config is None or (run.result.error and not run.result.tests):
        return []
    return [t.name for t in run.result.tests if test_file(t.name) in changed_tests]


@contextmanager
def base_worktree(repo: Path, base_commit: str, *, copy_from: Path | None = None,
                  files: Sequence[str] = (), confinement: Confinement | None = None) -> Iterator[Path]:
    """A temporary detached worktree of the user's repository `repo` at `base_commit`, with `files` of
    `copy_from` (the run's worktree) copied in, or removed where the change removed them. With
    `confinement`, the project's setup steps (its `project`) are brought in first (from the cache).
    It lives under loop's state dir as the run's (`agentloop.owned`): a killed run's is removed when it is
    resumed, or by `loop sandbox gc`."""
    # never the run's worktree: its `.git` is the agent's to rewrite
    with scratch_worktree(repo, base_commit, prefix="base-") as path:
        kill_point("comparison")  # tests: a `loop` killed with the worktree made
        if confinement is not None:
            project_env.prepare(path, repo=repo, confinement=confinement, share=True)
        for name in files if copy_from is not None else ():
            assert copy_from is not None
            _copy_in(copy_from / name, path / name)
        yield path


def _copy_in(source: Path, target: Path) -> None:
    if target.is_symlink() or target.is_file():
        target.unlink()
    if source.is_file() or source.is_symlink():
        target.parent.mkdir(parents=True, exist_ok=True)
        # a link is copied as a link: following it would hand a host file loop can read to the suite
        shutil.copy2(source, target, follow_symlinks=False)


def _secrets(sandbox: SandboxInfo | None) -> list[str]:
    return [sandbox.route_key] if sandbox is not None else []
