"""One budget check: the coding agent (mid-edit) and the engine (between iterations) stop a run with the same
words. Real runs of the graph with the replay model; only the budget's clock is moved past the deadline, at
a chosen node, so that where the time budget runs out does not depend on how fast the machine is."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from langgraph.checkpoint.sqlite import SqliteSaver
from looptest import MakeRepo, create, replace, write_cassette

from agentloop.agent import budget
from agentloop.loop.runner import RunOutcome, fix
from agentloop.loop.state import SERDE, typed

CALC_FILES = {
    "calc.py": "def add(a, b):\n    return a - b\n",
    ".loop/issues/1.md": "# add() subtracts\n\nadd(2, 3) returns -1 instead of 5.\n",
}
CALC_CONFIG = {"services": {}, "validate": [{"suite": "unit", "run": "python3 -m pytest -q tests"}],
               "agent": {"max_iterations": 3, "budget": {"minutes": 30, "usd": None}}}
WRONG_FIX = [create("tests/test_add.py", "from calc import add\n\n\ndef test_add():\n    assert add(2, 3) == 5\n"),
             replace("calc.py", "return a - b", "return a * b")]


def _run_out_of_time_at(node: str, make_repo: MakeRepo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> RunOutcome:
    """A run whose budget clock jumps an hour ahead as `node` first starts."""
    repo = make_repo(CALC_FILES, CALC_CONFIG, name=f"repo-{node}")
    cassette = write_cassette(tmp_path / f"{node}.json", [WRONG_FIX, WRONG_FIX])
    ahead = [0.0]
    monkeypatch.setattr(budget, "time", SimpleNamespace(time=lambda: time.time() + ahead[0]))

    def on_event(event: dict[str, object]) -> None:
        if event.get("kind") == "node" and event.get("event") == "start" and event.get("node") == node:
            ahead[0] = 3600.0

    return fix(repo, "1", model=f"replay:{cassette}", progress=on_event)


def _ends(outcome: RunOutcome) -> list[tuple[str, str]]:
    lines = (outcome.run_dir / "events.jsonl").read_text().splitlines()
    return [(e["node"], e.get("outcome", "")) for e in map(json.loads, lines) if e["event"] == "end"]


def _edit_error(outcome: RunOutcome) -> str | None:
    """What the coding agent itself said when it stopped the first edit, as the run's checkpoint holds it."""
    conn = sqlite3.connect(str(outcome.run_dir / "checkpoints.sqlite"))
    try:
        saved = SqliteSaver(conn, serde=SERDE).get_tuple({"configurable": {"thread_id": outcome.run_id}})
    finally:
        conn.close()
    assert saved is not None
    return typed(saved.checkpoint["channel_values"])["attempts"][0]["edit"].error


def test_a_time_budget_spent_mid_edit_or_between_iterations_reads_the_same(
    make_repo: MakeRepo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mid_edit = _run_out_of_time_at("edit", make_repo, tmp_path, monkeypatch)
    between = _run_out_of_time_at("diagnose", make_repo, tmp_path, monkeypatch)

    # the agent stopped the first edit before any model call; the other run stopped after validation failed
    assert _ends(mid_edit)[1:] == [("edit", "budget spent"), ("report_failure", "failed")]
    assert _ends(between)[1:] == [("edit", "ok"), ("deploy", "ok"), ("validate", "failed"),
                                  ("diagnose", "budget spent"), ("report_failure", "failed")]
    assert (mid_edit.status, between.status) == ("failed", "failed")
    assert mid_edit.message == between.message == _edit_error(mid_edit)
    assert mid_edit.message == "time budget spent: 30 minutes (agent.budget.minutes)"
    for outcome in (mid_edit, between):
        evidence = json.loads((outcome.run_dir / "evidence.json").read_text())
        assert evidence["run"]["stopped_because"] == outcome.message
