"""The graph state's records through real LangGraph graphs and checkpointers: `attempts` merged by its
reducer, every model restored as the same model from a SQLite checkpoint (no allow-list warning), and a
state read as plain dicts (a checkpoint from before the state was typed, a strict serializer) made typed."""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

import pytest
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer
from langgraph.checkpoint.sqlite import SqliteSaver
from langgraph.graph import END, START, StateGraph

from agentloop.loop.state import SERDE, Attempt, RunState, as_json, merge_attempts, typed
from agentloop.results import (
    BaseRunSource,
    Comparison,
    ConfinementInfo,
    DeployResult,
    Diagnosis,
    EditResult,
    ForkInfo,
    Issue,
    PullRequest,
    SandboxInfo,
    SuiteResult,
    TestCaseResult,
    Usage,
    Verdict,
)

THREAD: RunnableConfig = {"configurable": {"thread_id": "r-1"}}
SANDBOX = SandboxInfo(name="loop-r-1", backend="local", route_key="r-1", router_url="http://127.0.0.1:9",
                      forks={"web": ForkInfo(service="web", url="http://127.0.0.1:10", pid=42, source="/w", code_hash="h")},
                      service_urls={"web": "http://127.0.0.1:9"}, routing_headers={"baggage": "loop-route=r-1"},
                      created_at=1.5, expires_at=2.5)
VERDICT = Verdict(
    passed=False, reasons=["failed: 1 suite"], outcome="failed", unproven=["u"], needs_review=["n"],
    results=[SuiteResult(name="unit", command="pytest", exit_code=1, duration=0.25, output_tail="1 failed",
                         tests=[TestCaseResult(name="t::a", outcome="failed", duration=0.5, message="boom"),
                                TestCaseResult(name="t::b", outcome="passed", flaky=True)])],
    comparison=Comparison(regressions=["t::a"], fixed=["t::c"]),
    base_runs=[BaseRunSource(suite="unit", commit="abc", config_hash="h", cached=True, computed_at=3.0, tests=2)],
)


def _full_state() -> RunState:
    """A state of a run in its second iteration, every record filled in."""
    edit = EditResult(summary="fixed", usage=Usage(input_tokens=10, output_tokens=2, cost_usd=0.125, calls=1), turns=1)
    deploy = DeployResult(ok=True, sandbox=SANDBOX, forked=["web"], restarted=["web"])
    diagnosis = Diagnosis(summary="t::a failed", excerpts={"web": "ERROR boom"})
    return {
        "run_id": "r-1", "repo": "/repo", "issue": Issue(number=7, title="t", body="b", labels=["bug"]),
        "model": "m", "branch": "loop/7-r-1", "worktree": "/wt", "base_commit": "abc", "started_at": 1.25,
        "iteration": 2, "sandbox": SANDBOX, "deploy": deploy, "verdict": VERDICT, "diagnosis": diagnosis,
        "attempts": [Attempt(iteration=1, edit=edit, changed_files=["calc.py"], deploy=deploy, verdict=VERDICT,
                             diagnosis=diagnosis, started_at=2.0, ended_at=3.0),
                     Attempt(iteration=2, edit=edit, changed_files=["calc.py"], started_at=4.0)],
        "usage": Usage(input_tokens=20, output_tokens=4, cost_usd=0.25, calls=2), "budget_spent": None,
        "pull_request": PullRequest(url="file:///pr", branch="loop/7-r-1", head_commit="def", draft=True),
        "status": "running", "error": None,
        "confinement": ConfinementInfo(confined=True, jail_uid=65534, limits={"processes": 512}),
    }


def _graph(nodes: dict[str, RunState]) -> StateGraph[RunState]:
    """START -> each node in order -> END, each node returning its fixed update."""
    graph: StateGraph[RunState] = StateGraph(RunState)
    previous = START
    for name, update in nodes.items():
        graph.add_node(name, lambda _state, update=update: update)
        graph.add_edge(previous, name)
        previous = name
    graph.add_edge(previous, END)
    return graph


