"""The verdict, from the results and the baseline comparison (DESIGN.md "The verdict").

Passed when (1) every suite and plan ran to a result, (2) nothing regressed, (3) the change is proven
(a test or plan step fails on the baseline and passes in the sandbox), and no test the change itself
added or modified fails. With `require: all` every test must pass instead of (2)-(3); being unproven
then only makes the pull request a draft. Skipped suites and flaky tests make it a draft too.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from agentloop.records import SuiteResult, Verdict
from agentloop.validation.baseline import Outcome

_LISTED = 5


def decide(results: Sequence[SuiteResult], outcome: Outcome, *, require: Literal["proven", "all"]) -> Verdict:
    comparison = outcome.comparison
    blocking: list[str] = []
    notes: list[str] = []
    unproven: list[str] = []
    for result in results:
        kind = "plan" if result.kind == "plan" else "suite"
        if not result.ran:
            unproven.append(f"{kind} {result.name} was skipped: {result.error or 'not run'}")
        elif result.error:
            blocking.append(f"{kind} {result.name} did not run to a result: {result.error}")
    if comparison.regressions:
        blocking.append(f"regressed (pass on the baseline, fail in the sandbox): {_names(comparison.regressions)}")
    if outcome.uncompared:
        blocking.append(f"fail in the sandbox and could not be run on the baseline: {_names(outcome.uncompared)}")
    own = set(outcome.own_failures)
    if own:
        blocking.append(f"tests the change added or modified fail in the sandbox: {_names(outcome.own_failures)}")
    # the change's own failing tests are not "pre-existing": they are the reproduction, not yet fixed
    preexisting = [name for name in comparison.preexisting if name not in own]
    if preexisting:
        notes.append(f"already failing on the baseline (not caused by this change): {_names(preexisting)}")
    if comparison.flaky:
        unproven.append(f"flaky (failed, then passed on a rerun): {_names(comparison.flaky)}")
    proven = bool(comparison.fixed)
    if proven:
        notes.insert(0, f"proven: fail on the baseline, pass in the sandbox: {_names(comparison.fixed)}")
    not_proven = (
        "not proven yet: the change's own tests still fail in the sandbox" if own else
        "not proven: no test or plan step fails on the baseline and passes in the sandbox; "
        "add a test that reproduces the issue"
    )
    if require == "all":
        failing = [f"{r.name}: {t.name}" for r in results for t in r.failed]
        if failing:
            blocking.append(f"`require: all` and these fail: {_names(failing)}")
        if not proven:
            unproven.append(not_proven)
    elif not proven:
        blocking.append(not_proven)
    if not results:
        blocking.append("loop.yaml has no `validate:` entries; add a suite or a plan")
    passed = not blocking
    head = f"passed: {_summary(results)}" if passed else f"failed: {_summary(results)}"
    return Verdict(
        passed=passed, proven=proven, reasons=[head, *blocking, *notes], results=list(results),
        comparison=comparison, unproven=unproven,
    )


def _summary(results: Sequence[SuiteResult]) -> str:
    totals = {"passed": 0, "failed": 0, "error": 0, "skipped": 0, "flaky": 0}
    for result in results:
        for key, value in result.counts().items():
            totals[key] += value
    shown = [f"{value} {key}" for key, value in totals.items() if value]
    return f"{len(results)} suites and plans; " + (", ".join(shown) or "no tests")


def _names(names: Sequence[str]) -> str:
    listed = ", ".join(names[:_LISTED])
    return listed + (f" and {len(names) - _LISTED} more" if len(names) > _LISTED else "")
