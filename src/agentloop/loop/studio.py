"""The loop on LangGraph Server (`langgraph dev`, LangGraph Studio): the CLI's nodes and edges, with each
run's context built from what the server gives a run.

A server run carries JSON, never live objects: its `context` (the `context` of `POST /threads/{id}/runs`)
is a `StudioContext` — repository, issue, model, iterations — and the graph's first node, `start`, does
what `loop fix` does before its graph (`runner.prepare`: every check, the run's record), copying the
bundled example (`examples/shop`, issue 1, its scripted cassette) when no repository is given. The loop's
nodes then get the run's `RunContext`, kept in this process by run id, and `finish` does what `loop fix`
does after its graph (`runner.finish`): remove the sandbox, stop a baseline it started, record the end.
A node that raises releases the same way before the server records the error.
"""

from __future__ import annotations

import shutil
import threading
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.runtime import Runtime
from pydantic import BaseModel, ConfigDict, Field

from agentloop.errors import LoopError, RunNotFound
from agentloop.loop.context import RunContext
from agentloop.loop.graph import add_loop
from agentloop.loop.runner import RunOutcome, hold_baseline, prepare
from agentloop.loop.runner import finish as finish_run
from agentloop.loop.state import RunState, typed
from agentloop.runs.folder import RunStatus

EXAMPLE_ISSUE = "1"
EXAMPLE_CASSETTE = "shop-issue-1.json"


class StudioContext(BaseModel):
    """What a LangGraph Server run is asked to do (every field may be left out)."""

    model_config = ConfigDict(extra="forbid")

    repo: str = Field(default="", description="A git repository with a loop.yaml. Empty: a fresh copy of the "
                                              "bundled example, examples/shop.")
    issue: str = Field(default=EXAMPLE_ISSUE, description="issue-123, #123, 123 or an issue URL.")
    model: str = Field(default="", description="A Claude model id or replay:FILE. Empty: the example's scripted "
                                               "cassette for the example, else LOOP_MODEL or agent.model.")
    max_iterations: int | None = Field(default=None, ge=1, description="Override agent.max_iterations.")


@dataclass
class _Live:
    ctx: RunContext
    baseline: ExitStack = field(default_factory=ExitStack)  # the run's hold on it (runner.hold_baseline)


_runs: dict[str, _Live] = {}
_lock = threading.Lock()


def _requested(context: Any) -> StudioContext:
    if context is None:
        return StudioContext()
    if isinstance(context, StudioContext):
        return context
    return StudioContext.model_validate(context)


def _repository_and_model(want: StudioContext) -> tuple[Path, str | None]:
    if want.repo:
        return Path(want.repo).expanduser(), want.model or None
    from agentloop.examples import examples_dir, make_demo_repo

    # Unlike `loop demo`, no opt-out of confinement here: it would hold for every later run of the server
    # process. Without bubblewrap, start the server with LOOP_ALLOW_UNCONFINED=1 to run the example.
    return make_demo_repo(None), want.model or f"replay:{examples_dir() / 'cassettes' / EXAMPLE_CASSETTE}"


def start(state: RunState, *, runtime: Runtime[StudioContext]) -> RunState:
    """`runner.prepare` for the run the server asked for, then its baseline; the initial state is the update."""
    if state.get("run_id"):
        raise RunNotFound(f"this thread already holds loop run {state['run_id']} ({state.get('status')}); "
                          "start a new thread for a new run")
    want = _requested(runtime.context)
    repo, model = _repository_and_model(want)
    try:
        ctx, initial = prepare(repo, want.issue, model=model, max_iterations=want.max_iterations)
    except BaseException:
        if not want.repo:  # the example's copy was made for this run alone
            shutil.rmtree(repo.parent, ignore_errors=True)
        raise
    live = _Live(ctx)
    with _lock:
        _runs[ctx.run_id] = live
    if ctx.has_services:
        try:
            live.baseline.enter_context(hold_baseline(ctx))
        except BaseException as exc:
            _release(live, initial, exc)
            raise
    return initial


def _live(state: RunState) -> _Live:
    run_id = state.get("run_id") or ""
    with _lock:
        live = _runs.get(run_id)
    if live is None:
        raise RunNotFound(f"loop run {run_id or '?'} is not live in this server process (it ended, or the server "
                          f"restarted since; its record is in {state.get('repo')}/.loop/runs); start a new thread")
    return live


def _on_server(node: Callable[..., RunState]) -> Callable[..., RunState]:
    """A loop node under this graph's context: it gets the run's RunContext instead."""

    def wrapped(state: RunState, *, runtime: Runtime[StudioContext]) -> RunState:
        live = _live(state)
        try:
            return node(state, runtime=replace(runtime, context=live.ctx))  # type: ignore[arg-type]
        except BaseException as exc:
            _release(live, typed(state), exc)
            raise

    wrapped.__name__ = node.__name__
    return wrapped


def finish(state: RunState) -> RunState:
    """`runner.finish`: the sandbox removed, a baseline this run started stopped, run.json and evidence.json
    final."""
    live = _live(state)
    outcome = _close(live, typed(state), status=state.get("status", "error"), message=state.get("error") or "")
    return {"status": outcome.status}


def _release(live: _Live, state: RunState, exc: BaseException) -> None:
    message = str(exc) if isinstance(exc, LoopError) else f"internal error: {type(exc).__name__}: {exc}"
    _close(live, state, status="error", message=message)


def _close(live: _Live, state: RunState, *, status: RunStatus, message: str) -> RunOutcome:
    with _lock:
        _runs.pop(live.ctx.run_id, None)
    return finish_run(live.ctx, state, status=status, message=message, baseline=live.baseline)


def build_server_graph() -> CompiledStateGraph[RunState, StudioContext, RunState, RunState]:
    """START -> start -> the loop (intake ... publish | report_failure) -> finish -> END. The server adds
    its own checkpointer and interrupts (Studio's stepping)."""
    graph = StateGraph(RunState, context_schema=StudioContext)
    graph.add_node("start", start)
    add_loop(graph, wrap=_on_server)
    graph.add_node("finish", finish)
    graph.add_edge(START, "start")
    graph.add_edge("start", "intake")
    graph.add_edge("publish", "finish")
    graph.add_edge("report_failure", "finish")
    graph.add_edge("finish", END)
    return graph.compile()
