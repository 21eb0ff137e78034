"""The three words a verdict is told in, everywhere a person reads one (the verdict's reasons, the PR
body's headline, `loop show`, the issue comment) and what `loop verify` checks them against:

- **failed**: something failed or regressed (a test, a suite that did not run to a result, a deploy);
- **unproven**: nothing failed, but no test shows the fix (or a suite was skipped, a test was flaky);
- **passed**: nothing failed and a test or plan step fails in the base run and passes in the sandbox.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

Word = Literal["passed", "unproven", "failed"]
WORDS: tuple[Word, ...] = ("passed", "unproven", "failed")
COUNT_KEYS = ("passed", "failed", "error", "skipped", "flaky")


def verdict_word(verdict: Mapping[str, Any] | None) -> Word:
    """The word of a verdict as stored (a `Verdict` dumped to JSON, or the evidence's verdict)."""
    if not verdict:
        return "failed"  # never validated
    recorded = verdict.get("word") or verdict.get("outcome")  # the evidence's, or a `Verdict`'s
    if recorded in WORDS:
        word: Word = recorded
    elif not verdict.get("passed"):
        word = "failed"  # a record written before the word was: `passed` was all it said
    else:
        word = "passed" if verdict.get("proven") and not verdict.get("unproven") else "unproven"
    if word == "passed" and (verdict.get("needs_review") or verdict.get("unproven")):
        return "unproven"
    return word


def count_summary(results: Sequence[Mapping[str, Any]]) -> str:
    """`2 suites, 1 plan; 69 passed, 1 skipped` from each result's `kind` and `counts`."""
    if not results:
        return "nothing was validated"
    suites = sum(1 for r in results if r.get("kind", "suite") != "plan")
    plans = len(results) - suites
    what = [f"{n} {noun}{'s' if n != 1 else ''}" for n, noun in ((suites, "suite"), (plans, "plan")) if n]
    totals = {key: sum(int((r.get("counts") or {}).get(key, 0)) for r in results) for key in COUNT_KEYS}
    shown = [f"{value} {key}" for key, value in totals.items() if value]
    return f"{', '.join(what)}; " + (", ".join(shown) or "no tests")


def summary_line(word: Word, results: Sequence[Mapping[str, Any]]) -> str:
    """The verdict's first reason and the headline's tail: `unproven: 1 suite; 3 passed`."""
    return f"{word}: {count_summary(results)}"


def is_summary_line(reason: str) -> bool:
    return any(reason.startswith(f"{word}: ") for word in WORDS)
