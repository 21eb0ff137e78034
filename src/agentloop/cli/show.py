"""`loop show`: one run, iteration by iteration, from its record (checkpoint state and files)."""

from __future__ import annotations

import sqlite3
from datetime import datetime
from typing import Any

from langgraph.checkpoint.sqlite import SqliteSaver
from rich.console import Console
from rich.table import Table
from rich.text import Text

from agentloop.evidence.counts import changes_per_iteration
from agentloop.loop.state import SERDE, Attempt, RunState, typed
from agentloop.results import Diagnosis, EditResult, SuiteResult
from agentloop.runs.folder import CorruptRecord, RunFolder
from agentloop.runs.store import database_url, postgres_checkpointer
from agentloop.verdict_words import verdict_word


def _state(record: RunFolder) -> RunState:
    url = database_url()
    if url:  # the run may have been checkpointed on another machine (a Kubernetes Job)
        with postgres_checkpointer(url, serde=SERDE) as saver:
            shared = saver.get_tuple({"configurable": {"thread_id": record.run_id}})
        return typed(shared.checkpoint["channel_values"]) if shared else {}
    if not record.checkpoints.exists():
        return {}
    conn = sqlite3.connect(str(record.checkpoints), check_same_thread=False)
    try:
        saved = SqliteSaver(conn, serde=SERDE).get_tuple({"configurable": {"thread_id": record.run_id}})
        return typed(saved.checkpoint["channel_values"]) if saved else {}
    except sqlite3.DatabaseError as exc:
        raise CorruptRecord(f"{record.checkpoints}: not a checkpoint database loop can read ({exc}); "
                            f"restore it, or remove the run's folder {record.dir}") from None
    finally:
        conn.close()


def _suite_line(result: SuiteResult) -> dict[str, Any]:
    return {"name": result.name, "kind": result.kind, "ran": result.ran, "counts": result.counts(),
            "failed": [t.name for t in result.failed], "error": result.error}


def _iteration(attempt: Attempt, changed: list[str]) -> dict[str, Any]:
    edit = attempt.get("edit") or EditResult()
    deploy = attempt.get("deploy")
    verdict = attempt.get("verdict")
    diagnosis = attempt.get("diagnosis") or Diagnosis()
    return {
        "iteration": attempt["iteration"],
        "edit": {"summary": edit.summary, "turns": edit.turns if "edit" in attempt else None,
                 "stop_reason": edit.stop_reason if "edit" in attempt else None, "cost_usd": edit.usage.cost_usd},
        "changed_files": changed,
        "changed_since_base": attempt.get("changed_files") or [],
        "deploy": {"ok": deploy.ok if deploy else None, "forked": deploy.forked if deploy else [],
                   "error": deploy.error if deploy else None},
        "verdict": {"passed": verdict.passed, "word": verdict_word(verdict.model_dump(mode="json")),
                    "reasons": verdict.reasons, "results": [_suite_line(r) for r in verdict.results]}
        if verdict else None,
        "diagnosis": diagnosis.summary if attempt.get("diagnosis") else None,
        "log_excerpts": diagnosis.excerpts,
    }


def run_details(record: RunFolder) -> dict[str, Any]:
    """Summary, then each iteration: changed files, deploy, suites and plans, diagnosis, edit usage."""
    summary = record.summary()
    state = _state(record)
    attempts = state.get("attempts") or []
    # each file credited to the iteration whose edit changed it (an attempt's own list is since the base)
    changes = changes_per_iteration(record.dir, attempts)
    sandbox = state.get("sandbox")
    return {
        "run": summary.public(),
        "branch": state.get("branch") or summary.branch,
        "worktree": state.get("worktree"),
        "sandbox": sandbox.model_dump(mode="json") if sandbox else None,
        "iterations": [_iteration(attempt, changed) for attempt, changed in zip(attempts, changes, strict=True)],
        "events": record.events(),
        "record": str(record.dir),
    }


def render_details(details: dict[str, Any], console: Console) -> None:
    run = details["run"]
    started = datetime.fromisoformat(run["started_at"]).astimezone().strftime("%Y-%m-%d %H:%M:%S")
    console.print(f"[bold]{run['id']}[/bold]  issue #{run['issue']} {run['issue_title']}")
    console.print(f"status {run['status']}  iterations {run['iterations']}  started {started}  "
                  f"duration {run['duration']:.0f}s  cost ${run['cost_usd']:.4f}  model {run['model']}")
    if run.get("pull_request"):
        console.print(f"pull request: {run['pull_request']}")
    if details.get("branch"):
        console.print(f"branch {details['branch']}")
    if run.get("message"):
        console.print(run["message"])
    for it in details["iterations"]:
        console.rule(f"iteration {it['iteration']}")
        console.print(f"edit: {it['edit']['stop_reason']} in {it['edit']['turns']} turns; "
                      f"changed {', '.join(it['changed_files']) or 'nothing'}")
        deploy = it["deploy"]
        console.print(f"deploy: {'ok' if deploy['ok'] else 'failed'}; forks {', '.join(deploy['forked']) or 'none'}"
                      + (f"; {deploy['error']}" if deploy.get("error") else ""))
        if it["verdict"]:
            table = Table("check", "passed", "failed", "skipped", "flaky", "failing tests")
            for res in it["verdict"]["results"]:
                c = res["counts"]
                table.add_row(res["name"], str(c["passed"]), str(c["failed"] + c["error"]), str(c["skipped"]),
                              str(c["flaky"]), ", ".join(res["failed"])[:80] or (res["error"] or ""))
            console.print(table)
            word = it["verdict"]["word"]
            colour = {"passed": "green", "unproven": "yellow"}.get(word, "red")
            console.print(Text(f"verdict: {word}", style=f"bold {colour}"))
            for reason in it["verdict"]["reasons"]:
                console.print(Text(f"· {reason}", style=colour))
        if it["diagnosis"]:
            # the verdict's own lines were printed above; show what failed and how
            failures = [line for line in it["diagnosis"].splitlines() if not line.startswith("Verdict:")]
            console.print(Text("\n".join(failures)[:600], style="dim"))
        for service, text in it["log_excerpts"].items():
            console.print(Text(f"{service} log:", style="bold"))
            console.print(Text("\n".join(text.splitlines()[:8]), style="dim"))
    console.print(f"record: {details['record']}")
