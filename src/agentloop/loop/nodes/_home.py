"""The pull request as the run's home, and the check run on its head commit (for `validate`, and
`diagnose` when an iteration's deploy failed).

Before an iteration is validated -- so after a deploy that worked -- its change is committed and pushed,
the run's draft pull request is opened (the first time, and the issue's status comment links to it) or
given the new commit, and the check run `loop / validation` starts on that commit. After validating, the
check completes with the verdict and the draft's body shows the status (an iteration whose deploy
failed says that instead). `publish` replaces the body with the evidence and marks the pull request
ready only when the run is proven; any other ending leaves it a draft. Why after the first deploy that worked, not the first attempt: a draft that does not even start
would be noise on the repository; a run that never deploys keeps today's ending (the issue's comment,
and a draft only with `forge.draft_on_failure`).

Every side effect carries the `validate:<iteration>` step: a run killed and resumed finds its pull request
(by branch), its comment and its check run (by marker) instead of making them again. A change that adds a
secret is never committed or pushed here; `publish` refuses it and says why. The forge's failures cost
the run its home, never its validation: they are logged and the run goes on.
A validation that raises completes the check as a failure with the error's first line (`report_crash`);
a stop that will be resumed leaves it in progress for the resumed step.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from agentloop import git
from agentloop.errors import RunInterrupted
from agentloop.forge.base import Annotation, CheckReport, Conclusion, DraftsPullRequests, RunsChecks
from agentloop.loop.context import RunContext
from agentloop.loop.nodes._common import step_of, with_run_page
from agentloop.loop.nodes.publish import commit_message, secrets_added
from agentloop.loop.state import RunState
from agentloop.results import PullRequest, SuiteResult, TestCaseResult, Verdict
from agentloop.verdict_words import verdict_word

log = logging.getLogger(__name__)

CONCLUSIONS: dict[str, Conclusion] = {"passed": "success", "failed": "failure", "unproven": "neutral"}
# `tests/test_x.py:12: AssertionError` (pytest), `  File "x.py", line 12` (Python), `at x.js:12:3` (node)
_TRACE = re.compile(r"(?m)^(?:.*?File \")?(?P<path>[\w.][\w./-]*\.\w+)(?:\", line |:)(?P<line>\d+)")


def open_home(state: RunState, ctx: RunContext) -> tuple[PullRequest | None, str | None]:
    """Commit, push and open or update the draft, start the check: (the pull request, the check's id)."""
    pull = state.get("pull_request")
    if not isinstance(ctx.forge, DraftsPullRequests) or secrets_added(state, ctx) is not None:
        return pull, None
    issue, step = state["issue"], step_of(state, ctx, "validate")
    worktree = git.Worktree(ctx.repo, Path(state["worktree"]))
    try:
        head = git.commit_all(worktree, commit_message(state, ctx))
        opened = ctx.forge.publish(worktree=worktree, branch=state["branch"], title=f"Fix #{issue.number}: {issue.title}",
                                   body=status_body(state, ctx, "validating"), draft=True, issue=issue, step=step)
        if pull is None:
            ctx.forge.comment(issue, f"loop run `{ctx.run_id}` opened a draft pull request and is validating it: "
                              f"{opened.url}", step=step)
            ctx.emit(kind="draft", url=opened.url)
        pull = opened
    except Exception as exc:  # noqa: BLE001 -- publish meets the same forge again and ends the run if it must
        log.warning("the run's pull request could not be opened or updated: %s", ctx.redactor.mask(str(exc)))
        return pull, None
    return pull, (ctx.forge.start_check(head, step=step) if isinstance(ctx.forge, RunsChecks) else None)


def report_iteration(state: RunState, ctx: RunContext, verdict: Verdict, pull: PullRequest | None,
                     check: str | None) -> PullRequest | None:
    """After validating: complete the check with the verdict and show the status in the draft's body."""
    try:
        if check is not None and isinstance(ctx.forge, RunsChecks):
            ctx.forge.finish_check(check, check_report(verdict, ctx))
        if pull is not None and isinstance(ctx.forge, DraftsPullRequests):
            word = verdict_word(verdict.model_dump(mode="json"))
            pull = ctx.forge.update_pull_request(pull, body=status_body(state, ctx, word, verdict), ready=False,
                                                 step=step_of(state, ctx, "validate"))
    except Exception as exc:  # noqa: BLE001 -- the verdict stands; the end of the run tries the forge again
        log.warning("the run's pull request or check could not be updated: %s", ctx.redactor.mask(str(exc)))
    return pull


def report_crash(state: RunState, ctx: RunContext, exc: BaseException, pull: PullRequest | None,
                 check: str | None) -> None:
    """Validation raised: the check completes as a failure with the error's one line (the change is not
    proven, and a required check must not pass on it), and the draft's status says so. A stop that will
    be resumed (Ctrl-C, SIGTERM, `/loop stop`) leaves the check in progress: the resumed step reuses it."""
    if not isinstance(exc, Exception) or isinstance(exc, RunInterrupted) or ctx.cancel.is_set():  # Ctrl-C, SIGTERM too
        return
    line = ctx.redactor.mask(f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0]}"[:300])
    try:
        if check is not None and isinstance(ctx.forge, RunsChecks):
            ctx.forge.finish_check(check, CheckReport(
                conclusion="failure", title="loop: validation error",
                summary=f"**loop could not validate iteration {int(state.get('iteration') or 1)}**: {line}"))
        if pull is not None and isinstance(ctx.forge, DraftsPullRequests):
            ctx.forge.update_pull_request(pull, body=status_body(state, ctx, f"validation stopped ({line})"),
                                          ready=False, step=step_of(state, ctx, "validate"))
    except Exception as forge_error:  # noqa: BLE001 -- the run ends on the validation's error, not this one
        log.warning("the run's check or pull request could not be told: %s", ctx.redactor.mask(str(forge_error)))


