"""The App's workers: take jobs from the queue, fetch the repository into its one clone, run the loop
on the issue in a worktree of the job's own (`agentloop.app.checkout`), removed when the job is done.

The runner is reached through a seam (`run_fix`, `run_resume`) so that the worker does not depend on
how a run is built; by default it is `agentloop.loop.runner.fix` / `agentloop.loop.runner.resume`, imported
when first needed. A job that carries a run id (its server stopped mid-run) is resumed from the run's
checkpoint; one without is started again.

Whatever happens to a job -- a name GitHub would never issue, GitHub unreachable when the run ends,
a crash -- it leaves `running` with a status and a reason: nothing the job does can keep the queue
from hearing how it ended. Every path the worker touches is checked to stay under its workdir.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from agentloop.app import checkout
from agentloop.app.queue import Job, JobQueue, JobStatus
from agentloop.app.review_jobs import PULL_ACTIONS, default_review, run_pull_job, sandbox_kept
from agentloop.errors import LoopError
from agentloop.forge.base import Step
from agentloop.forge.github import GitHubForge
from agentloop.redact import redact
from agentloop.results import Issue, PullRequest

log = logging.getLogger(__name__)

MISSING_CONFIG = (
    "loop can't work on this issue yet: the repository has no `loop.yaml` on its default branch.\n\n"
    "Add one at the top of the repository that names your services and test suites, for example:\n\n"
    "```yaml\nservices: {}\nvalidate:\n  - suite: unit\n    run: pytest -q\n```\n\n"
    "then comment `/loop retry` here."
)


class RunOutcomeLike(Protocol):
    """What the worker reads of agentloop.loop.runner.RunOutcome."""

    @property
    def run_id(self) -> str: ...
    @property
    def status(self) -> str: ...
    @property
    def pull_request(self) -> PullRequest | None: ...
    @property
    def message(self) -> str: ...


RunFn = Callable[..., RunOutcomeLike]
TokenSource = Callable[[int | None], Callable[[], str]]


def _default_fix(*args: Any, **kwargs: Any) -> RunOutcomeLike:
    from agentloop.loop.runner import fix

    outcome: RunOutcomeLike = fix(*args, **kwargs)
    return outcome


def _default_resume(*args: Any, **kwargs: Any) -> RunOutcomeLike:
    from agentloop.loop.runner import resume

    outcome: RunOutcomeLike = resume(*args, **kwargs)
    return outcome


def default_owner(workdir: Path) -> str:
    """Who holds a running job: this host and work directory, stable across restarts."""
    return f"{socket.gethostname()}:{workdir.resolve()}"


class Worker:
    """A pool of `concurrency` threads running jobs from `queue`."""

    def __init__(
        self,
        queue: JobQueue,
        *,
        workdir: Path,
        api_url: str,
        tokens: TokenSource,
        model: str | None = None,
        concurrency: int = 1,
        run_fix: RunFn | None = None,
        run_resume: RunFn | None = None,
        owner: str | None = None,
        poll_seconds: float = 1.0,
        forge_options: dict[str, Any] | None = None,
    ):
        self.queue = queue
        self.workdir = workdir.expanduser().resolve()
        self.api_url = api_url
        self.tokens = tokens
        self.model = model or os.environ.get("LOOP_MODEL") or None
        self.concurrency = max(1, concurrency)
        self.run_fix = run_fix or _default_fix
        self.run_resume = run_resume or _default_resume
        self.run_review: RunFn = default_review  # tests replace it, as run_fix and run_resume
        self.owner = owner or default_owner(workdir)
        self.poll_seconds = poll_seconds
        self.forge_options = forge_options or {}
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._cancels: dict[tuple[str, int], threading.Event] = {}
        self._cancels_lock = threading.Lock()

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.queue.recover(self.owner)
        self._stop.clear()
        for index in range(self.concurrency):
            thread = threading.Thread(target=self._loop, name=f"loop-worker-{index}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop taking jobs and ask running ones to stop; an unfinished job is resumed after restart."""
        self._stop.set()
        self._wake.set()
        with self._cancels_lock:
            for event in self._cancels.values():
                event.set()
        for thread in self._threads:
            thread.join(timeout)
        self._threads.clear()

    def notify(self) -> None:
        """A job was queued: wake an idle worker now rather than at its next poll."""
        self._wake.set()

    def cancel(self, repo: str, issue: int) -> bool:
        with self._cancels_lock:
            event = self._cancels.get((repo, issue))
        if event is None:
            return False
        event.set()
        return True

    def run_next(self) -> Job | None:
        """Claim and run one job in this thread (the pool's loop body; also handy for tests)."""
        job = self.queue.claim(self.owner)
        if job is not None:
            self._run(job)
        return job

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.queue.heartbeat(self.owner)
                job = self.run_next()
            except Exception:  # the pool must outlive any one bad job or a queue hiccup
                log.exception("worker: unexpected error")
                job = None
            if job is None:
                self._wake.wait(self.poll_seconds)
                self._wake.clear()

    # -- one job -----------------------------------------------------------------------------------

    def _run(self, job: Job) -> None:
        cancel = threading.Event()
        key = (job.repo, job.issue)
        with self._cancels_lock:
            self._cancels[key] = cancel
        forge: GitHubForge | None = None
        tokens = _SeenTokens()
        issue = Issue(number=job.issue, title="")
        status: JobStatus = "error"
        message, run_id, pull = "the job ended without an outcome", job.run_id, None
        try:
            self._repo_dirs(job)  # a name GitHub would never issue goes no further
            tokens.source = self.tokens(job.installation_id)
            forge = GitHubForge(job.repo, api_url=self.api_url, token=tokens, **self.forge_options)
            status, message, run_id, pull = self._execute(job, forge, issue, cancel)
        except LoopError as exc:
            status, message = "failed", str(exc)
            self._tell(forge, job, issue, f"loop stopped: {exc}")
        except Exception as exc:
            log.exception("job %s (%s#%s) crashed", job.id, job.repo, job.issue)
            status, message = "error", f"{type(exc).__name__}: {exc}"
            self._tell(forge, job, issue, "loop stopped on an internal error; the server log has the details.")
        finally:
            with self._cancels_lock:
                self._cancels.pop(key, None)
        try:
            if self._stop.is_set() and status == "interrupted":
                log.info("job %s: interrupted by shutdown; it resumes when the server starts again", job.id)
                return  # stays `running` under our owner: recover() puts it back in the queue at start
            self.queue.finish(job.id, status, message=redact(message, extra=_secrets(forge, tokens)),
                              run_id=run_id, pull_request_url=pull)
            log.info("job %s (%s#%s): %s %s", job.id, job.repo, job.issue, status, pull or "")
            self._release(job, run_id)
        finally:
            if forge is not None:
                forge.close()

    def _execute(
        self, job: Job, forge: GitHubForge, issue: Issue, cancel: threading.Event
    ) -> tuple[JobStatus, str, str | None, str | None]:
        dirs = self._repo_dirs(job)
        if job.action in PULL_ACTIONS:  # a run's pull request: a review iteration, or its end
            return run_pull_job(job, forge, dirs, cancel=cancel, run_review=self.run_review)
        path = checkout.job_checkout(dirs, job.id, forge, refresh=not job.run_id)
        if not (path / "loop.yaml").is_file():
            forge.comment(issue, MISSING_CONFIG, step=Step(f"job-{job.id}", "worker"))
            return "failed", "the repository has no loop.yaml", None, None
        # no "working on it" here: the run's intake says so once the model's preflight has passed, and a run
        # that never starts posts nothing on the issue

        def progress(event: dict[str, Any]) -> None:
            run_id = event.get("run_id")
            if isinstance(run_id, str) and run_id != job.run_id:
                job.run_id = run_id
                self.queue.set_run_id(job.id, run_id)

        if job.run_id:
            log.info("job %s: resuming run %s", job.id, job.run_id)
            outcome = self.run_resume(path, job.run_id, forge=forge, cancel=cancel, progress=progress,
                                      runs_root=dirs.runs)
        else:
            outcome = self.run_fix(path, str(job.issue), model=self.model, forge=forge, cancel=cancel,
                                   progress=progress, runs_root=dirs.runs)
        status: JobStatus = outcome.status if outcome.status in ("published", "failed", "error", "interrupted") \
            else "error"  # type: ignore[assignment]
        pull = outcome.pull_request.url if outcome.pull_request else None
        return status, outcome.message, outcome.run_id, pull

    def _repo_dirs(self, job: Job) -> checkout.RepoDirs:
        if job.issue < 1:
            raise LoopError(f"job {job.id}: issue number {job.issue} is not an issue")
        return checkout.repo_dirs(self.workdir, job.repo)

    def _release(self, job: Job, run_id: str | None) -> None:
        """The job is done: its worktrees go (best effort: `loop sandbox gc --app-workdir` finishes it), but
        not the worktree of a run whose sandbox is kept for its review: the sandbox's forks run from it."""
        try:
            dirs = self._repo_dirs(job)
            kept = run_id is not None and sandbox_kept(dirs.runs / run_id)
            checkout.release(dirs, job.id, None if kept else run_id)
        except Exception:  # the job's end is recorded; a leftover worktree is gc's
            log.warning("job %s: could not remove its worktrees", job.id, exc_info=True)

    def _tell(self, forge: GitHubForge | None, job: Job, issue: Issue, text: str) -> None:
        """Best effort: the queue, not the issue, is where a job's end is recorded. Only a job whose run
        started says it on the issue (in the run's own status comment): one that never started (a model the
        preflight refused, a clone that failed) posts nothing there."""
        if forge is None or not job.run_id:
            return
        try:
            forge.comment(issue, text, step=Step(job.run_id, "worker"))
        except Exception as exc:  # noqa: BLE001 -- GitHub down, token refused: the job must still finish
            log.warning("could not comment on %s#%s: %s", forge.repo_slug, issue.number, type(exc).__name__)


class _SeenTokens:
    """The installation token callable, remembering what it handed out so that a message can be
    redacted even when GitHub no longer answers to renew it."""

    def __init__(self) -> None:
        self.source: Callable[[], str] | None = None
        self.seen: list[str] = []

    def __call__(self) -> str:
        if self.source is None:
            raise LoopError("no installation token yet")
        token = self.source()
        if token not in self.seen:
            self.seen.append(token)
        return token


def _secrets(forge: GitHubForge | None, tokens: _SeenTokens) -> list[str]:
    known = list(tokens.seen)
    if forge is not None and tokens.seen:
        try:
            known += forge.secret_values()
        except Exception:  # renewing the token needs GitHub; the tokens seen are what a message could hold
            log.debug("could not renew the token to redact the job's message", exc_info=True)
    return known
