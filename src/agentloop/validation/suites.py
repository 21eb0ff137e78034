"""Suites: a test command run in the worktree with the sandbox in its environment; results read
from JUnit XML, one `TestCaseResult` per test.

pytest commands get `--junitxml` added (with `junit_family=xunit1`, whose `file` attribute lets a
failing test be rerun by its node id), also after `cd dir &&`, `VAR=1` or `env X=1` (see
`pytest_command`); other runners name their report with `junit:`. A runner with
no report still gives one result: the suite itself, passed or failed by its exit code.
"""

from __future__ import annotations

import logging
import re
import shlex
import tempfile
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from junitparser import JUnitXml, TestCase, TestSuite
from junitparser.junitparser import JUnitXmlError

from agentloop.config import PolicyConfig, SuiteConfig
from agentloop.confine import Confinement
from agentloop.owned import kill_point
from agentloop.redact import redact
from agentloop.results import SandboxInfo, SuiteResult, TestCaseResult
from agentloop.sandbox.client import client_env
from agentloop.validation import pytest_command

log = logging.getLogger(__name__)

TAIL_CHARS = 3000
_MESSAGE_CHARS = 2000
_SHELL_SYNTAX = re.compile(r"[;&|<>`$()]")


def suite_env(sandbox: SandboxInfo | None) -> dict[str, str]:
    """What a suite is given on top of the jail's own environment (PATH, HOME, locale): the sandbox's
    addresses and routing. The base run passes a view of the baseline shaped like a sandbox (its own name
    and a route key no sandbox owns; see `comparison.baseline_view`), so a test sees the same variables
    on both sides. Nothing of loop's own environment is passed on."""
    env = {
        # Caches written into the worktree would end up in the pull request.
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTEST_ADDOPTS": "-p no:cacheprovider",
    }
    return env if sandbox is None else {**env, **client_env(sandbox)}


def is_pytest(command: str) -> bool:
    return pytest_command.recognise(command) is not None


@dataclass(frozen=True)
class _Outcome:
    exit_code: int | None
    output: str
    timed_out: bool
    duration: float


def run_suite(
    suite: SuiteConfig,
    *,
    cwd: Path,
    env: Mapping[str, str],
    out_dir: Path,
    label: str = "",
    only: Sequence[str] | None = None,
    secrets: Collection[str] = (),
    confinement: Confinement | None = None,
) -> SuiteResult:
    """Run `suite` in `cwd`, confined (see `agentloop.confine`); write `<label>.xml` and `<label>.log`
    into `out_dir`. `env` is what the suite gets on top of the jail's own environment (`suite_env`),
    after the project's `env:` and the suite's own; PATH starts with the project's `path:`.

    `only` names tests (node ids) to run instead of the whole suite where the runner allows it
    (pytest); other runners run whole and their results are filtered to those names.
    """
    label = label or suite.suite
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{safe_name(label)}.xml").unlink(missing_ok=True)
    confinement = confinement or Confinement(PolicyConfig())
    with tempfile.TemporaryDirectory(prefix="loop-suite-") as scratch:
        # The runner writes its report outside the worktree (a report left there would be committed).
        reports = Path(scratch) / "reports"
        reports.mkdir()
        report = reports / "junit.xml"
        command = suite.run
        if is_pytest(command):
            if only is not None:
                command = _select(command, only, cwd)
            command += f" -o junit_family=xunit1 --junitxml={shlex.quote(str(report))}"
        elif suite.junit:
            report = cwd / suite.junit
            report.unlink(missing_ok=True)
        project = confinement.project
        outcome = _run(command, cwd=cwd, env=project.variables(suite.env, env), timeout=suite.timeout,
                       confinement=confinement, writable=[cwd, reports], home=Path(scratch) / "home",
                       path_first=project.path_first(cwd))
        return _result(suite, label, command, outcome, report, cwd=cwd, out_dir=out_dir, only=only,
                       secrets=secrets)


def _result(
    suite: SuiteConfig, label: str, command: str, outcome: _Outcome, report: Path, *, cwd: Path, out_dir: Path,
    only: Sequence[str] | None, secrets: Collection[str],
) -> SuiteResult:
    output = redact(outcome.output, extra=secrets)
    (out_dir / f"{safe_name(label)}.log").write_text(f"$ {command}\n{output}", encoding="utf-8")
    result = SuiteResult(
        name=suite.suite, command=command, exit_code=outcome.exit_code, duration=round(outcome.duration, 3),
        output_tail=_tail(output),
    )
    if outcome.timed_out:
        result.error = f"timed out after {suite.timeout:g}s (raise `timeout:` for suite {suite.suite!r} in loop.yaml)"
    tests = _read_report(report, secrets) if report.is_file() else None
    recognised = pytest_command.recognise(command)
    if tests is not None and recognised is not None:  # after `cd sub &&`, names are relative to sub
        for test in tests:
            test.name = pytest_command.repo_relative(test.name, recognised.directory, cwd)
    if report.is_file():
        # the report holds failure messages and captured output: kept with secrets masked, like the log
        xml = report.read_text(encoding="utf-8", errors="replace")
        (out_dir / f"{safe_name(label)}.xml").write_text(redact(xml, extra=secrets), encoding="utf-8")
        if cwd in report.parents:
            report.unlink()  # a report left in the worktree would be committed with the change
    if tests is None:
        tests = [_whole_suite_result(suite, outcome, result.output_tail)]
        if outcome.exit_code != 0 and result.error is None:
            where = f" at {suite.junit}" if suite.junit else ""
            result.error = f"exited {outcome.exit_code} with no JUnit report{where}"
    elif result.error is None:
        result.error = _disagreement(outcome.exit_code, tests, pytest=is_pytest(command))
    if only is not None:
        wanted = set(only)
        tests = [t for t in tests if t.name in wanted or _file_of(t.name) in wanted]
    result.tests = tests
    return result