def report_deploy_failure(state: RunState, ctx: RunContext) -> None:
    """An iteration whose deploy failed is never validated: the draft's status says so (for `diagnose`)."""
    pull, deploy = state.get("pull_request"), state.get("deploy")
    if pull is None or deploy is None or deploy.ok or not isinstance(ctx.forge, DraftsPullRequests):
        return
    word = f"the deploy failed ({(deploy.error or 'no reason given').splitlines()[0][:300]})"
    try:
        ctx.forge.update_pull_request(pull, body=status_body(state, ctx, word), ready=False,
                                      step=step_of(state, ctx, "diagnose"))
    except Exception as exc:  # noqa: BLE001 -- as in report_iteration
        log.warning("the run's pull request could not be updated: %s", ctx.redactor.mask(str(exc)))


def status_body(state: RunState, ctx: RunContext, word: str, verdict: Verdict | None = None) -> str:
    """The draft's body while the run goes on: a status line and the table of what ran."""
    issue, iteration = state["issue"], int(state.get("iteration") or 1)
    lines = [f"**Status:** loop run `{ctx.run_id}`, iteration {iteration}: {word}.", ""]
    if verdict is not None:
        lines += [results_table(verdict.results), ""] + [f"- {reason}" for reason in verdict.reasons[:20]]
    lines += ["", "The evidence replaces this text when the run ends.", "", f"Fixes #{issue.number}"]
    return with_run_page(ctx.redactor.mask("\n".join(lines)), ctx.run_id)



def check_report(verdict: Verdict, ctx: RunContext) -> CheckReport:
    word = verdict_word(verdict.model_dump(mode="json"))
    failing = [(result, test) for result in verdict.results for test in result.failed]
    summary = "\n".join([f"**Verdict: {word}**", "", results_table(verdict.results), "",
                         *[f"- {reason}" for reason in verdict.reasons[:50]]])
    annotations = [a for a in (_annotation(result, test, ctx) for result, test in failing) if a is not None]
    return CheckReport(conclusion=CONCLUSIONS[word], title=f"loop: {word}", summary=ctx.redactor.mask(summary),
                       annotations=annotations)


def results_table(results: list[SuiteResult]) -> str:
    if not results:
        return "Nothing was validated."
    rows = ["| what ran | kind | passed | failed | error | skipped | flaky |", "|---|---|---|---|---|---|---|"]
    for result in results:
        counts = result.counts()
        name = result.name if result.ran else f"{result.name} (did not run)"
        rows.append(f"| {name} | {result.kind} | " + " | ".join(str(counts[k]) for k in
                                                                 ("passed", "failed", "error", "skipped", "flaky")) + " |")
    return "\n".join(rows)


def failure_location(test: TestCaseResult) -> tuple[str, int] | None:
    """Where a failing test failed: the last repository-relative `file:line` of its traceback, else the
    JUnit `file`/`line` attributes, else the file its name carries (`tests/x.py::test_y`) at line 1."""
    hits = [(m["path"], int(m["line"])) for m in _TRACE.finditer(test.message) if not m["path"].startswith("/")]
    if hits:
        return hits[-1][0], max(hits[-1][1], 1)
    if test.file:
        return test.file, max(test.line or 1, 1)
    file = test.name.split("::", 1)[0]
    return (file, 1) if "::" in test.name and "." in file else None


def _annotation(result: SuiteResult, test: TestCaseResult, ctx: RunContext) -> Annotation | None:
    where = failure_location(test)
    if where is None:
        return None
    return Annotation(path=where[0], line=where[1], title=ctx.redactor.mask(f"{result.name}: {test.name}"),
                      message=ctx.redactor.mask(test.message or test.outcome))
