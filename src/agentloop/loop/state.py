"""The graph's state, typed: its sub-records are the pydantic models of `agentloop.results` themselves.

Why the models, and how they survive a checkpoint (langgraph 1.2, langgraph-checkpoint 4.3):

- The checkpointers' serializer (`JsonPlusSerializer`, SQLite's and Postgres's alike) stores a pydantic
  model as its module, class name and ``model_dump()``, and restores it as ``Class(**dump)``: the same
  model, because the records hold JSON values only. Plain dicts or TypedDict copies of the records would
  round-trip too, but every node would rebuild the models to use them, and the copies could drift.
- Restoring a class is gated by a msgpack allow-list. Left at its default, the serializer restores any
  class but logs "Deserializing unregistered type ... will be blocked in a future version" (on stderr, for
  `loop resume` and `loop show`); under ``LANGGRAPH_STRICT_MSGPACK=true`` it hands back the plain dict of
  any class not allowed. So loop's checkpointers (`runner`, `runs.store`, `loop show`) are built with
  `SERDE`, which allows exactly the models this schema names: models come back as models, silently, in
  either mode. (In strict mode LangGraph itself allows the models a graph's state schema names, for any
  checkpointer, LangGraph Server's included; by default that server logs the warning once per type.)
- Wherever a dict can still arrive — a checkpoint written before the state was typed (a run resumed after
  an upgrade), a checkpointer without the allow-list, `initial-state.json` — `typed()` validates the
  state: dicts become models, models pass through untouched. Every node reads its state through it
  (`graph`), and so do the readers outside the graph (`runner`, `studio`, `loop show`). `as_json()` is the
  other way, for the evidence and JSON files.

`attempts` holds one entry per iteration, merged by iteration number (`merge_attempts`): a node returns
the fields it adds to the current iteration's entry, and the reducer merges them into it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Required, get_args, get_type_hints

from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer
from pydantic import BaseModel, TypeAdapter

# not typing.TypedDict: pydantic (LangGraph Server's schemas, Studio, `typed()`) needs this one before 3.12
from typing_extensions import TypedDict, is_typeddict

from agentloop.results import (
    ConfinementInfo,
    DeployResult,
    Diagnosis,
    EditResult,
    Issue,
    PullRequest,
    SandboxInfo,
    Usage,
    Verdict,
)
from agentloop.runs.folder import RunStatus


class Attempt(TypedDict, total=False):
    """One iteration: what the agent did, how the deploy went, what validation said, what logs showed."""

    iteration: Required[int]
    edit: EditResult
    changed_files: list[str]  # since the base commit
    deploy: DeployResult
    verdict: Verdict | None
    diagnosis: Diagnosis | None
    started_at: float  # when the edit ended: the logs of the attempt are read from here on
    ended_at: float


def merge_attempts(current: list[Attempt], update: list[Attempt]) -> list[Attempt]:
    """`attempts`' reducer: each entry of `update` is merged into the entry of the same iteration (its
    fields replacing the entry's), or added as that iteration's entry; the list stays in iteration order."""
    merged = {entry["iteration"]: entry for entry in current}
    for entry in update:
        merged[entry["iteration"]] = {**merged.get(entry["iteration"], Attempt(iteration=entry["iteration"])), **entry}
    return [merged[iteration] for iteration in sorted(merged)]


class RunState(TypedDict, total=False):
    run_id: str
    repo: str  # the user's repository (never edited)
    issue: Issue
    model: str
    branch: str  # loop/<issue>-<run>
    worktree: str  # the run's git worktree, where every edit happens
    base_commit: str
    started_at: float
    iteration: int  # 1-based; the iteration being worked on
    sandbox: SandboxInfo | None  # once deployed
    deploy: DeployResult | None  # the latest
    verdict: Verdict | None  # the latest
    diagnosis: Diagnosis | None  # the latest, handed to the next edit
    attempts: Annotated[list[Attempt], merge_attempts]
    usage: Usage  # summed over the run
    budget_spent: str | None  # why the run must stop, when it must
    pull_request: PullRequest | None  # once published
    status: RunStatus
    error: str | None
    confinement: ConfinementInfo  # how agent-written code was confined


_STATE: TypeAdapter[RunState] = TypeAdapter(RunState)


def typed(values: Mapping[str, object]) -> RunState:
    """The state (or a node's update) with every sub-record a model, whichever form it was read in."""
    return _STATE.validate_python(dict(values))


def as_json(state: RunState) -> dict[str, Any]:
    """The state (or a node's update) as JSON values: what the evidence reads and `initial-state.json` holds."""
    return _STATE.dump_python(state, mode="json")  # type: ignore[no-any-return]


def _models(hint: object) -> set[type[BaseModel]]:
    """The pydantic models a type names at its top level (a model's own fields are dumped within it)."""
    if isinstance(hint, type) and issubclass(hint, BaseModel):
        return {hint}
    if is_typeddict(hint):
        return set().union(*(_models(field) for field in get_type_hints(hint).values()))
    return set().union(*(_models(arg) for arg in get_args(hint)))


STATE_MODELS = frozenset(_models(RunState))
SERDE = JsonPlusSerializer(allowed_msgpack_modules=sorted((m.__module__, m.__name__) for m in STATE_MODELS))
"""The serializer of loop's own checkpointers: the state's models allowed, nothing else beyond LangGraph's own."""