def _disagreement(exit_code: int | None, tests: Sequence[TestCaseResult], *, pytest: bool) -> str | None:
    """Why a report cannot be believed: the runner failed while the report says no test did (what a
    conftest or plugin that rewrites outcomes leaves behind). pytest's 5 means it collected no test."""
    if not exit_code or any(t.outcome in ("failed", "error") for t in tests):
        return None
    if pytest and exit_code == 5 and not any(t.outcome == "passed" for t in tests):
        return None
    passed = sum(1 for t in tests if t.outcome == "passed")
    return (f"exited {exit_code} while its JUnit report says no test failed ({passed} passed): the runner and its "
            "report disagree, so neither is believed (does a conftest or plugin rewrite outcomes?)")


def test_file(name: str) -> str:
    """The file of a test named by node id (`path::test`), or "" when the runner gave none."""
    return _file_of(name) if "::" in name else ""


def _file_of(name: str) -> str:
    return name.split("::", 1)[0]


def _select(command: str, only: Sequence[str], cwd: Path) -> str:
    """The pytest command narrowed to `only`: positional paths holding those tests are replaced by
    the node ids; options (`-c file`, `-k expr`) are kept."""
    if _SHELL_SYNTAX.search(command):
        return command
    files = {_file_of(name) for name in only}
    kept = [
        token for token in shlex.split(command)
        if token.startswith("-") or not (cwd / token).exists() or not any(_within(f, token) for f in files)
    ]
    return shlex.join([*kept, *only])


def _within(path: str, root: str) -> bool:
    root = root.rstrip("/")
    return root in ("", ".") or path == root or path.startswith(root + "/")


def _run(command: str, *, cwd: Path, env: Mapping[str, str], timeout: float, confinement: Confinement,
         writable: Sequence[Path], home: Path, path_first: Sequence[Path]) -> _Outcome:
    # The jail kills the runner's whole process tree on a timeout, a Ctrl-C or a stop request.
    limits = confinement.limits
    finished = confinement.run(
        ["/bin/sh", "-c", command], cwd=cwd, writable=writable, home=home, network=True, timeout=timeout,
        env=confinement.env(env, home=home, path_first=path_first),
        output_limit=limits.output_mb * 1024 * 1024, watch_disk=cwd, on_start=_suite_started,
    )
    output = finished.output
    if finished.stopped_for and not finished.timed_out:
        output += f"\n[loop] the suite was {finished.stopped_for}"
    return _Outcome(exit_code=finished.exit_code, output=output, timed_out=finished.timed_out,
                    duration=finished.duration)


def _suite_started() -> None:
    kill_point("suite")  # tests: a `loop` killed while its suite runs (see agentloop.owned)


def _read_report(path: Path, secrets: Collection[str]) -> list[TestCaseResult] | None:
    try:
        xml = JUnitXml.fromfile(str(path))
    except (JUnitXmlError, OSError, SyntaxError) as exc:  # junitparser raises lxml/etree parse errors
        log.warning("unreadable JUnit report %s: %s", path, exc)
        return None
    suites = [xml] if isinstance(xml, TestSuite) else list(xml)
    return [_case_result(case, secrets) for suite in suites for case in suite]


def _case_result(case: TestCase, secrets: Collection[str]) -> TestCaseResult:
    outcome = "passed"
    message = ""
    for item in case.result:
        kind = type(item).__name__.lower()
        outcome = "error" if kind == "error" else "skipped" if kind == "skipped" else "failed"
        message = "\n".join(part for part in (item.message, item.text) if part)
        break
    return TestCaseResult(
        name=_case_name(case), outcome=outcome,  # type: ignore[arg-type]
        duration=round(float(case.time or 0.0), 3),
        message=redact(message, extra=secrets)[:_MESSAGE_CHARS],
        file=case._elem.get("file") or None, line=_number(case._elem.get("line")),
    )


def _number(text: str | None) -> int | None:
    return int(text) if text and text.isdigit() else None


def _case_name(case: TestCase) -> str:
    """pytest's node id (`tests/test_x.py::TestY::test_z`) when the report names the file."""
    classname = case.classname or ""
    file = case._elem.get("file")
    if file and file.endswith(".py"):
        module = file[: -len(".py")].replace("/", ".")
        inner = classname[len(module) + 1:] if classname.startswith(module + ".") else ""
        return "::".join(part for part in (file, *inner.split(".")) if part) + f"::{case.name}"
    if file:
        return f"{file}::{case.name}"
    return f"{classname}.{case.name}" if classname else str(case.name)


def _whole_suite_result(suite: SuiteConfig, outcome: _Outcome, tail: str) -> TestCaseResult:
    passed = outcome.exit_code == 0
    return TestCaseResult(
        name=suite.suite, outcome="passed" if passed else "error", duration=round(outcome.duration, 3),
        message="" if passed else tail[-_MESSAGE_CHARS:],
    )


def _tail(text: str) -> str:
    return text if len(text) <= TAIL_CHARS else "…" + text[-TAIL_CHARS:]


def safe_name(label: str) -> str:
    """`label` as a file name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", label).strip("-")[:80] or "unnamed"
