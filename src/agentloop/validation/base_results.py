"""Base results per base commit: the base run of each suite, in full at the base commit, once per (base
commit, suite config); every run and iteration on that commit reads the result.

Layout under the state dir: `base-results/<commit>/<config hash>/` holds `results.json` (the suite's
result, when it was computed, the sandbox name and route key the base run was given), `full.xml` and
`full.log` (the runner's report and output) and `full.rerun.*` (the failures rerun once: a test that then
passes is flaky in the base run and proves nothing either way). Older versions of loop kept them
under `baseline-results/` (`OLD_CACHE_DIR`): never read again, only removed by `loop sandbox gc`.

Concurrent runs (a batch runs separate processes) compute an entry once: whoever holds the exclusive
`fcntl` lock on `<config hash>.lock` reads or computes the entry; the others wait for the lock, then read.
A run that did not reach a result (a timeout, a crash, no report) is not kept: the next run tries again.

Suites run in a detached worktree of the user's repository at the base commit (never the run's worktree);
suites with `sandbox: true` get the base run's environment (`baseline_view`), so the router serves them
the baseline's services.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

from pydantic import BaseModel, ValidationError

from agentloop.config import SuiteConfig
from agentloop.confine import Confinement
from agentloop.paths import state_dir
from agentloop.project_env import ProjectEnv
from agentloop.results import BaseRunSource, SandboxInfo, SuiteResult
from agentloop.validation.comparison import FLAKY, base_worktree, baseline_view
from agentloop.validation.suites import run_suite, safe_name, suite_env

log = logging.getLogger(__name__)

CACHE_DIR = "base-results"
OLD_CACHE_DIR = "baseline-results"  # where older versions of loop kept it
_FORMAT = 1  # bump when what a cached result means changes: older entries are then computed again
_RESULTS = "results.json"
_COMMIT = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
_LOCK_POLL = 0.2


class _Entry(BaseModel):
    format: int
    source: BaseRunSource
    result: SuiteResult
    sandbox_name: str | None = None
    route_key: str | None = None


@dataclass
class FullBaseRun:
    """One suite's full run at the base commit and where its artifacts are."""

    result: SuiteResult
    source: BaseRunSource
    folder: Path

    def outcomes(self) -> dict[str, str] | None:
        """Test name -> outcome (FLAKY for a test that failed, then passed on its rerun); None when the run
        gave no result to compare with."""
        if self.result.error is not None or not self.result.ran:
            return None
        return {t.name: FLAKY if t.flaky else t.outcome for t in self.result.tests}


