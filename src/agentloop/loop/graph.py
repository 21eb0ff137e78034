"""The loop's shape, in one place.

    START -> intake -> edit -> deploy --ok--> validate --pass--> publish -> END
                        ^        |               |
                        |      fail            fail
                        |        v               v
                        +----- diagnose <--------+
                                 |
                                 +--budget spent--> report_failure -> END

Every failure goes through diagnose, so that the evidence of the last attempt carries its log
excerpts too; diagnose decides whether the budget allows another edit. `edit` can also end the run
when the model spends the budget mid-turn. State is checkpointed after every node; each node's update
has the run's secrets masked first (`RunContext.redactor`), so no checkpoint holds one. `publish` ends
the run failed, committing nothing, when the change adds a secret.

Nodes read their state through `state.typed` (sub-records are models even when read from an older
checkpoint) and return a typed partial `RunState`; routing reads typed fields.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Literal, Protocol

from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.runtime import Runtime

from agentloop.errors import LoopError, RunInterrupted
from agentloop.loop.context import RunContext
from agentloop.loop.nodes import deploy, diagnose, edit, intake, publish, report_failure, validate
from agentloop.loop.state import RunState, as_json, typed

NodeFn = Callable[[RunState, RunContext], RunState]


class _Node(Protocol):
    __name__: str

    def __call__(self, state: RunState, *, runtime: Runtime[RunContext]) -> RunState: ...


def route_after_edit(state: RunState) -> Literal["deploy", "report_failure"]:
    return "report_failure" if state.get("budget_spent") else "deploy"


def route_after_deploy(state: RunState) -> Literal["validate", "diagnose"]:
    deploy = state.get("deploy")  # what deploy just wrote: a model
    return "validate" if deploy is not None and deploy.ok else "diagnose"


def route_after_validate(state: RunState) -> Literal["publish", "diagnose"]:
    verdict = state.get("verdict")  # what validate just wrote: a model
    return "publish" if verdict is not None and verdict.passed else "diagnose"


def route_after_diagnose(state: RunState) -> Literal["edit", "report_failure"]:
    return "report_failure" if state.get("budget_spent") else "edit"


def _recorded(name: str, fn: NodeFn) -> _Node:
    """Wrap a node so that its start, end, duration and outcome reach events.jsonl and the display."""

    def node(state: RunState, *, runtime: Runtime[RunContext]) -> RunState:
        ctx = runtime.context
        if ctx.cancel.is_set():
            raise RunInterrupted(f"run {ctx.run_id} stopped before {name}; `loop resume {ctx.run_id}` continues it")
        iteration = state.get("iteration", 1)
        ctx.record.event(name, "start", iteration=iteration)
        ctx.emit(kind="node", node=name, event="start", iteration=iteration)
        started = time.monotonic()
        try:
            update = fn(typed(state), ctx)
        except BaseException as exc:
            duration = round(time.monotonic() - started, 3)
            # a LoopError's message is written for the user (why the run stops): the record keeps it
            why = {"error": ctx.redactor.mask(str(exc))} if isinstance(exc, LoopError) else {}
            ctx.record.event(name, "end", iteration=iteration, duration=duration, outcome=f"error: {type(exc).__name__}",
                             **why)
            raise
        # Nothing secret enters the state: it is what the checkpointer (SQLite or Postgres) stores, what a
        # resumed run continues from, and what the evidence, the commit message and the PR are made of.
        update = typed(ctx.redactor.mask_data(as_json(update)))
        duration = round(time.monotonic() - started, 3)
        outcome = _outcome(name, update)
        ctx.record.event(name, "end", iteration=iteration, duration=duration, outcome=outcome)
        ctx.emit(kind="node", node=name, event="end", iteration=iteration, duration=duration, outcome=outcome)
        return update

    node.__name__ = name
    return node


def _outcome(name: str, update: RunState) -> str:
    if name == "deploy":
        deploy = update.get("deploy")
        return "ok" if deploy is not None and deploy.ok else "failed"
    if name == "validate":
        verdict = update.get("verdict")
        return "passed" if verdict is not None and verdict.passed else "failed"
    if name in ("edit", "diagnose") and update.get("budget_spent"):
        return "budget spent"
    return str(update.get("status", "ok"))


def build_graph(
    checkpointer: BaseCheckpointSaver[Any] | None = None, *, review: bool = False
) -> CompiledStateGraph[RunState, RunContext, RunState, RunState]:
    """The compiled loop. `review=True` pauses before publish for a person's approval."""
    graph = StateGraph(RunState, context_schema=RunContext)
    add_loop(graph)
    graph.add_edge(START, "intake")
    graph.add_edge("publish", END)
    graph.add_edge("report_failure", END)
    return graph.compile(checkpointer=checkpointer, interrupt_before=["publish"] if review else None)


def add_loop(graph: StateGraph[RunState, Any, Any, Any], wrap: Callable[[_Node], Any] = lambda node: node) -> None:
    """The loop's nodes and edges, from intake to its two ends, publish and report_failure. `wrap` adapts
    each node to another graph's runtime context (LangGraph Server's, in `agentloop.loop.studio`)."""
    for name, fn in (("intake", intake.run), ("edit", edit.run), ("deploy", deploy.run), ("validate", validate.run),
                     ("diagnose", diagnose.run), ("publish", publish.run), ("report_failure", report_failure.run)):
        graph.add_node(name, wrap(_recorded(name, fn)))
    graph.add_edge("intake", "edit")
    graph.add_conditional_edges("edit", route_after_edit)
    graph.add_conditional_edges("deploy", route_after_deploy)
    graph.add_conditional_edges("validate", route_after_validate)
    graph.add_conditional_edges("diagnose", route_after_diagnose)
