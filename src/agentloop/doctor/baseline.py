"""The checks of `loop doctor` that run the repository's code: each service starting and becoming ready on
the baseline, then each suite of `validate` at the base commit with its counts (suites with `sandbox: true`
against the baseline's services, through the router, as a run's base run sees them); plans are only
loaded. Services and suites run in the jail (`agentloop.sandbox`, `agentloop.validation.suites`).

The project's `setup:` steps run first, in the temporary worktree at the base commit the suites use (a
checkout no agent touched, so its result goes to the setup cache and the baseline restores it from there).

What doctor starts it stops: the baseline only when it was not already up (a baseline another `loop`
command started is left running), its sandbox with no forks, and the temporary worktree at the base
commit. Each suite's output and report stay in `<state dir>/doctor/` for a look at what failed.
"""

from __future__ import annotations

import logging
import re
import secrets
import shutil
import tempfile
from collections.abc import Collection, Iterator
from contextlib import ExitStack
from pathlib import Path

from agentloop import git, project_env
from agentloop.config import LoopConfig, PlanRef, ServiceConfig, SuiteConfig
from agentloop.confine import Confinement, project_confinement
from agentloop.doctor.checks import Check
from agentloop.errors import ConfigError, DeployError, LoopError
from agentloop.paths import state_dir
from agentloop.plan_file import load_plan
from agentloop.project_env import ProjectEnv
from agentloop.results import SandboxInfo, SuiteResult
from agentloop.sandbox.base import SandboxBackend, baseline_held
from agentloop.sandbox.factory import open_backend
from agentloop.validation.comparison import base_worktree, baseline_view
from agentloop.validation.suites import is_pytest, run_suite, safe_name, suite_env

log = logging.getLogger(__name__)

OUTPUT_DIR = "doctor"
_SHOWN_FAILURES = 3
_STAMP = re.compile(r"^\d{4}-\d\d-\d\dT[\d:.]+(?:[+-]\d\d:\d\d|Z)?\s")  # the log's per-line time stamp


def baseline_checks(root: Path, config: LoopConfig, *, base: str, secrets: Collection[str]) -> Iterator[Check]:
    """One line for the setup steps (when there are any), one per service, then one per `validate` entry;
    stops what it started when done (or stopped)."""
    jail = project_confinement(config)
    out_dir = state_dir(root) / OUTPUT_DIR
    shutil.rmtree(out_dir, ignore_errors=True)  # what is there is the previous doctor's
    with ExitStack() as cleanup:
        tree = _Tree(root, base, jail, cleanup)
        if jail.project.steps:
            setup = _setup(tree)
            yield setup
            if setup.status == "fail":
                yield from skipped(root, config, "the setup steps failed (see setup)", base=base, setup=False)
                return
        view: SandboxInfo | None = None
        no_view = "needs a sandbox, and loop.yaml has no services"  # a mistake in loop.yaml, not a skip
        if config.services:
            checks, backend = _services(root, config, cleanup)
            yield from checks
            if backend is None:
                no_view = "needs the baseline's services, which did not come up (see the services above)"
            elif any(isinstance(e, SuiteConfig) and e.sandbox for e in config.validate_):
                try:
                    view = _base_run_view(backend, cleanup)
                except LoopError as exc:
                    no_view = f"no sandbox could be made on the baseline: {exc}"
        else:
            yield Check(check="services", status="skip", detail="skipped: loop.yaml has no services")
        for index, entry in enumerate(config.validate_):
            if isinstance(entry, PlanRef):
                yield plan_check(root, config, index, base=base)
            elif entry.sandbox and view is None and not config.services:
                yield Check(check=f"suite {entry.suite}", status="fail", detail=f"`sandbox: true` {no_view}",
                            fix="add the services it tests to loop.yaml, or set `sandbox: false` if it needs none")
            elif entry.sandbox and view is None:
                yield Check(check=f"suite {entry.suite}", status="skip", detail=f"skipped: it {no_view}")
            else:
                result = run_suite(entry, cwd=tree.get(), env=suite_env(view), out_dir=out_dir, secrets=secrets,
                                   confinement=jail)
                yield suite_check(entry, result, out_dir / f"{safe_name(entry.suite)}.log", config.base_branch)


def skipped(root: Path, config: LoopConfig, reason: str, *, base: str | None, setup: bool = True) -> Iterator[Check]:
    """The same lines, each skipped for `reason` (plans are still loaded: that runs nothing)."""
    names = ["setup"] if setup and ProjectEnv.of(config).steps else []
    names += [f"service {name}" for name in config.services] or ["services"]
    for name in names:
        yield Check(check=name, status="skip", detail=f"skipped: {reason}")
    for index, entry in enumerate(config.validate_):
        if isinstance(entry, PlanRef):
            yield plan_check(root, config, index, base=base)
        else:
            yield Check(check=f"suite {entry.suite}", status="skip", detail=f"skipped: {reason}")