def _saved(path: Path) -> RunState:
    """The state in the checkpoint database at `path`, as `loop show` and `loop resume` read it."""
    conn = sqlite3.connect(str(path))
    try:
        saved = SqliteSaver(conn, serde=SERDE).get_tuple(THREAD)
    finally:
        conn.close()
    assert saved is not None
    return saved.checkpoint["channel_values"]  # type: ignore[return-value]


def test_a_node_returning_part_of_an_attempt_fills_in_the_current_iterations_entry(tmp_path: Path) -> None:
    first_edit, second_edit = EditResult(summary="one"), EditResult(summary="two")
    graph = _graph({
        "edit": {"iteration": 1, "attempts": [Attempt(iteration=1, edit=first_edit, started_at=1.0)]},
        "validate": {"verdict": VERDICT, "attempts": [Attempt(iteration=1, verdict=VERDICT)]},
        "diagnose": {"iteration": 2, "attempts": [Attempt(iteration=1, ended_at=2.0)]},
        "edit_again": {"attempts": [Attempt(iteration=2, edit=second_edit, started_at=3.0)]},
    })
    with sqlite3.connect(str(tmp_path / "c.sqlite"), check_same_thread=False) as conn:
        final = graph.compile(checkpointer=SqliteSaver(conn, serde=SERDE)).invoke({"attempts": []}, THREAD)

    expected = [Attempt(iteration=1, edit=first_edit, started_at=1.0, verdict=VERDICT, ended_at=2.0),
                Attempt(iteration=2, edit=second_edit, started_at=3.0)]
    assert final["attempts"] == expected
    assert _saved(tmp_path / "c.sqlite")["attempts"] == expected


def test_an_update_for_an_earlier_iteration_keeps_the_list_in_iteration_order() -> None:
    merged = merge_attempts([Attempt(iteration=1), Attempt(iteration=3)], [Attempt(iteration=2, ended_at=1.0)])
    assert [entry["iteration"] for entry in merged] == [1, 2, 3]


def test_every_record_comes_back_from_a_sqlite_checkpoint_as_the_same_model(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    state = _full_state()
    with sqlite3.connect(str(tmp_path / "c.sqlite"), check_same_thread=False) as conn:
        _graph({"intake": {"status": "running"}}).compile(checkpointer=SqliteSaver(conn, serde=SERDE)).invoke(state, THREAD)

    with caplog.at_level(logging.WARNING):
        restored = _saved(tmp_path / "c.sqlite")
    assert restored == state
    assert isinstance(restored["attempts"][0]["verdict"], Verdict) and isinstance(restored["sandbox"], SandboxInfo)
    # the serializer's allow-list knows the state's models: nothing says they will be blocked some day
    assert [r.getMessage() for r in caplog.records if r.name.startswith("langgraph")] == []


def test_a_state_read_as_plain_dicts_is_typed_again() -> None:
    state = _full_state()
    # what a checkpoint written before the state was typed holds, and initial-state.json
    old = as_json(state)
    assert isinstance(old["attempts"][0]["verdict"], dict)
    assert typed(old) == state
    # what a serializer that does not allow the models (LANGGRAPH_STRICT_MSGPACK=true) hands back
    strict = JsonPlusSerializer(allowed_msgpack_modules=None)
    blocked = strict.loads_typed(strict.dumps_typed(state))
    assert isinstance(blocked["sandbox"], dict)
    assert typed(blocked) == state


def test_an_old_attempt_merged_with_a_new_partial_one_reads_as_one_typed_entry() -> None:
    state = _full_state()
    old_entry = as_json(state)["attempts"][1]  # the second iteration's entry, from a checkpoint of dicts
    merged = merge_attempts([old_entry], [Attempt(iteration=2, verdict=VERDICT)])
    assert typed({"attempts": merged})["attempts"] == [{**state["attempts"][1], "verdict": VERDICT}]
