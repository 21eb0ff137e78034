"""The verdict, from the results and their comparison with the base run (DESIGN.md "The verdict").

Passed when (1) every suite and plan ran to a result, (2) nothing regressed, (3) a test or plan step fails
in the base run (the same tests at the base commit) and passes in the sandbox (a new test, or one of the
repository's own red tests that the change turns green: "fixed by this change"), and no test the change
itself added or modified fails. With `require: all` every test must pass instead of (2)-(3); being
unproven then only makes the pull request a draft. Skipped suites, flaky tests and a suite whose base run
gave no result make it a draft too.

A change that needs review (`review.py`: test infrastructure, removed, skipped or changed tests) is never
`proven`, whatever its tests say: when they would prove it, it passes as a draft that names the changes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from agentloop.results import BaseRunSource, SuiteResult, Verdict
from agentloop.validation.comparison import Outcome
from agentloop.verdict_words import Word, summary_line

_LISTED = 5


def decide(
    results: Sequence[SuiteResult], outcome: Outcome, *, require: Literal["proven", "all"],
    needs_review: Sequence[str] = (), base_runs: Sequence[BaseRunSource] = (),
) -> Verdict:
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
    unproven += [f"suite {source.suite} did not run to a result at the base commit ({source.error}): its tests "
                 "could not be compared with the base run" for source in base_runs if source.error]
    if comparison.regressions:
        blocking.append(f"regressed (pass in the base run, fail in the sandbox): {_names(comparison.regressions)}")
    if outcome.uncompared:
        blocking.append(f"fail in the sandbox and have no result in the base run: {_names(outcome.uncompared)}")
    own = set(outcome.own_failures)
    if own:
        blocking.append(f"tests the change added or modified fail in the sandbox: {_names(outcome.own_failures)}")
    # the change's own failing tests are not "pre-existing": they are the reproduction, not yet fixed
    comparison.preexisting = [name for name in comparison.preexisting if name not in own]
    if comparison.preexisting:
        notes.append(f"already failing in the base run (not caused by this change): {_names(comparison.preexisting)}")
    if comparison.not_reproducing:
        notes.append("pass in the base run too, so they do not reproduce the issue: "
                     f"{_names(comparison.not_reproducing)}")
    if comparison.flaky:
        unproven.append(f"flaky (failed, then passed on a rerun): {_names(comparison.flaky)}")
    fixed = bool(comparison.fixed)
    if fixed:
        notes.insert(0, f"fixed by this change (fail in the base run, pass in the sandbox): {_names(comparison.fixed)}")
    if needs_review:
        count = len(needs_review)
        unproven.append(f"needs review, so not proven: {count} change{'s' if count != 1 else ''} to tests or test "
                        "infrastructure (named above)")
    proven = fixed and not needs_review
    not_proven = (
        "not proven yet: the change's own tests still fail in the sandbox" if own else
        "not proven: no test or plan step fails in the base run and passes in the sandbox; add a test that "
        "reproduces the issue, or make an existing test that fails in the base run pass"
    )
    if require == "all":
        failing = [f"{r.name}: {t.name}" for r in results for t in r.failed]
        if failing:
            blocking.append(f"`require: all` and these fail: {_names(failing)}")
        if not fixed:
            unproven.append(not_proven)
    elif not fixed:
        blocking.append(not_proven)
    if not results:
        blocking.append("loop.yaml has no `validate:` entries; add a suite or a plan")
    passed = not blocking
    # "failed" only when something failed; a change that broke nothing but shows no fix is "unproven"
    word: Word = ("failed" if any(reason != not_proven for reason in blocking)
                  else "passed" if proven and not unproven else "unproven")
    head = summary_line(word, [{"kind": r.kind, "counts": r.counts()} for r in results])
    return Verdict(
        passed=passed, proven=proven, reasons=[head, *blocking, *notes], results=list(results),
        comparison=comparison, unproven=unproven, outcome=word, needs_review=list(needs_review),
        base_runs=list(base_runs),
    )


def guidance(verdict: Verdict) -> list[str]:
    """What the next edit needs to hear about proof: which of its tests prove nothing, which existing tests
    could, and which of its changes keep the verdict from calling anything proven."""
    lines: list[str] = []
    if verdict.needs_review:
        lines.append(
            "Loop cannot call this change proven, because it changes tests or test infrastructure: "
            + "; ".join(verdict.needs_review)
            + ". Validation reads suites, plans and loop.yaml from the base commit; undo these changes unless "
            "the issue is about them."
        )
    comparison = verdict.comparison
    if comparison.fixed:
        return lines
    if comparison.not_reproducing:
        lines.append("Your tests that pass in the base run too, so they do not reproduce the issue (make them fail "
                     f"without your fix by testing what the issue describes): {_names(comparison.not_reproducing)}")
    if comparison.preexisting:
        lines.append("Existing tests that already fail in the base run (if the issue is theirs, making them pass "
                     f"proves the fix): {_names(comparison.preexisting)}")
    reproducing = any(line.startswith("not proven yet") for line in [*verdict.reasons, *verdict.unproven])
    if not comparison.not_reproducing and not comparison.preexisting and not reproducing:
        lines.append("No test fails in the base run and passes with your change: add one that reproduces the issue.")
    return lines


def _names(names: Sequence[str]) -> str:
    listed = ", ".join(names[:_LISTED])
    return listed + (f" and {len(names) - _LISTED} more" if len(names) > _LISTED else "")