def _setup(tree: _Tree) -> Check:
    """The setup steps in a fresh checkout of the base commit: each ran, restored from the cache, or failed."""
    try:
        tree.get()
    except DeployError as exc:  # SetupFailed: the step's output tail follows its first line
        first, _, tail = str(exc).partition("\n")
        if tree.made is not None:  # a temporary checkout, gone when doctor is done: name what it was
            first = first.replace(str(tree.made), "a fresh checkout of the base commit")
        last = _last_line(tail or exc.log_tail)
        return Check(check="setup", status="fail", detail=first + (f" {last}" if last else ""),
                     fix="run the step by hand in a fresh clone of the base branch to see why; its `run` installs "
                         "the project's dependencies there, and `creates` lists what it makes")
    done = ", ".join(f"{step.name} {step.how}" + (f" in {step.seconds:.1f}s" if step.how == "ran" else "")
                     for step in tree.steps)
    return Check(check="setup", status="ok", detail=f"{done} (in a fresh checkout of the base commit)")


def _services(root: Path, config: LoopConfig, cleanup: ExitStack) -> tuple[list[Check], SandboxBackend | None]:
    """Start the baseline unless it is up; the lines of its services, and the backend when they are ready."""
    try:
        backend = open_backend(root, config)
        started = cleanup.enter_context(baseline_held(backend))  # stopped when doctor is done, if started here
    except DeployError as exc:
        _stop(backend)  # the failed start stopped its processes; this removes its worktree
        return _start_failed(config, exc), None
    except LoopError as exc:
        return [Check(check="services", status="fail", detail=f"the baseline did not start: {exc}",
                      fix="see the message; `loop sandbox baseline up` shows the same")], None
    status = backend.baseline_status()
    running = status.get("services")
    described = running if isinstance(running, dict) else {}
    commit = str(status.get("commit") or "")[:12]
    checks = []
    for name, service in config.services.items():
        entry = described.get(name) or {}
        where = entry.get("upstream") or "its port"
        detail = (f"started on a fresh baseline and ready at {where} ({_health(service)})" if started else
                  f"ready at {where} on the baseline already up at {commit} (another loop command's; left running)")
        checks.append(Check(check=f"service {name}", status="ok", detail=detail))
    return checks, backend


def _start_failed(config: LoopConfig, exc: DeployError) -> list[Check]:
    checks = []
    which = f" (service {exc.service!r} failed)" if exc.service in config.services else ""
    for name, service in config.services.items():
        if name != exc.service:
            checks.append(Check(check=f"service {name}", status="skip",
                                detail=f"skipped: the baseline did not come up{which}"))
            continue
        last = _last_line(exc.log_tail)
        detail = str(exc).removeprefix("baseline: ") + (f"; its last log line: {last}" if last else "")
        if exc.process_exit_code is not None:
            fix = (f"`services.{name}.run` must keep running: read its log, or run it by hand in a fresh clone (a "
                   "free port in place of {port}) to see why it exits")
        else:
            fix = (f"`services.{name}.run` must listen on {{port}} (also $PORT) and be ready ({_health(service)}) "
                   f"within ready_timeout ({service.ready_timeout:g}s): check the command and `health`, or raise "
                   "`ready_timeout`")
        checks.append(Check(check=f"service {name}", status="fail", detail=detail, fix=fix))
    if exc.service not in config.services:  # e.g. a setup step that failed in the baseline's checkout
        first = str(exc).partition("\n")[0]
        checks.insert(0, Check(check="services", status="fail", detail=f"the baseline did not come up: {first}",
                               fix="see the message and the baseline's logs (`loop sandbox logs baseline SERVICE`)"))
    return checks


def _base_run_view(backend: SandboxBackend, cleanup: ExitStack) -> SandboxInfo:
    """What a run's base run gives sandbox suites: a sandbox with no forks, seen under a route key no
    sandbox owns (`baseline_view`), so the router serves every service from the baseline."""
    name = f"doctor-{secrets.token_hex(4)}"
    cleanup.callback(backend.remove, name)
    return baseline_view(backend.create(name, {}))