def config_hash(suite: SuiteConfig, project: ProjectEnv | None = None) -> str:
    """What identifies a suite's configuration in the cache: everything loop.yaml says about it and the
    project's environment (`path`, `env`, setup steps) it runs in."""
    project = project or ProjectEnv()
    environment = {"path": list(project.path), "env": dict(project.env),
                   "setup": [[item.name, item.cwd, item.step.model_dump(mode="json")] for item in project.steps]}
    payload = json.dumps({"format": _FORMAT, "suite": suite.model_dump(mode="json"), "project": environment},
                         sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def full_base_runs(
    suites: Sequence[SuiteConfig], *, repo: Path, base_commit: str, sandbox: SandboxInfo | None,
    confinement: Confinement, out_dir: Path,
) -> dict[str, FullBaseRun]:
    """Each suite's full result at `base_commit` (suites that need a sandbox only when there is one), read
    from the cache or run now; its report and output are copied to `out_dir` as `<suite>.full.*`."""
    if not _COMMIT.fullmatch(base_commit):
        raise ValueError(f"base commit {base_commit!r} is not a full commit id")
    root = state_dir(repo) / CACHE_DIR / base_commit
    found: dict[str, FullBaseRun] = {}
    with _LazyTree(repo, base_commit, confinement) as tree:
        for suite in suites:
            if suite.sandbox and sandbox is None:
                continue
            full = _one(suite, root=root, tree=tree, sandbox=sandbox, confinement=confinement, commit=base_commit)
            _copy_artifacts(full.folder, out_dir, safe_name(f"{suite.suite}.full"))
            if full.source.error is not None:
                shutil.rmtree(full.folder, ignore_errors=True)  # not kept: the next run computes it again
            found[suite.suite] = full
    return found


def _one(suite: SuiteConfig, *, root: Path, tree: _LazyTree, sandbox: SandboxInfo | None,
         confinement: Confinement, commit: str) -> FullBaseRun:
    digest = config_hash(suite, confinement.project)
    entry = root / digest
    root.mkdir(parents=True, exist_ok=True)
    with _locked(root / f"{digest}.lock", suite.suite):
        cached = _read(entry)
        if cached is not None:
            return cached
        shutil.rmtree(entry, ignore_errors=True)  # unreadable or from an older format
        staging = Path(tempfile.mkdtemp(prefix=f".{digest}-", dir=root))
        view = baseline_view(sandbox) if sandbox is not None else None
        started = time.time()
        log.info("running suite %s in full at the base commit %s (once for every run on it)", suite.suite, commit[:12])
        result = _run_full(suite, tree.get(), view, confinement, staging)
        error = result.error if result.ran else (result.error or "not run")
        source = BaseRunSource(suite=suite.suite, commit=commit, config_hash=digest, cached=False,
                                computed_at=started, tests=len(result.tests), error=error)
        record = _Entry(format=_FORMAT, source=source, result=result,
                        sandbox_name=view.name if view else None, route_key=view.route_key if view else None)
        (staging / _RESULTS).write_text(record.model_dump_json(indent=1), encoding="utf-8")
        if error is not None:
            log.warning("suite %s did not run to a result at the base commit: %s", suite.suite, error)
            return FullBaseRun(result, source, staging)
        os.replace(staging, entry)
        return FullBaseRun(result, source, entry)


def _run_full(suite: SuiteConfig, tree: Path, view: SandboxInfo | None, confinement: Confinement,
              out_dir: Path) -> SuiteResult:
    env = suite_env(view)
    result = run_suite(suite, cwd=tree, env=env, out_dir=out_dir, label="full", confinement=confinement)
    failing = [t.name for t in result.failed]
    if failing and result.error is None:
        again = run_suite(suite, cwd=tree, env=env, out_dir=out_dir, label="full.rerun", only=failing,
                          confinement=confinement)
        passed = {t.name for t in again.tests if t.outcome == "passed"}
        for test in result.tests:
            if test.name in passed and test.name in failing:
                test.flaky = True
    return result


def _read(entry: Path) -> FullBaseRun | None:
    path = entry / _RESULTS
    if not path.is_file():
        return None
    try:
        record = _Entry.model_validate_json(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, ValidationError) as exc:
        log.warning("%s: unreadable cached base result (%s); running the suite again", path, exc)
        return None
    if record.format != _FORMAT:
        return None
    return FullBaseRun(record.result, record.source.model_copy(update={"cached": True}), entry)


def _copy_artifacts(folder: Path, out_dir: Path, stem: str) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    for source in sorted(folder.glob("full*")):
        if source.is_file() and not source.is_symlink():
            shutil.copyfile(source, out_dir / (stem + source.name[len("full"):]))


@contextmanager
def _locked(path: Path, suite: str) -> Iterator[None]:
    """Hold an exclusive lock on `path`; released by the kernel when this process dies. Polled, so that a
    Ctrl-C or a stop request ends the wait."""
    with open(path, "a+b") as handle:
        waited = False
        while True:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not waited:
                    log.info("waiting for another run computing the base results of suite %s", suite)
                    waited = True
                time.sleep(_LOCK_POLL)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


class _LazyTree:
    """The base commit's worktree, made on first use (a cache hit needs none) and removed at the end."""

    def __init__(self, repo: Path, base_commit: str, confinement: Confinement) -> None:
        self._repo, self._commit, self._confinement = repo, base_commit, confinement
        self._stack = ExitStack()
        self._path: Path | None = None

    def get(self) -> Path:
        if self._path is None:
            tree = base_worktree(self._repo, self._commit, confinement=self._confinement)
            self._path = self._stack.enter_context(tree)
        return self._path

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self._stack.close()
