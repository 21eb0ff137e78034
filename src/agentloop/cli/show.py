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
from agentloop.runs.folder import CorruptRecord, RunFolder
from agentloop.runs.store import database_url, postgres_checkpointer
from agentloop.verdict_words import verdict_word


def _state(record: RunFolder) -> dict[str, Any]:
    url = database_url()
    if url:  # the run may have been checkpointed on another machine (a Kubernetes Job)
        with postgres_checkpointer(url) as saver:
            shared = saver.get_tuple({"configurable": {"thread_id": record.run_id}})
        return dict(shared.checkpoint["channel_values"]) if shared else {}
    if not record.checkpoints.exists():
        return {}
    conn = sqlite3.connect(str(record.checkpoints), check_same_thread=False)
    try:
        saved = SqliteSaver(conn).get_tuple({"configurable": {"thread_id": record.run_id}})
        return dict(saved.checkpoint["channel_values"]) if saved else {}
    except sqlite3.DatabaseError as exc:
        raise CorruptRecord(f"{record.checkpoints}: not a checkpoint database loop can read ({exc}); "
                            f"restore it, or remove the run's folder {record.dir}") from None
    finally:
        conn.close()


def _suite_line(result: dict[str, Any]) -> dict[str, Any]:
    counts = {"passed": 0, "failed": 0, "error": 0, "skipped": 0, "flaky": 0}
    for test in result.get("tests", []):
        counts["flaky" if test.get("flaky") else test["outcome"]] += 1
    failed = [t["name"] for t in result.get("tests", []) if t["outcome"] in ("failed", "error") and not t.get("flaky")]
    return {"name": result["name"], "kind": result.get("kind", "suite"), "ran": result.get("ran", True),
            "counts": counts, "failed": failed, "error": result.get("error")}


def run_details(record: RunFolder) -> dict[str, Any]:
    """Summary, then each iteration: changed files, deploy, suites and plans, diagnosis, edit usage."""
    summary = record.summary()
    state = _state(record)
    iterations = []
    attempts = state.get("attempts") or []
    # each file credited to the iteration whose edit changed it (an attempt's own list is since the base)
    changes = changes_per_iteration(record.dir, attempts)
    for attempt, changed in zip(attempts, changes, strict=True):
        edit = attempt.get("edit") or {}
        deploy = attempt.get("deploy") or {}
        verdict = attempt.get("verdict") or {}
        iterations.append({
            "iteration": attempt.get("iteration"),
            "edit": {"summary": edit.get("summary", ""), "turns": edit.get("turns"), "stop_reason": edit.get("stop_reason"),
                     "cost_usd": (edit.get("usage") or {}).get("cost_usd", 0.0)},
            "changed_files": changed,
            "changed_since_base": attempt.get("changed_files") or [],
            "deploy": {"ok": deploy.get("ok"), "forked": deploy.get("forked", []), "error": deploy.get("error")},
            "verdict": {"passed": verdict.get("passed"), "word": verdict_word(verdict), "reasons": verdict.get("reasons", []),
                        "results": [_suite_line(r) for r in verdict.get("results", [])]} if verdict else None,
            "diagnosis": (attempt.get("diagnosis") or {}).get("summary"),
            "log_excerpts": (attempt.get("diagnosis") or {}).get("excerpts") or {},
        })
    return {
        "run": summary.public(),
        "branch": state.get("branch") or summary.branch,
        "worktree": state.get("worktree"),
        "sandbox": state.get("sandbox"),
        "iterations": iterations,
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