def suite_check(suite: SuiteConfig, result: SuiteResult, log_path: Path, branch: str) -> Check:
    """A suite's line: its counts at the base commit, failing when it does not run to a clean result."""
    name = f"suite {suite.suite}"
    tally = _tally(result)
    output = f"its output: {log_path}"
    if result.error:
        detail = f"{result.error} ({tally})" if result.tests else result.error
        return Check(check=name, status="fail", detail=detail, fix=_error_fix(suite, result.error, output))
    if not result.tests:
        return Check(check=name, status="fail", detail=f"ran no test (exit {result.exit_code})",
                     fix=f"check that `run` of suite {suite.suite!r} selects the tests (the path, -k, markers); "
                         f"{output}")
    failing = result.failed
    if failing:
        names = ", ".join(t.name for t in failing[:_SHOWN_FAILURES])
        more = f" (+{len(failing) - _SHOWN_FAILURES} more)" if len(failing) > _SHOWN_FAILURES else ""
        # Nothing but errors (imports, collection) is an environment that does not work; tests that fail
        # are a bug waiting for its fix (a run proves one by turning them green, and holds the others
        # to how they fail on the base branch).
        broken = len(failing) == len(result.tests) and all(t.outcome == "error" for t in failing)
        return Check(check=name, status="fail" if broken else "warn",
                     detail=f"{tally} on {branch}; failing: {names}{more}",
                     fix=(f"every test errors before any change: are the project's dependencies installed for the "
                          f"interpreter the suite runs (`setup:`, `path:`)? {output}") if broken else
                         (f"these fail before any change: a run that turns them green proves its fix, the others "
                          f"are held to how they fail on {branch}; {output}"))
    whole = len(result.tests) == 1 and result.tests[0].name == suite.suite and not is_pytest(suite.run)
    note = " (no JUnit report: the suite counts as one test; name its report with `junit:`)" if whole else ""
    return Check(check=name, status="ok", detail=f"{tally} on {branch}{note}")


def plan_check(root: Path, config: LoopConfig, index: int, *, base: str | None) -> Check:
    """A plan of `validate` loads as the base commit has it (what a run reads), else as the checkout has it."""
    ref = config.validate_[index]
    assert isinstance(ref, PlanRef)
    name = f"plan {ref.name or Path(ref.plan).stem}"
    shown = git.command(["show", f"{base}:{ref.plan}"], cwd=root, check=False) if base else None
    if shown is not None and shown.returncode == 0:
        text, where = shown.stdout, f"as committed at {base[:12] if base else ''}"
    elif (root / ref.plan).is_file():
        text, where = (root / ref.plan).read_text(encoding="utf-8", errors="replace"), "in the checkout"
    else:
        return Check(check=name, status="warn", detail=f"{ref.plan} is not on {config.base_branch} nor in the "
                     "checkout: a run fails it unless its change adds the plan",
                     fix=f"add {ref.plan}, or remove `validate[{index}]` from loop.yaml")
    with tempfile.TemporaryDirectory(prefix="loop-doctor-plan-") as scratch:
        path = Path(scratch) / Path(ref.plan).name
        path.write_text(text, encoding="utf-8")
        try:
            plan = load_plan(path)
        except ConfigError as exc:
            return Check(check=name, status="fail", detail=str(exc).replace(str(path), ref.plan),
                         fix=f"correct {ref.plan} (see README 'Plans')")
    return Check(check=name, status="ok", detail=f"{ref.plan} loads ({where}): {len(plan.steps)} step(s), "
                 "run against each sandbox")


class _Tree:
    """The base commit's temporary worktree with the project's setup done, made when first needed."""

    def __init__(self, root: Path, base: str, jail: Confinement, cleanup: ExitStack) -> None:
        self._root, self._base, self._jail, self._cleanup = root, base, jail, cleanup
        self._path: Path | None = None
        self.made: Path | None = None
        self.steps: list[project_env.StepDone] = []

    def get(self) -> Path:
        if self._path is None:
            path = self.made = self._cleanup.enter_context(base_worktree(self._root, self._base))
            # shared: a checkout of the base as loop made it, which no agent has touched
            self.steps = project_env.prepare(path, repo=self._root, confinement=self._jail, share=True)
            self._path = path
        return self._path


def _stop(backend: SandboxBackend) -> None:
    try:
        backend.baseline_down()
    except LoopError as exc:
        log.warning("could not remove the baseline's worktree: %s", exc)


def _health(service: ServiceConfig) -> str:
    """How readiness is judged, for the line: an HTTP path answered 2xx, or a port accepting connections."""
    return f"GET {service.health} answered 2xx" if service.health else "accepting connections"


def _tally(result: SuiteResult) -> str:
    counts = result.counts()
    parts = [f"{counts['passed']} passed"]
    parts += [f"{counts[kind]} {kind if kind != 'error' else 'errors'}" for kind in ("failed", "error", "skipped")
              if counts[kind]]
    return ", ".join(parts) + f" in {result.duration:.1f}s"


def _error_fix(suite: SuiteConfig, error: str, output: str) -> str:
    if error.startswith("timed out"):
        return f"make suite {suite.suite!r} finish sooner, or raise its `timeout:` in loop.yaml; {output}"
    if "no JUnit report" in error:
        return (f"suite {suite.suite!r} failed before it reported: run its command by hand at the base commit to see "
                f"why; runners other than pytest name their report with `junit:`; {output}")
    return f"see {output}"


def _last_line(tail: str) -> str:
    """The last line the service itself wrote, without the log's time stamp (loop's own lines left out)."""
    lines = [_STAMP.sub("", line).strip() for line in tail.splitlines()]
    lines = [line for line in lines if line and not line.startswith("[loop]")]
    return lines[-1][:300] if lines else ""
