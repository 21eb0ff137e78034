"""The tool-use loop: the model reads the task, calls tools in the worktree, and ends its turn.

Each edit starts a fresh conversation (the state of the work is the worktree and its diff), which keeps
a resumed run simple. The loop stops when the model ends its turn ("done"), after
`agent.max_turns` model calls ("max_turns"), when the budget is spent ("budget"; `agent.budget.spent`,
the engine's check too), or
when the model fails after retries ("error"); it never raises for these.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from typing import Any

from agentloop.agent import budget
from agentloop.agent.base import EditTask, ModelClient, Seekable, UsageCallback
from agentloop.agent.editor import Editor
from agentloop.agent.policy import ConfinedShell
from agentloop.agent.pricing import Pricer
from agentloop.agent.prompts import load_prompt, render_task
from agentloop.agent.tools import ToolBox
from agentloop.agent.transcript import Transcript
from agentloop.config import LoopConfig
from agentloop.errors import ModelError
from agentloop.project_env import ProjectEnv
from agentloop.redact import Redactor
from agentloop.results import EditResult, Usage

logger = logging.getLogger(__name__)

_EPHEMERAL = {"type": "ephemeral"}


def _text_of(content: list[dict[str, Any]]) -> str:
    return "\n".join(block.get("text", "") for block in content if block.get("type") == "text").strip()


def _with_cache_breakpoint(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A copy of `messages` whose last block carries cache_control, so each turn reuses the cached
    conversation prefix (system + tools + last message = 3 of the API's 4 breakpoints)."""
    marked = copy.deepcopy(messages)
    content = marked[-1]["content"]
    if isinstance(content, list) and content:
        content[-1]["cache_control"] = dict(_EPHEMERAL)
    return marked


class AgentCoder:
    """Implements `Coder` over any ModelClient (the Anthropic API, a replayed or a recording one)."""

    def __init__(self, model: ModelClient, *, config: LoopConfig, transcript: Transcript,
                 secrets: Sequence[str] = (), use_bwrap: bool | None = None,
                 redactor: Redactor | None = None) -> None:
        self.model = model
        self.config = config
        self.transcript = transcript
        # what the model is sent has loop's secrets masked: the task, tool results, even its own echoes
        self._redactor = (redactor or Redactor.from_environment()).with_values(*secrets)
        self._use_bwrap = use_bwrap
        self._pricer = Pricer()

    def edit(self, task: EditTask, on_usage: UsageCallback | None = None) -> EditResult:
        shell = ConfinedShell(task.worktree, self.config.policy, extra_env=task.sandbox_env, repo=task.repo,
                              use_bwrap=self._use_bwrap, project=ProjectEnv.of(self.config))
        toolbox = ToolBox(shell, Editor(task.worktree, self.config.policy.output_limit),
                          sandbox_env=task.sandbox_env, redactor=self._redactor)
        try:
            return self._converse(task, toolbox, on_usage)
        finally:
            shell.close()

    def _converse(self, task: EditTask, toolbox: ToolBox, on_usage: UsageCallback | None) -> EditResult:
        # A resumed run replays (or records) from the call where its last finished iteration ended.
        if isinstance(self.model, Seekable):
            self.model.seek(task.usage_so_far.calls)
        usage = Usage()
        already = self._budget_spent(task, usage)
        if already is not None:
            return EditResult(stop_reason="budget", error=already, usage=usage)
        tools = toolbox.definitions
        tools[-1]["cache_control"] = dict(_EPHEMERAL)
        system = [{"type": "text", "text": load_prompt("system"), "cache_control": dict(_EPHEMERAL)}]
        messages: list[dict[str, Any]] = [
            {"role": "user", "content": [{"type": "text", "text": self._redactor.mask(render_task(task))}]}
        ]
        self.transcript.write("start", iteration=task.iteration, run_id=task.run_id, model=self.model.model,
                              system=system, tools=tools)
        summary, sent = "", 0
        for turn in range(1, self.config.agent.max_turns + 1):
            # tools can take long: the deadline may have passed since the last answer
            spent = self._budget_spent(task, usage) if turn > 1 else None
            if spent is not None:
                return EditResult(summary=summary, usage=usage, turns=turn - 1, stop_reason="budget", error=spent)
            self.transcript.write("request", iteration=task.iteration, turn=turn, messages=messages[sent:])
            sent = len(messages)
            request = {"max_tokens": self.config.agent.max_tokens, "system": system, "tools": tools,
                       "messages": _with_cache_breakpoint(messages)}
            try:
                response = self.model.create(request)
                content: list[dict[str, Any]] = list(response["content"])
                call_usage = self._pricer.usage_of(str(response.get("model") or self.model.model),
                                                   dict(response.get("usage") or {}))
            except ModelError as exc:
                self.transcript.write("error", iteration=task.iteration, turn=turn, error=str(exc))
                return EditResult(summary=summary, usage=usage, turns=turn - 1, stop_reason="error", error=str(exc))
            except (KeyError, TypeError) as exc:
                error = f"the model answered with a malformed message (missing {exc})"
                self.transcript.write("error", iteration=task.iteration, turn=turn, error=error)
                return EditResult(summary=summary, usage=usage, turns=turn, stop_reason="error", error=error)
            usage = usage + call_usage
            stop_reason = response.get("stop_reason")
            self.transcript.write("response", iteration=task.iteration, turn=turn, id=response.get("id"),
                                  stop_reason=stop_reason, content=content, usage=call_usage.model_dump(),
                                  usage_total=usage.model_dump())
            if on_usage is not None:
                on_usage(usage)
            summary = _text_of(content) or summary
            spent = self._budget_spent(task, usage)
            if spent is not None:
                return EditResult(summary=summary, usage=usage, turns=turn, stop_reason="budget", error=spent)
            messages.append({"role": "assistant", "content": self._redactor.mask_data(content)})
            calls = [block for block in content if block.get("type") == "tool_use"]
            if calls:
                messages.append({"role": "user", "content": [self._run_tool(toolbox, c, task, turn) for c in calls]})
            elif stop_reason == "max_tokens":
                messages.append({"role": "user", "content": [{"type": "text", "text": load_prompt("continue")}]})
            elif stop_reason == "refusal":
                return EditResult(summary=summary, usage=usage, turns=turn, stop_reason="error",
                                  error="the model refused the task (stop_reason refusal)")
            else:
                return EditResult(summary=summary, usage=usage, turns=turn, stop_reason="done")
        return EditResult(summary=summary, usage=usage, turns=self.config.agent.max_turns, stop_reason="max_turns",
                          error=f"the model did not finish within {self.config.agent.max_turns} turns (agent.max_turns)")

    def _budget_spent(self, task: EditTask, this_edit: Usage) -> str | None:
        # the run's one budget check, the engine's too: the same order and words wherever it runs out
        return budget.spent(self.config.agent, task.usage_so_far + this_edit, deadline=task.deadline)

    def _run_tool(self, toolbox: ToolBox, call: dict[str, Any], task: EditTask, turn: int) -> dict[str, Any]:
        outcome = toolbox.run(str(call.get("name")), call.get("input"))
        if self._use_bwrap is None and call.get("name") == "bash":
            self._use_bwrap = toolbox.shell.confined  # probe bubblewrap once per coder, not per edit
        result: dict[str, Any] = {"type": "tool_result", "tool_use_id": call.get("id"), "content": outcome.content}
        if outcome.is_error:
            result["is_error"] = True
        self.transcript.write("tool", iteration=task.iteration, turn=turn, name=call.get("name"),
                              input=call.get("input"), is_error=outcome.is_error, output=outcome.content)
        return result
