"""A person's answer to a run paused by `--review`. Approve resumes it exactly as `loop resume RUN` does
(the graph continues past its interrupt into publish), in a background process whose output goes to
`logs/approval.log`; reject ends it as failed, unpublished. Either is recorded in `logs/approval.json`
first, so a second click (or a second server) cannot answer twice."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Literal

from agentloop.errors import LoopError
from agentloop.pages.data import APPROVAL_FILE, RunView
from agentloop.runs.folder import RunFolder

Answer = Literal["approve", "reject"]


class AlreadyAnswered(LoopError):
    """The run is not waiting for an answer (answered already, or never paused for review)."""


def _claim(logs: Path, answer: Answer, who: str) -> None:
    """Write the answer once: O_EXCL makes two answers at the same moment one answer and one refusal."""
    logs.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(logs / APPROVAL_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        raise AlreadyAnswered("this run was already approved or rejected") from None
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump({"answer": answer, "by": who, "at": time.time()}, handle)


def answer_review(view: RunView, answer: Answer, who: str) -> None:
    """Approve (resume into publish, in the background) or reject the paused run of `view`."""
    if view.run_dir is None or not view.awaiting_review:
        raise AlreadyAnswered(f"run {view.summary.id} is not waiting for review ({view.summary.status})")
    run_dir = view.run_dir
    _claim(run_dir / "logs", answer, who)
    if answer == "reject":
        RunFolder(run_dir.parent, view.summary.id).update_summary(
            status="failed", message=f"rejected on the run page by {who}; not published")
        return
    process = _resume_in_background(run_dir, view.summary.repo, view.summary.id)
    threading.Thread(target=process.wait, name=f"approve-{view.summary.id}", daemon=True).start()  # no zombie


def _resume_in_background(run_dir: Path, repo: str, run_id: str) -> subprocess.Popen[bytes]:
    """`loop resume RUN` in its own session, so that it outlives the request (and a restart of the server)."""
    env = {**os.environ, "LOOP_RUNS_DIR": str(run_dir.parent)}  # the run's own records, wherever they are
    with (run_dir / "logs" / "approval.log").open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "agentloop.cli", "resume", run_id, "--repo", repo],
            cwd=repo, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
